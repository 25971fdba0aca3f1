"""Batched generation (greedy / stochastic / top-k) and the token layout of prompt + response.

:func:`generate` runs a causal LM on left-padded prompts with its key/value cache and draws one token per
row and step.  Random draws use ``generator`` (None = torch's global generator of the device, whose state
the engine saves in every checkpoint, so a resumed run draws the same samples).  After a row emits the eos
token it receives pad tokens, which are masked out.
"""

from __future__ import annotations

import torch


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, L] ids and attention mask of token lists, padded on the left."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


def pick_tokens(logits: torch.Tensor, decoding: str, temperature: float, top_k: int,
                generator: torch.Generator | None) -> torch.Tensor:
    """[B, V] logits -> [B] token ids."""
    if decoding == "greedy":
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if decoding == "top-k":
        k = min(top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, -1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int, decoding: str,
             temperature: float, top_k: int, eos_id: int | None, pad_id: int,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Responses of ``model`` to left-padded prompts: ([B, T] token ids, [B, T] mask of real tokens).

    A row stops after its eos token (kept as the last real token); T <= max_new_tokens (generation stops
    early when every row has finished)."""
    was_training = model.training
    model.eval()
    mask = prompt_mask
    # positions are the model's own default (as in fairhpc.models.sequence_logps, which scores the samples)
    out = model(input_ids=prompt_ids, attention_mask=mask, use_cache=True)
    past, logits = out.past_key_values, out.logits[:, -1]
    alive = torch.ones(prompt_ids.shape[0], dtype=torch.bool, device=prompt_ids.device)
    tokens, real = [], []
    for step in range(max_new_tokens):
        tok = pick_tokens(logits, decoding, temperature, top_k, generator)
        tok = torch.where(alive, tok, torch.full_like(tok, pad_id))
        tokens.append(tok)
        real.append(alive.clone())
        if eos_id is not None:
            alive = alive & (tok != eos_id)
        if not bool(alive.any()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, real[-1].long().unsqueeze(1)], 1)
        out = model(input_ids=tok.unsqueeze(1), attention_mask=mask, past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1]
    model.train(was_training)
    return torch.stack(tokens, 1), torch.stack(real, 1).long()


def join(prompt_ids, prompt_mask, resp_ids, resp_mask, pad_id: int):
    """Prompt + response rows for scoring: (ids, attention mask, labels with -100 except on response tokens).

    Prompts stay left-padded and responses right-padded, so each row is [pads, prompt, response, pads], the
    layout :func:`generate` produced the response in."""
    ids = torch.cat([prompt_ids, torch.where(resp_mask.bool(), resp_ids, torch.full_like(resp_ids, pad_id))], 1)
    mask = torch.cat([prompt_mask, resp_mask], 1)
    labels = torch.cat([torch.full_like(prompt_ids, -100), resp_ids.masked_fill(~resp_mask.bool(), -100)], 1)
    return ids, mask, labels

