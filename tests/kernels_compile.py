"""Compile the fused-loss kernels for an sm_90 (H100) target without a GPU.

Run with TRITON_INTERPRET unset: ``python tests/kernels_compile.py [--all]`` prints one line per compiled
specialisation and stops at the first failure (--all: every combination that matters, about a minute).
The Triton interpreter accepts code that the compiler rejects (types of loop-carried values, scalar and
constexpr mix-ups), so this is the check that the kernels build for real.  It needs Triton's CUDA backend
(its bundled ptxas), not a device.
"""

from __future__ import annotations

import itertools
import sys

import triton
from fairhpc_kernels import fair_loss as fl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

TARGET = GPUTarget("cuda", 90, 32)
_DT = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16"}
_INPUTS = ("p0", "p1", "p2", "p3")
_STRIDES = ("st0", "st1", "st2", "st3")  # element strides of the inputs (int32)


def _compile(kernel, ptr_types: dict, constexprs: dict, ints=(), num_warps=4):
    sig = {}
    for name in kernel.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ptr_types:
            sig[name] = ptr_types[name]
        else:
            sig[name] = "i32" if name in ints else "fp32"
    src = ASTSource(fn=kernel, signature=sig, constexprs=constexprs)
    return triton.compile(src, target=TARGET, options={"num_warps": num_warps})


def specialisations(full: bool = False):
    """(name, kernel, pointer types, constexprs, int args).  full: the product of the constexpr values that
    matter; otherwise a cover in which every kernel and every constexpr value is compiled at least once."""
    blk, rb = fl.DEFAULT_LAUNCH.block, fl.DEFAULT_LAUNCH.row_block
    bools = (False, True)
    out = []

    fwd = [("fp32", 0, 0, False, False, True), ("bf16", 1, 1, True, True, True),
           ("fp16", 0, 2, True, False, False), ("fp32", 1, 2, False, True, True)]
    if full:
        fwd = list(itertools.product(("fp32", "bf16"), (0, 1), (0, 1, 2), bools, bools, bools))
    for dt, kind, mode, use_q, red, wg in fwd:
        ptrs = dict.fromkeys(_INPUTS, _DT[dt]) | dict.fromkeys(("g_ptr", "loss_ptr", "metrics_ptr"), "*fp32")
        consts = {"KIND": kind, "MODE": mode, "USE_Q": use_q, "REDUCE_SUM": red, "WRITE_GRAD": wg,
                  "BLOCK": blk}
        out.append((f"fwd {dt} kind={kind} mode={mode} q={use_q} sum={red} grad={wg}",
                    fl._fair_loss_fwd_kernel, ptrs, consts, ("n",)))

    for kind, use_q in itertools.product((0, 1), bools) if full else ((0, False), (1, True)):
        ptrs = dict.fromkeys(_INPUTS, "*fp16") | {"rows_ptr": "*fp32"}
        out.append((f"partials fp16 kind={kind} q={use_q}", fl._fair_loss_partials_kernel, ptrs,
                    {"KIND": kind, "USE_Q": use_q, "BLOCK": blk}, ("n", "chunk")))

    fin = list(itertools.product((0, 1, 2), bools, bools)) if full else \
        [(0, False, True), (1, True, False), (2, False, False)]
    for mode, use_q, row_only in fin:
        ptrs = dict.fromkeys(("rows_ptr", "out_ptr", "loss_ptr", "metrics_ptr"), "*fp32")
        consts = {"MODE": mode, "USE_Q": use_q, "REDUCE_SUM": mode == 1, "ROW_ONLY": row_only, "RB": rb}
        out.append((f"finish mode={mode} q={use_q} row_only={row_only}", fl._fair_loss_finish_kernel, ptrs,
                    consts, ("R",)))

    for kind, has_f in itertools.product((0, 1), bools) if full else ((0, True), (1, False)):
        ptrs = dict.fromkeys(_INPUTS, "*bf16") | {"g_ptr": "*fp32", "scal_ptr": "*fp32"}
        out.append((f"grad bf16 kind={kind} f={has_f}", fl._fair_loss_grad_kernel, ptrs,
                    {"KIND": kind, "HAS_F": has_f, "BLOCK": blk}, ("n",)))

    bwd = list(itertools.product((0, 1), ("fp32", "fp16", "bf16"))) if full else [(0, "fp16"), (1, "bf16")]
    for kind, dt in bwd:
        ptrs = {"g_ptr": "*fp32", "go_ptr": "*fp32"} | dict.fromkeys(("o0", "o1", "o2", "o3"), _DT[dt])
        consts = {"KIND": kind, "W0": True, "W1": kind == 0, "W2": kind == 1, "W3": kind == 1, "BLOCK": blk}
        out.append((f"bwd {dt} kind={kind}", fl._fair_loss_bwd_kernel, ptrs, consts, ("n",)))
    return out


def main() -> int:
    if fl.INTERPRETED:
        print("unset TRITON_INTERPRET: the compiler, not the interpreter, is under test", file=sys.stderr)
        return 2
    specs = specialisations(full="--all" in sys.argv[1:])
    for name, kernel, ptrs, consts, ints in specs:
        compiled = _compile(kernel, ptrs, consts, ints + _STRIDES, num_warps=fl.DEFAULT_LAUNCH.num_warps)
        assert "cubin" in compiled.asm, name
        print(f"ok {name}", flush=True)
    print(f"compiled {len(specs)} specialisations for sm_90")
    return 0


if __name__ == "__main__":
    sys.exit(main())
