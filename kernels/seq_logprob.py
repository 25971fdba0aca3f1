"""Row-wise log-softmax pieces of a chunk of logits: two Triton kernels (forward and in-place backward).

Imported as ``fairhpc_kernels.seq_logprob``.  ``fairhpc.logprobs`` computes a chunk of logits z = h W^T (+ b)
with one matrix product and hands it here:

* :func:`lse_pick` -- per row r: lse_r = logsumexp_v z[r, v] and pick_r = z[r, t_r] (t_r the row's label), in
  one read of the row: an online logsumexp (per-lane running max and rescaled sum, merged at the end), as in
  flash attention.  The log-prob of the label token is pick_r - lse_r.
* :func:`softmax_grad_` -- overwrites the chunk with its gradient, in place:
  dz[r, v] = g_r (1[v = t_r] - exp(z[r, v] - lse_r)), g_r = d loss / d logp_r.  The matrix products
  dh = dz W and dW += dz^T h then follow in the caller, so no second buffer of the chunk's size exists.

Arithmetic is float32 for float32 / float16 / bfloat16 logits and float64 for float64 logits; lse and pick
come back in that accumulation type.  Every load and store is masked (the vocabulary need not be a multiple of
the block), so the kernels also run under ``TRITON_INTERPRET=1`` on CPU tensors (float32 / float64 there: the
interpreter does no bfloat16 arithmetic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
DEFAULT_BLOCK_V = 4096  # vocabulary entries per step of a row's loop (power of two)


@triton.jit
def _lse_pick_kernel(z_ptr, tgt_ptr, lse_ptr, pick_ptr, V, stride_z, BLOCK_V: tl.constexpr, F64: tl.constexpr):
    row = tl.program_id(0)
    acc_t = tl.float64 if F64 else tl.float32
    base = z_ptr + row.to(tl.int64) * stride_z
    offs = tl.arange(0, BLOCK_V)
    m = tl.full([BLOCK_V], float("-inf"), acc_t)  # per-lane running max
    s = tl.zeros([BLOCK_V], acc_t)  # per-lane sum of exp(z - m)
    for start in range(0, V, BLOCK_V):
        cols = start + offs
        x = tl.load(base + cols, mask=cols < V, other=float("-inf")).to(acc_t)
        m_new = tl.maximum(m, x)
        shift = tl.where(m_new == float("-inf"), 0.0, m_new).to(acc_t)  # a lane that saw only padding
        s = s * tl.exp(m - shift) + tl.exp(x - shift)
        m = m_new
    mx = tl.max(m, axis=0)
    total = tl.sum(s * tl.exp(m - mx), axis=0)
    lse = mx + tl.log(total)
    t = tl.load(tgt_ptr + row)
    ok = (t >= 0) & (t < V)
    picked = tl.load(base + tl.where(ok, t, 0), mask=ok, other=0.0).to(acc_t)
    tl.store(lse_ptr + row, lse)
    tl.store(pick_ptr + row, picked)


@triton.jit
def _softmax_grad_kernel(z_ptr, tgt_ptr, lse_ptr, g_ptr, V, stride_z, BLOCK_V: tl.constexpr, F64: tl.constexpr):
    row = tl.program_id(0)
    acc_t = tl.float64 if F64 else tl.float32
    base = z_ptr + row.to(tl.int64) * stride_z
    offs = tl.arange(0, BLOCK_V)
    lse = tl.load(lse_ptr + row).to(acc_t)
    g = tl.load(g_ptr + row).to(acc_t)
    t = tl.load(tgt_ptr + row)
    for start in range(0, V, BLOCK_V):
        cols = start + offs
        inside = cols < V
        x = tl.load(base + cols, mask=inside, other=float("-inf")).to(acc_t)  # exp -> 0 off the row
        d = -g * tl.exp(x - lse)
        d = tl.where(cols == t, d + g, d)
        tl.store(base + cols, d.to(z_ptr.dtype.element_ty), mask=inside)


INTERPRETED = isinstance(_lse_pick_kernel, InterpretedFunction)  # TRITON_INTERPRET=1 at import


def check_supported(dtype: torch.dtype, device: torch.device | str) -> None:
    """Raise RuntimeError/ValueError when the kernels cannot run on logits of ``dtype`` on ``device``."""
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"the log-prob kernels take float32, float16, bfloat16 or float64 logits, got {dtype}")
    device = torch.device(device)
    if device.type == "cuda":
        if INTERPRETED:
            raise RuntimeError("TRITON_INTERPRET=1 is set: the log-prob kernels run on CPU tensors only; unset "
                               "it to run on CUDA")
        if not torch.cuda.is_available():
            raise RuntimeError("the log-prob kernels need a working CUDA device; none is available")
    elif device.type == "cpu":
        if not INTERPRETED:
            raise RuntimeError("the log-prob kernels need a CUDA device (the hidden states are on cpu); set "
                               "TRITON_INTERPRET=1 before importing triton to run the (slow) interpreter on CPU")
        if dtype in (torch.bfloat16, torch.float16):
            raise ValueError(f"the Triton interpreter does no {dtype} arithmetic; use float32 or float64 on CPU")
    else:
        raise RuntimeError(f"the log-prob kernels run on CUDA, not on {device.type}")


def _acc_dtype(z: torch.Tensor) -> torch.dtype:
    return torch.float64 if z.dtype == torch.float64 else torch.float32


def _block(block_v: int | None, v: int) -> int:
    """The block along V: block_v (default DEFAULT_BLOCK_V, a power of two), at most V rounded up."""
    b = DEFAULT_BLOCK_V if block_v is None else block_v
    if b < 16 or b & (b - 1):
        raise ValueError(f"block_v must be a power of two >= 16, got {b}")
    return min(b, max(16, triton.next_power_of_2(v)))


def _check(z: torch.Tensor, targets: torch.Tensor) -> None:
    if z.dim() != 2 or z.stride(1) != 1:
        raise ValueError(f"logits must be a [rows, V] tensor with unit stride along V, got shape "
                         f"{tuple(z.shape)} strides {z.stride()}")
    if targets.shape != (z.shape[0],) or targets.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"targets must be an integer tensor of shape [{z.shape[0]}], got "
                         f"{tuple(targets.shape)} {targets.dtype}")


def lse_pick(z: torch.Tensor, targets: torch.Tensor, block_v: int | None = None):
    """(lse [rows], pick [rows]) of logits z [rows, V] and labels targets [rows] (0 <= t < V; a label outside
    reads as 0).  float32 results (float64 for float64 logits)."""
    _check(z, targets)
    rows, v = z.shape
    lse = torch.empty(rows, dtype=_acc_dtype(z), device=z.device)
    pick = torch.empty_like(lse)
    if rows:
        _lse_pick_kernel[(rows,)](z, targets.contiguous(), lse, pick, v, z.stride(0),
                                  BLOCK_V=_block(block_v, v), F64=z.dtype == torch.float64)
    return lse, pick


def softmax_grad_(z: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor, g: torch.Tensor,
                  block_v: int | None = None) -> torch.Tensor:
    """Overwrite z [rows, V] with g_r (onehot(t_r) - softmax(z_r)) and return it (lse from :func:`lse_pick`,
    g [rows] the gradient of each row's label log-prob)."""
    _check(z, targets)
    rows, v = z.shape
    if rows:
        acc = _acc_dtype(z)
        _softmax_grad_kernel[(rows,)](z, targets.contiguous(), lse.to(acc).contiguous(), g.to(acc).contiguous(),
                                      v, z.stride(0), BLOCK_V=_block(block_v, v),
                                      F64=z.dtype == torch.float64)
    return z
