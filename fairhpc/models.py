"""Reward models and policies: tiny Llama models built from config (offline) or transformers checkpoints.

Reward model: ``*ForSequenceClassification`` with one label (the scalar reward is read at the last
non-pad token, as transformers does, so checkpoints work unchanged in other tools).  With ``model.head: moe``
the same class carries 2E labels on the last non-pad token's hidden state h: E expert scalar heads
r_e = w_e . h and E gate logits v_e . h; the reward is sum_e softmax(v . h)_e r_e (:func:`moe_reward`).  The
checkpoint is a plain transformers checkpoint (``AutoModelForSequenceClassification`` loads it with its 2E
outputs); config.json records ``fairhpc_head: moe`` and ``moe_experts: E`` so that fairhpc's loaders and
:func:`sequence_rewards` mix the outputs into one reward (docs/reward_models.md).
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


# config.json attributes of a reward model with a gated multi-head (moe) head
HEAD_KEY, EXPERTS_KEY = "fairhpc_head", "moe_experts"


def head_of(config) -> tuple[str, int]:
    """("linear", 1) or ("moe", E) of a reward model's config."""
    if getattr(config, HEAD_KEY, "linear") == "moe":
        return "moe", int(getattr(config, EXPERTS_KEY))
    return "linear", 1


def head_labels(head: str, experts: int) -> dict:
    """from_pretrained / config keyword arguments of a head: the number of outputs and their names."""
    if head == "linear":
        return {"num_labels": 1}
    if head != "moe":
        raise ValueError(f"unknown reward head {head!r}; allowed: linear, moe")
    names = [f"expert_{e}" for e in range(experts)] + [f"gate_{e}" for e in range(experts)]
    return {"num_labels": 2 * experts, "id2label": dict(enumerate(names)),
            "label2id": {n: i for i, n in enumerate(names)}}


def _mark_head(model, head: str, experts: int):
    if head == "moe":
        setattr(model.config, HEAD_KEY, "moe")
        setattr(model.config, EXPERTS_KEY, int(experts))
    return model


def build_tiny_reward_model(tiny_cfg, tokenizer, attn_implementation: str = "sdpa", head: str = "linear",
                            experts: int = 4):
    """A tiny LlamaForSequenceClassification, initialised from the current torch seed: one label (head
    linear) or E expert heads and E gate logits (head moe, E = ``experts``)."""
    from transformers import LlamaForSequenceClassification

    cfg = _tiny_llama_config(tiny_cfg, tokenizer, **head_labels(head, experts))
    cfg._attn_implementation = attn_implementation
    return _mark_head(LlamaForSequenceClassification(cfg), head, experts)


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


def load_reward_model(name_or_path: str, dtype=None, attn_implementation: str = "auto", tokenizer=None,
                      head: str | None = None, experts: int = 4):
    """A sequence-classification reward model from a local directory or a hub name.

    A saved reward model keeps its head (config.json ``fairhpc_head``); any other checkpoint (e.g. a base
    causal LM) gets a new head: ``head`` (default linear: one label; moe: 2 * ``experts`` outputs).  Asking
    for a head other than the one saved raises ConfigError naming model.head."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from fairhpc.errors import ConfigError

    saved = head_of(AutoConfig.from_pretrained(name_or_path))
    is_moe = saved[0] == "moe"
    if is_moe:
        if head == "linear" or (head == "moe" and experts != saved[1]):
            want = "linear" if head == "linear" else f"moe with {experts} experts"
            raise ConfigError(f"model.head: {name_or_path} is a reward model with a moe head of {saved[1]} "
                              f"experts, not {want}; set model.head=moe model.moe_experts={saved[1]}")
        head, experts = saved
    head = head or "linear"
    kwargs = {} if is_moe else head_labels(head, experts)
    model = AutoModelForSequenceClassification.from_pretrained(
        name_or_path, dtype=dtype, attn_implementation=resolve_attn_implementation(attn_implementation),
        **kwargs)
    return _fix_pad(_mark_head(model, head, experts), tokenizer)


def load_policy(name_or_path: str, dtype=None, attn_implementation: str = "auto", tokenizer=None):
    """A causal LM policy from a local directory or a hub name."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        name_or_path, dtype=dtype, attn_implementation=resolve_attn_implementation(attn_implementation))
    return _fix_pad(model, tokenizer)


def moe_reward(logits: torch.Tensor, experts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, 2E] outputs of a moe head -> ([B] reward, [B, E] expert scores, [B, E] gate weights), float32:
    the gate is the softmax of the last E outputs, the reward the gate-weighted sum of the first E."""
    logits = logits.float()
    if logits.shape[-1] != 2 * experts:
        raise ValueError(f"a moe head of {experts} experts has {2 * experts} outputs, got {logits.shape[-1]}")
    scores, gate = logits[:, :experts], torch.softmax(logits[:, experts:], dim=-1)
    return (gate * scores).sum(-1), scores, gate


def reward_parts(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
    """{"score": [B]} and, for a moe head, "experts" [B, E] and "gate" [B, E] (float32)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    head, experts = head_of(getattr(model, "module", model).config)
    if head == "moe":
        score, scores, gate = moe_reward(logits, experts)
        return {"score": score, "experts": scores, "gate": gate}
    return {"score": logits.squeeze(-1).float()}


def sequence_rewards(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, L] token ids -> [B] scalar rewards (float32); a moe head's gated sum of its experts."""
    return reward_parts(model, input_ids, attention_mask)["score"]


def sequence_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                   labels: torch.Tensor, impl: str | None = None, *, chunk_tokens: int | None = None,
                   allow_empty: bool = True) -> torch.Tensor:
    """Sum of log pi(label token) over positions whose label is not -100: [B, L] -> [B] (float32; float64
    for a float64 model).  Position t's logits predict token t + 1.

    impl (``model.logprob_impl``): auto (Triton kernel on CUDA, chunked torch on CPU; full logits for a model
    whose logits are post-processed), chunked, triton or eager (the full [B, L, V] logits); None = what
    :func:`fairhpc.logprobs.configure` recorded on the model, else auto.  chunk_tokens: rows of logits per
    chunk (-1 = 64 MiB of float32 logits).  Labels outside the vocabulary raise DataError before the model
    runs, and so does a sequence without label tokens unless ``allow_empty`` (its sum is then 0).
    fairhpc/logprobs.py has the method, docs/memory.md the memory it saves."""
    from fairhpc.logprobs import model_sequence_logps

    return model_sequence_logps(model, input_ids, attention_mask, labels, impl=impl, chunk_tokens=chunk_tokens,
                                allow_empty=allow_empty).sum
