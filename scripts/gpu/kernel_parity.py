"""The fused fairness kernel (kernels/fair_loss.py) against the float64 torch reference, and its launch counts.

    python scripts/gpu/kernel_parity.py --csv OUT/kernels.csv [--smoke]

On CUDA the kernel is compiled for the device (TRITON_INTERPRET must be unset): every objective (rm: bt / fr /
fc, dpo: dpo / fr / fc), tau in {-5, -1, 0, 0.5, 2, 10} (fc only below 1, as the config allows), float32,
float16 and bfloat16 inputs, batch sizes 1 ... 1,048,576 (both sides of the one-launch limit), contiguous and
strided (non-contiguous) inputs.  Each row gives the loss's relative error, the gradients' largest error
relative to their largest magnitude, the tolerance of the input dtype, the CUDA kernels that the forward and
the backward launched (torch.profiler) and the launch count the README claims for the forward (1 up to
8,192 pairs, 3 above: partial sums, finishing step, gradient).  ``--smoke`` (no CUDA: TRITON_INTERPRET=1 set
before triton is imported) runs a few small cases in Triton's interpreter, with a launch plan shrunk so that
the multi-program path runs too; launches are not counted there.  Exit status 1 if a case fails.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import write_rows  # scripts/gpu/gpu_common.py, beside this script

TAUS = (-5.0, -1.0, 0.0, 0.5, 2.0, 10.0)
GPU_SIZES = (1, 7, 1000, 8192, 8193, 65536, 1048576)
SMOKE_SIZES = (1, 7, 300)
ONE_LAUNCH_MAX = 8192  # README: one launch for up to 8,192 pairs
# gradient tolerance by input dtype (the gradient is stored in it): (rtol, atol relative to max|grad|);
# the loss is computed in float32 whatever the input dtype
GRAD_TOL = {"float32": (1e-4, 2e-5), "float16": (2e-3, 2e-3), "bfloat16": (1e-2, 1e-2)}
LOSS_RTOL = 2e-5
COLUMNS = ("kind", "mode", "tau", "dtype", "size", "layout", "device", "loss_rel_err", "grad_err", "grad_tol",
           "fwd_launches", "fwd_launches_claimed", "bwd_launches", "fwd_kernels", "status", "note")


def modes(kind: str):
    for mode, tau in itertools.product(("bt" if kind == "rm" else "dpo", "fr", "fc"), TAUS):
        if mode in ("bt", "dpo"):
            if tau != -1.0:
                continue
        elif tau == 1.0 or (mode == "fc" and tau > 1):
            continue
        yield mode, tau


def make_inputs(torch, kind, n, dtype, device, strided, seed):
    g = torch.Generator().manual_seed(seed)
    k = 2 if kind == "rm" else 4
    m = 2 * n if strided else n
    if kind == "rm":
        xs = [torch.randn(m, generator=g, dtype=torch.float64) * 3 for _ in range(k)]
    else:
        ref = -(20 + 180 * torch.rand(2, m, generator=g, dtype=torch.float64))
        pol = ref + torch.randn(2, m, generator=g, dtype=torch.float64) * 3
        xs = [pol[0], pol[1], ref[0], ref[1]]
    xs = [x.to(dtype).to(device) for x in xs]
    return [x[::2] for x in xs] if strided else xs  # a view with stride 2: not contiguous


def cuda_kernels(torch, fn):
    """(result, names of the CUDA kernels that fn launched)."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        out = fn()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return out, names


