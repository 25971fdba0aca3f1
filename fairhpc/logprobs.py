"""Sequence log-probabilities of a causal LM without the [N, T, V] logits.

A policy's sequence log-prob is log pi(y | x) = sum_t [z_t(y_t) - logsumexp_v z_t(v)] over the label tokens,
with z_t = W h_t (+ b) the logits of position t (h_t the last hidden state, W the LM-head weight [V, H]).
The full logits of a DPO micro-batch, [2B, T, V], are the largest tensor of the step (16 x 1,024 x 128,256
float32 = 8.4 GB for Llama-3 at B = 8); their log-softmax and gradient double that.  Here only the label
positions are used (prompt and padding rows are skipped), in chunks of ``chunk_tokens`` rows:

* forward: per chunk, z = h W^T (+ b) and for each row the logsumexp and the label logit; the chunk is then
  dropped.  Kept for backward: the hidden states (which the model holds anyway) and one float per token.
* backward (:class:`ChunkedLogps`): per chunk, z is recomputed and turned into dz = g (onehot - softmax(z))
  (g = d loss / d log pi(y) of the row's sequence), then dh = dz W and dW += dz^T h, db += sum dz.

Two implementations of the chunk arithmetic: ``chunked`` (torch ops; CPU and reference) and ``triton``
(fairhpc_kernels.seq_logprob: one pass over each row for logsumexp + label logit, and the softmax gradient
written in place over the chunk); ``auto`` takes triton on CUDA and chunked elsewhere, ``eager`` is the
full-logits path.  Accumulation is float32 for float16/bfloat16/float32 inputs (float64 for float64): the
logsumexp, the per-sequence sums and the LM-head gradient across chunks.

:func:`model_sequence_logps` applies this to a transformers causal LM: the model runs as usual, but its LM
head computes the sequence log-probs in place of the logits (the head module is *called*, so that DeepSpeed
ZeRO-3's hooks gather its partitioned weight for forward and again for backward, and hand the gradient to
ZeRO's reduce-scatter like that of any other module).  docs/memory.md has the measured memory.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch

from fairhpc.errors import ConfigError, DataError

IGNORE_INDEX = -100
CHUNK_BUDGET_BYTES = 64 * 2**20  # logprob_chunk_tokens = -1: rows whose float32 logits fit this
IMPLS = ("auto", "chunked", "triton", "eager")
# config attributes of models whose logits are not lm_head(h) (softcapping, scaling): eager only
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")
_TAG = "_fairhpc_logprob"  # (impl, chunk_tokens) set on a model by :func:`configure`


class SequenceLogps(NamedTuple):
    """Per sequence: summed label-token log-prob, its mean over the label tokens (0 for none), the count."""

    sum: torch.Tensor
    mean: torch.Tensor
    count: torch.Tensor


def default_chunk_tokens(vocab: int) -> int:
    """Rows per chunk for ``logprob_chunk_tokens = -1``: as many as fit 64 MiB of float32 logits."""
    return max(1, CHUNK_BUDGET_BYTES // (4 * max(int(vocab), 1)))


def _kernels():
    from fairhpc_kernels import seq_logprob  # the Triton kernels (kernels/ in the repository)

    return seq_logprob


def resolve_impl(impl: str, device: torch.device | str, dtype: torch.dtype = torch.float32,
                 key: str = "model.logprob_impl") -> str:
    """"chunked", "triton" or "eager" for a requested ``impl`` on ``device``: auto = triton when the kernels
    can run there (CUDA), else chunked; triton that cannot run raises ConfigError naming ``key``."""
    if impl not in IMPLS:
        raise ConfigError(f"{key}: unknown value {impl!r}; allowed: {', '.join(IMPLS)}")
    device = torch.device(device)
    if impl == "auto":
        if device.type != "cuda":
            return "chunked"
        try:
            _kernels().check_supported(dtype, device)
        except (RuntimeError, ValueError, ImportError):
            return "chunked"
        return "triton"
    if impl == "triton":
        try:
            _kernels().check_supported(dtype, device)
        except (RuntimeError, ValueError, ImportError) as e:
            raise ConfigError(f"{key}: triton cannot run here: {e}; use {key}=chunked (or auto)") from None
    return impl


# ------------------------------------------------------------------------------------------ checks
def label_mask(labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """[N, T] bool: the positions whose label counts (label != -100 and, if given, mask != 0)."""
    valid = labels != IGNORE_INDEX
    return valid if mask is None else valid & mask.bool()


def check_labels(labels: torch.Tensor, valid: torch.Tensor, vocab: int, allow_empty: bool,
                 what: str = "labels") -> torch.Tensor:
    """[N] label-token counts; DataError for a label outside [0, vocab) (other than -100) or, unless
    ``allow_empty``, a sequence without label tokens.  Cheap integer work, run before any model compute."""
    if labels.dim() != 2:
        raise DataError(f"{what} must be [N, T], got shape {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise DataError(f"{what} must be integer token ids, got {labels.dtype}")
    bad = valid & ((labels < 0) | (labels >= vocab)) | (~valid & (labels < 0) & (labels != IGNORE_INDEX))
    if bool(bad.any()):
        r, t = (int(i) for i in bad.nonzero()[0])
        raise DataError(f"{what}[{r}, {t}] = {int(labels[r, t])} is not a token id of the LM head's vocabulary "
                        f"of {vocab} (allowed: 0..{vocab - 1}, or {IGNORE_INDEX} for a position not counted); "
                        f"{int(bad.sum())} such label(s) in the batch")
    count = valid.sum(1)
    if not allow_empty and bool((count == 0).any()):
        rows = (count == 0).nonzero().flatten().tolist()
        raise DataError(f"{what}: sequence(s) {rows[:10]} of the batch have no label token (every label is "
                        f"{IGNORE_INDEX} or masked): their log-prob is empty and their mean undefined; "
                        "drop them or check the truncation (data.max_length, data.max_prompt_length)")
    return count


def check_shapes(hidden: torch.Tensor, weight_shape, bias: torch.Tensor | None, labels: torch.Tensor) -> None:
    """ConfigError when the hidden states and the LM head do not fit each other or the labels."""
    if hidden.dim() != 3:
        raise ConfigError(f"hidden states must be [N, T, H], got shape {tuple(hidden.shape)}")
    if len(weight_shape) != 2:
        raise ConfigError(f"the LM-head weight must be [V, H], got shape {tuple(weight_shape)}")
    if hidden.shape[-1] != weight_shape[1]:
        raise ConfigError(f"hidden size mismatch: the hidden states have {hidden.shape[-1]} features but the "
                          f"LM-head weight {tuple(weight_shape)} takes {weight_shape[1]}")
    if bias is not None and tuple(bias.shape) != (weight_shape[0],):
        raise ConfigError(f"the LM-head bias has shape {tuple(bias.shape)}, the weight {tuple(weight_shape)}")
    if tuple(labels.shape) != tuple(hidden.shape[:2]):
        raise DataError(f"labels of shape {tuple(labels.shape)} do not match hidden states "
                        f"{tuple(hidden.shape[:2])} (positions [N, T])")


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ------------------------------------------------------------------------------------------ the op
def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.nn.functional.linear(h, weight, bias)


class ChunkedLogps(torch.autograd.Function):
    """sums [n_seq] = ChunkedLogps.apply(hidden [N, T, H], weight [V, H], bias [V] or None, rows [K],
    targets [K], seg [K], n_seq, chunk, use_triton): rows are the flat positions (n * T + t) that count,
    targets their labels, seg their sequence (row of the batch)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, rows, targets, seg, n_seq, chunk, use_triton):
        acc = _acc(hidden.dtype)
        flat = hidden.reshape(-1, hidden.shape[-1])
        k = rows.numel()
        token = torch.empty(k, dtype=acc, device=hidden.device)
        lse_all = torch.empty(k, dtype=acc, device=hidden.device)
        for s in range(0, k, chunk):
            e = min(k, s + chunk)
            z = _chunk_logits(flat.index_select(0, rows[s:e]).to(weight.dtype), weight, bias)
            t = targets[s:e]
            if use_triton:
                lse, pick = _kernels().lse_pick(z, t)
            else:
                zf = z.to(acc)  # z itself for float32 / float64: worked on in place, one chunk-sized buffer
                pick = zf.gather(1, t.unsqueeze(1)).squeeze(1)
                top = zf.amax(-1, keepdim=True)
                lse = zf.sub_(top).exp_().sum(-1).log_().add_(top.squeeze(1))
            del z
            token[s:e] = pick - lse
            lse_all[s:e] = lse
        sums = torch.zeros(n_seq, dtype=acc, device=hidden.device).index_add_(0, seg, token)
        ctx.save_for_backward(hidden, weight, bias, rows, targets, seg, lse_all)
        ctx.chunk, ctx.use_triton = chunk, use_triton
        return sums

    @staticmethod
    def backward(ctx, grad_sums):
        hidden, weight, bias, rows, targets, seg, lse_all = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        acc = _acc(hidden.dtype)
        wdt = weight.dtype
        g_tok = grad_sums.to(acc)[seg]  # d loss / d (label log-prob) of every counted token
        flat = hidden.reshape(-1, hidden.shape[-1])
        grad_flat = torch.zeros_like(flat) if need_h else None
        # the LM-head gradient is summed over chunks in float32 (float64), whatever the weight's dtype
        grad_w = torch.zeros(weight.shape, dtype=acc if wdt in (torch.float16, torch.bfloat16) else wdt,
                             device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
        k, chunk = rows.numel(), ctx.chunk
        for s in range(0, k, chunk):
            e = min(k, s + chunk)
            idx = rows[s:e]
            h = flat.index_select(0, idx).to(wdt)
            z = _chunk_logits(h, weight, bias)
            t, lse, g = targets[s:e], lse_all[s:e], g_tok[s:e]
            if ctx.use_triton:
                dz = _kernels().softmax_grad_(z, t, lse, g)  # in place, z's dtype
            else:
                dz = z.to(acc)  # z itself for float32 / float64
                dz.sub_(lse.unsqueeze(1)).exp_().mul_(-g.unsqueeze(1))
                dz[torch.arange(e - s, device=dz.device), t] += g
                dz = dz.to(wdt)
            del z
            if need_h:
                grad_flat.index_copy_(0, idx, (dz @ weight).to(flat.dtype))
            if need_w:
                if grad_w.dtype == wdt:
                    grad_w.addmm_(dz.t(), h)
                else:
                    grad_w.add_(dz.t() @ h)
            if need_b:
                grad_b.add_(dz.sum(0, dtype=acc))
        return (grad_flat.view_as(hidden) if need_h else None,
                grad_w.to(wdt) if need_w else None,
                grad_b.to(bias.dtype) if need_b else None,
                None, None, None, None, None, None)


def chunked_sequence_logps(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                           bias: torch.Tensor | None = None, mask: torch.Tensor | None = None, *,
                           impl: str = "chunked", chunk_tokens: int = -1, allow_empty: bool = False,
                           checked: bool = False) -> SequenceLogps:
    """Per-sequence label log-probs from the last hidden states [N, T, H] and the LM head weight [V, H]
    (+ bias [V]); labels [N, T] are aligned with the hidden states (position t's label is the token that
    position t predicts, -100 = not counted), mask [N, T] an optional extra loss mask.  At most
    ``chunk_tokens`` rows of logits exist at a time (-1: :func:`default_chunk_tokens`).  impl: chunked (torch)
    or triton (the kernels; CUDA, or CPU under TRITON_INTERPRET=1).  Sums in float32 (float64 for float64
    hidden states).  ``checked``: the caller already ran the label checks."""
    if impl not in ("chunked", "triton"):
        raise ConfigError(f"chunked_sequence_logps: impl must be chunked or triton, got {impl!r}")
    check_shapes(hidden, tuple(weight.shape), bias, labels)
    valid = label_mask(labels, mask)
    count = valid.sum(1) if checked else check_labels(labels, valid, weight.shape[0], allow_empty)
    if impl == "triton":
        _kernels().check_supported(weight.dtype, hidden.device)
    if chunk_tokens == -1:
        chunk_tokens = default_chunk_tokens(weight.shape[0])
    if chunk_tokens < 1:
        raise ConfigError(f"logprob_chunk_tokens must be >= 1 or -1, got {chunk_tokens}")
    rows = valid.reshape(-1).nonzero().squeeze(1)
    targets = labels.reshape(-1).index_select(0, rows).long()
    seg = torch.div(rows, labels.shape[1], rounding_mode="floor")
    sums = ChunkedLogps.apply(hidden, weight, bias, rows, targets, seg, labels.shape[0], int(chunk_tokens),
                              impl == "triton")
    return SequenceLogps(sums, sums / count.clamp(min=1).to(sums.dtype), count)


def logps_from_logits(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None):
    """(sums [N], count [N]) from full logits [N, T, V] with aligned labels: log-softmax of the label only."""
    valid = label_mask(labels, mask)
    z = logits.to(_acc(logits.dtype))
    safe = labels.masked_fill(~valid, 0).long()
    picked = torch.gather(z, 2, safe.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1)
    return (picked * valid).sum(-1), valid.sum(1)


def eager_sequence_logps(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         bias: torch.Tensor | None = None, mask: torch.Tensor | None = None, *,
                         allow_empty: bool = False) -> SequenceLogps:
    """The full-logits reference of :func:`chunked_sequence_logps` (same arguments and results)."""
    check_shapes(hidden, tuple(weight.shape), bias, labels)
    check_labels(labels, label_mask(labels, mask), weight.shape[0], allow_empty)
    sums, count = logps_from_logits(torch.nn.functional.linear(hidden, weight, bias), labels, mask)
    return SequenceLogps(sums, sums / count.clamp(min=1).to(sums.dtype), count)


# ------------------------------------------------------------------------------------------ models
def configure(model, impl: str = "auto", chunk_tokens: int = -1):
    """Record ``model.logprob_impl`` / ``model.logprob_chunk_tokens`` on a causal LM, so that
    :func:`fairhpc.models.sequence_logps` calls without an ``impl`` use them.  Returns the model."""
    if impl not in IMPLS:
        raise ConfigError(f"model.logprob_impl: unknown value {impl!r}; allowed: {', '.join(IMPLS)}")
    found = find_head(model)
    target = found[0] if found is not None else model
    setattr(target, _TAG, (impl, int(chunk_tokens)))
    return model


def find_head(model):
    """(causal LM, its LM-head Linear) inside ``model`` (a DeepSpeed engine, a wrapper module or the LM
    itself), or None when there is no Linear output embedding."""
    base = getattr(model, "module", model)
    for m in base.modules():
        get = getattr(m, "get_output_embeddings", None)
        if callable(get):
            head = get()
            if isinstance(head, torch.nn.Linear):
                return m, head
    return None


def head_shape(head: torch.nn.Linear) -> tuple[int, int]:
    """[V, H] of the head's weight, also when ZeRO-3 partitioned it (its ``ds_shape``)."""
    return tuple(getattr(head.weight, "ds_shape", head.weight.shape))


def chunkable(lm) -> str | None:
    """Why the chunked path cannot compute ``lm``'s log-probs (its logits are not lm_head(h)), or None."""
    cfg = getattr(lm, "config", None)
    for key in _LOGIT_POSTPROCESSING:
        v = getattr(cfg, key, None)
        if v is not None and v != 1:
            return f"its config sets {key} = {v} (the logits are post-processed after the LM head)"
    return None


@contextlib.contextmanager
def _head_computes(head: torch.nn.Module, fn):
    """Within the block, calling ``head`` runs ``fn(hidden)`` in place of its forward (its hooks still fire)."""
    head.forward = fn
    try:
        yield
    finally:
        del head.forward


def model_sequence_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                         labels: torch.Tensor, impl: str | None = None, chunk_tokens: int | None = None,
                         allow_empty: bool = True) -> SequenceLogps:
    """Sequence log-probs of a causal LM: labels [N, L] are the input-aligned labels (-100 = not counted;
    position t's logits predict token t + 1).  impl None: the model's :func:`configure` value, else auto.

    chunked / triton: the model runs with its LM head computing :func:`chunked_sequence_logps` of its
    hidden states (no logits); eager: the full logits.  Labels, empty sequences and the head's hidden size
    are checked before the model runs."""
    found = find_head(model)
    lm = found[0] if found is not None else getattr(model, "module", model)
    tag = getattr(lm, _TAG, ("auto", -1))
    impl = impl or tag[0]
    chunk_tokens = tag[1] if chunk_tokens is None else chunk_tokens
    head = found[1] if found is not None else None
    dtype = head.weight.dtype if head is not None else torch.float32
    resolved = resolve_impl(impl, input_ids.device, dtype)
    why = "it has no Linear LM head (get_output_embeddings)" if head is None else chunkable(lm)
    if why is not None and resolved != "eager":
        if impl != "auto":
            raise ConfigError(f"model.logprob_impl={impl}: this model cannot take the chunked path: {why}; "
                              "use model.logprob_impl=eager (or auto)")
        resolved = "eager"
    targets = torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), IGNORE_INDEX)], 1)
    valid = label_mask(targets)
    if head is not None:
        vocab, hsize = head_shape(head)
        want = getattr(getattr(lm, "config", None), "hidden_size", hsize)
        if want != hsize:
            raise ConfigError(f"hidden size mismatch: the model's config has hidden_size {want} but its LM-head "
                              f"weight is {(vocab, hsize)}")
        count = check_labels(targets, valid, vocab, allow_empty)
    else:
        count = valid.sum(1)
    if resolved == "eager":
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        sums, _ = logps_from_logits(logits[:, :-1], targets[:, :-1])
    else:
        def head_logps(hidden):
            return chunked_sequence_logps(hidden, head.weight, targets, head.bias, impl=resolved,
                                          chunk_tokens=chunk_tokens, checked=True).sum

        with _head_computes(head, head_logps):
            sums = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        if sums.shape != (labels.shape[0],):
            raise RuntimeError(f"the model post-processed its LM head's output (shape {tuple(sums.shape)}); "
                               "use model.logprob_impl=eager for it")
        sums = sums.float() if sums.dtype != torch.float64 else sums
    return SequenceLogps(sums, sums / count.clamp(min=1).to(sums.dtype), count)
