"""Reward models and policies: tiny Llama models built from config (offline) or transformers checkpoints.

Reward model: ``*ForSequenceClassification`` with one label (the scalar reward is read at the last
non-pad token, as transformers does, so checkpoints work unchanged in other tools).
Policy: ``*ForCausalLM``; a sequence's log-prob is the sum of its label tokens' log-probs (no length
normalisation; docs/method.md, "Margins").
"""

from __future__ import annotations

import importlib.util

import torch


def resolve_attn_implementation(requested: str = "auto", device: torch.device | str | None = None) -> str:
    """auto -> flash_attention_2 when flash-attn is installed and the model runs on a GPU, else sdpa."""
    if requested != "auto":
        return requested
    on_gpu = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if on_gpu and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def _tiny_llama_config(tiny_cfg, tokenizer, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=tiny_cfg.hidden_size,
        num_hidden_layers=tiny_cfg.num_hidden_layers,
        num_attention_heads=tiny_cfg.num_attention_heads,
        num_key_value_heads=tiny_cfg.num_key_value_heads,
        intermediate_size=tiny_cfg.intermediate_size,
        max_position_embeddings=tiny_cfg.max_position_embeddings,
        attention_dropout=tiny_cfg.attention_dropout,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        **extra,
    )


def build_tiny_reward_model(tiny_cfg, tokenizer, attn_implementation: str = "sdpa"):
    """A tiny LlamaForSequenceClassification (num_labels=1), initialised from the current torch seed."""
    from transformers import LlamaForSequenceClassification

    cfg = _tiny_llama_config(tiny_cfg, tokenizer, num_labels=1)
    cfg._attn_implementation = attn_implementation
    return LlamaForSequenceClassification(cfg)


def build_tiny_policy(tiny_cfg, tokenizer, attn_implementation: str = "sdpa"):
    """A tiny LlamaForCausalLM, initialised from the current torch seed."""
    from transformers import LlamaForCausalLM

    cfg = _tiny_llama_config(tiny_cfg, tokenizer)
    cfg._attn_implementation = attn_implementation
    return LlamaForCausalLM(cfg)


def _fix_pad(model, tokenizer):
    if tokenizer is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if tokenizer is not None and model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))  # a pad token was added to the tokenizer
    return model


def load_reward_model(name_or_path: str, dtype=None, attn_implementation: str = "auto", tokenizer=None):
    """A sequence-classification reward model from a local directory or a hub name (num_labels=1)."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        name_or_path, num_labels=1, dtype=dtype,
        attn_implementation=resolve_attn_implementation(attn_implementation))
    return _fix_pad(model, tokenizer)


def load_policy(name_or_path: str, dtype=None, attn_implementation: str = "auto", tokenizer=None):
    """A causal LM policy from a local directory or a hub name."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        name_or_path, dtype=dtype, attn_implementation=resolve_attn_implementation(attn_implementation))
    return _fix_pad(model, tokenizer)


def sequence_rewards(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, L] token ids -> [B] scalar rewards (float32)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # [B, 1]
    return logits.squeeze(-1).float()


def sequence_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor:
    """Sum of log pi(label token) over positions whose label is not -100: [B, L] -> [B] (float32)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    logits = logits[:, :-1].float()         # position t predicts token t+1
    targets = labels[:, 1:]
    mask = targets != -100
    safe = targets.masked_fill(~mask, 0)
    # log-softmax of the selected token only: logit - logsumexp (no [B, L, V] log-prob tensor kept)
    picked = torch.gather(logits, 2, safe.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return (picked * mask).sum(-1)