def run_case(torch, fl, losses, FairnessConfig, kind, mode, tau, dtype_name, n, strided, device, launch, seed):
    dtype = getattr(torch, dtype_name)
    cfg = FairnessConfig(mode=mode, tau=tau, alpha=0.3, gamma=0.7, beta=0.5)
    # leaves that require grad; strided: every second element of a buffer twice as long (stride 2)
    ins = [x.detach().requires_grad_() for x in make_inputs(torch, kind, n, dtype, device, strided, seed)]
    assert all(x.is_contiguous() != strided or n == 1 for x in ins)
    spec = losses.kernel_spec(cfg)
    row = {"kind": kind, "mode": mode, "tau": tau, "dtype": dtype_name, "size": n,
           "layout": "strided" if strided else "contiguous", "device": str(device)}
    on_cuda = device.type == "cuda"

    def fwd():
        return fl.fused_loss(kind, *ins, spec=spec, launch=launch)

    if on_cuda:
        fl.fused_loss(kind, *[x.detach() for x in ins], spec=spec, launch=launch)  # compile outside the count
        (loss, _), fwd_names = cuda_kernels(torch, fwd)
        go = torch.tensor(-0.73, device=device)
        _, bwd_names = cuda_kernels(torch, lambda: loss.backward(go))
        row.update(fwd_launches=len(fwd_names), bwd_launches=len(bwd_names),
                   fwd_kernels=" ".join(sorted(set(fwd_names)))[:300],
                   fwd_launches_claimed=1 if n <= ONE_LAUNCH_MAX else 3)
    else:
        loss, _ = fwd()
        loss.backward(torch.tensor(-0.73))
        row.update(fwd_launches="", bwd_launches="", fwd_kernels="", fwd_launches_claimed="",
                   note="interpreter: launches not counted")
    x64 = [x.detach().double().cpu().requires_grad_() for x in ins]
    ref = (losses.rm_loss if kind == "rm" else losses.dpo_loss)(*x64, cfg=cfg)
    ref.loss.backward(torch.tensor(-0.73, dtype=torch.float64))
    loss = loss.detach()
    ref_loss = float(ref.loss.detach())
    loss_err = abs(float(loss) - ref_loss) / max(abs(ref_loss), 1e-6)
    rtol, arel = GRAD_TOL[dtype_name]
    grad_err, ok = 0.0, loss_err <= LOSS_RTOL or abs(float(loss) - ref_loss) <= 1e-6
    for x, r in zip(ins, x64):
        g, gr = x.grad.detach().double().cpu(), r.grad
        scale = max(gr.abs().max().item(), 1e-30)
        err = (g - gr).abs()
        grad_err = max(grad_err, err.max().item() / scale)
        ok &= bool((err <= arel * scale + rtol * gr.abs()).all()) and x.grad.dtype == x.dtype
    row.update(loss_rel_err=f"{loss_err:.3e}", grad_err=f"{grad_err:.3e}", grad_tol=f"{rtol:g} rel + {arel:g} max")
    if on_cuda and row["fwd_launches"] != row["fwd_launches_claimed"]:
        row["note"] = f"forward launched {row['fwd_launches']} kernels, README claims {row['fwd_launches_claimed']}"
        ok = False
    row["status"] = "pass" if ok else "fail"
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--csv", required=True)
    p.add_argument("--smoke", action="store_true", help="no CUDA: a few small cases in Triton's interpreter")
    p.add_argument("--sizes", default=None, help="comma-separated batch sizes (default: by device)")
    args = p.parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
    import torch
    from fairhpc_kernels import fair_loss as fl

    from fairhpc import losses
    from fairhpc.config import FairnessConfig

    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cpu" and not fl.INTERPRETED:
        print("kernel_parity: no CUDA device; use --smoke (Triton's interpreter on CPU)", file=sys.stderr)
        return 2
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else (SMOKE_SIZES if args.smoke else GPU_SIZES)
    launch = fl.LaunchConfig(block=64, single_program_max=64, max_programs=8, row_block=4) if args.smoke else None
    dtypes = ("float32", "float16", "bfloat16")
    rows, t0 = [], time.time()
    cases = []
    for kind in ("rm", "dpo"):
        for mode, tau in modes(kind):
            for dt in dtypes:
                for n in sizes:
                    for strided in (False, True):
                        if args.smoke and (strided and n != sizes[-1] or dt == "bfloat16" and n != sizes[-1]):
                            continue
                        cases.append((kind, mode, tau, dt, n, strided))
    for i, (kind, mode, tau, dt, n, strided) in enumerate(cases):
        try:
            row = run_case(torch, fl, losses, FairnessConfig, kind, mode, tau, dt, n, strided, device, launch,
                           seed=i)
        except Exception as e:  # noqa: BLE001 - a case that errors is a failed row, the others still run
            row = {"kind": kind, "mode": mode, "tau": tau, "dtype": dt, "size": n, "device": str(device),
                   "layout": "strided" if strided else "contiguous", "status": "error",
                   "note": f"{type(e).__name__}: {e}"[:300]}
        rows.append(row)
    out = write_rows(args.csv, rows, COLUMNS)
    bad = [r for r in rows if r["status"] != "pass"]
    print(f"kernel parity on {device}: {len(rows) - len(bad)}/{len(rows)} cases pass in {time.time() - t0:.1f} s"
          f" -> {out}")
    for r in bad[:10]:
        print(f"  {r['status']}: {r['kind']} {r['mode']} tau={r['tau']} {r['dtype']} n={r['size']} {r['layout']}: "
              f"loss err {r.get('loss_rel_err', '')}, grad err {r.get('grad_err', '')} {r.get('note', '')}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
