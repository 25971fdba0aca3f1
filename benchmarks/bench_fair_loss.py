"""Microbenchmark of the fairness loss: torch reference (eager float64 and float32), torch.compile, fused kernel.

    python benchmarks/bench_fair_loss.py --csv results/bench/fair_loss.csv --png results/bench/fair_loss.png

For every (kind, provider, mode, batch size) point one CSV row: p20/p50/p80 time in ms
(triton.testing.do_bench: L2 flushed before each run), CUDA kernel launches of one call
(torch.profiler), peak extra memory, the error against a float64 evaluation of the reference on the same
inputs, and the device, torch/triton versions, git revision and date.  Providers: ``torch_fp64`` (the
float64 reference of fairhpc.losses, eager), ``torch_fp32`` (the same formula in float32, eager: the kernel's
precision, so its speed-up is not partly float64 against float32), ``torch_compile_fp32`` (torch.compile of
the float32 formula, CUDA only) and ``triton`` (the fused kernel).  Modes: ``forward`` (training
forward, inputs require grad: the fused kernel computes the gradient here), ``backward`` (backward of a
kept graph), ``full`` (forward + backward).

On a machine without CUDA the script checks correctness only, running the kernel under the Triton
interpreter (TRITON_INTERPRET=1) on small sizes; interpreter timings mean nothing, so none are written
and the ``note`` column says so.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import functools
import math
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import git_revision

REPO = Path(__file__).resolve().parents[1]
PROVIDERS = ("torch_fp64", "torch_fp32", "torch_compile_fp32", "triton")
MODES = ("forward", "backward", "full")
DEFAULT_SIZES = "8,64,512,4096,32768,262144,1048576"
DTYPES = ("float32", "float16", "bfloat16")
COLUMNS = ("op", "kind", "objective", "tau", "reduction", "dtype", "provider", "mode", "size",
           "p20_ms", "p50_ms", "p80_ms", "launches", "peak_mem_mib", "rel_err_loss", "rel_err_grad",
           "device", "torch", "triton", "git_rev", "date", "note")
CPU_NOTE = ("CPU: fused kernel run by the Triton interpreter (TRITON_INTERPRET=1); correctness only -- "
            "interpreter timings are not meaningful and are not reported")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--csv", required=True, help="output CSV (one row per point)")
    p.add_argument("--png", required=True, help="output plot")
    p.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated batch sizes (pairs)")
    p.add_argument("--cpu-max-size", type=int, default=4096,
                   help="without CUDA, sizes above this are skipped (the interpreter is slow)")
    p.add_argument("--kinds", default="rm,dpo", help="rm and/or dpo")
    p.add_argument("--providers", default=",".join(PROVIDERS),
                   help=f"subset of {','.join(PROVIDERS)} (torch_compile_fp32 is skipped on CPU)")
    p.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    p.add_argument("--objective", default="fr", help="objective.mode (bt/dpo, fr, fc)")
    p.add_argument("--tau", type=float, default=-1.0, help="objective.tau")
    p.add_argument("--alpha", type=float, default=0.1, help="objective.alpha")
    p.add_argument("--gamma", type=float, default=0.5, help="objective.gamma")
    p.add_argument("--reduction", default="mean", help="objective.reduction")
    p.add_argument("--dtype", default="float32", choices=DTYPES, help="input dtype")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    def split(text, allowed, what):
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in allowed]
        if bad or not items:
            p.error(f"--{what}: {', '.join(bad) or 'empty'} not allowed; choose from {', '.join(allowed)}")
        return items

    args.kinds = split(args.kinds, ("rm", "dpo"), "kinds")
    args.providers = split(args.providers, PROVIDERS, "providers")
    args.modes = split(args.modes, MODES, "modes")
    try:
        args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        p.error(f"--sizes: expected comma-separated integers, got {args.sizes!r}")
    if not args.sizes or min(args.sizes) < 1:
        p.error(f"--sizes: batch sizes must be >= 1, got {args.sizes}")
    return args


def make_inputs(kind, n, dtype, device, seed):
    """RM: chosen/rejected rewards ~ N(0, 2^2) and N(-0.5, 2^2).  DPO: sequence log-probs of a few hundred
    tokens, the policy a small perturbation of the reference (margins of order beta * a few nats)."""
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + n)
    if kind == "rm":
        xs = [torch.randn(n, generator=g) * 2, torch.randn(n, generator=g) * 2 - 0.5]
    else:
        ref = -(50 + 250 * torch.rand(2, n, generator=g))
        pol = ref + torch.randn(2, n, generator=g) * 5
        xs = [pol[0], pol[1], ref[0], ref[1]]
    out = [x.to(device=device, dtype=dtype) for x in xs]
    for x in out[:2]:
        x.requires_grad_()  # policy / reward-model outputs; DPO reference log-probs carry no gradient
    return out


def rel_err(a, b) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / scale if scale > 0 else (a - b).abs().max().item()


def build_providers(args, cfg, kind, device):
    import torch

    from fairhpc.losses import LossOutput, dpo_loss, kernel_spec, rm_loss

    ref = rm_loss if kind == "rm" else dpo_loss
    fns = {"torch_fp64": functools.partial(ref, cfg=cfg, dtype=torch.float64),
           "torch_fp32": functools.partial(ref, cfg=cfg, dtype=torch.float32)}
    if "torch_compile_fp32" in args.providers and device.type == "cuda":
        fns["torch_compile_fp32"] = torch.compile(fns["torch_fp32"])
    if "triton" in args.providers:
        from fairhpc_kernels import fair_loss as fl

        fl.check_supported(getattr(torch, args.dtype), device)
        spec = kernel_spec(cfg)
        fns["triton"] = lambda *t: LossOutput(*fl.fused_loss(kind, *t, spec=spec))
    return {k: v for k, v in fns.items() if k in args.providers}


def correctness(fn, inputs, cfg, kind):
    """Relative error of loss and input gradients against the float64 reference on the same inputs."""
    from fairhpc.losses import dpo_loss, rm_loss

    ref = rm_loss if kind == "rm" else dpo_loss
    xs = [x.detach().clone().requires_grad_(x.requires_grad) for x in inputs]
    out = fn(*xs)
    out.loss.backward()
    x64 = [x.detach().double().requires_grad_(x.requires_grad) for x in inputs]
    r = ref(*x64, cfg=cfg)
    r.loss.backward()
    grad_err = max(rel_err(a.grad, b.grad) for a, b in zip(xs, x64) if b.grad is not None)
    return rel_err(out.loss, r.loss), grad_err


def count_launches(step) -> int:
    """CUDA kernels launched by one call of ``step`` (memcpy/memset not counted)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA
               and not e.name.startswith(("Memcpy", "Memset"))]
    return len(kernels)


def peak_memory_mib(step) -> float:
    import torch

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def time_cuda(args, fns, kind, cfg, n, device, dtype, meta, rows):
    import torch
    import triton.testing

    inputs = make_inputs(kind, n, dtype, device, args.seed)
    grads = [x for x in inputs if x.requires_grad]
    for name, fn in fns.items():
        base = dict(meta, provider=name, size=n)
        try:
            e_loss, e_grad = correctness(fn, inputs, cfg, kind)
            for mode in args.modes:
                kept = {"out": fn(*inputs)} if mode == "backward" else {}

                def fwd(fn=fn):
                    return fn(*inputs)

                def bwd(kept=kept):
                    kept["out"].loss.backward(retain_graph=True)

                def full(fn=fn):
                    fn(*inputs).loss.backward()

                step = {"forward": fwd, "backward": bwd, "full": full}[mode]
                step()  # warm-up (compilation, autotuning, caches)
                p20, p50, p80 = triton.testing.do_bench(step, quantiles=[0.2, 0.5, 0.8], grad_to_none=grads)
                for x in grads:
                    x.grad = None
                launches = count_launches(step)
                for x in grads:
                    x.grad = None
                mem = peak_memory_mib(step)
                for x in grads:
                    x.grad = None
                rows.append(dict(base, mode=mode, p20_ms=p20, p50_ms=p50, p80_ms=p80, launches=launches,
                                 peak_mem_mib=round(mem, 4), rel_err_loss=e_loss, rel_err_grad=e_grad,
                                 note=""))
                kept.clear()
        except Exception as e:  # noqa: BLE001 -- recorded in the CSV and on stderr; other providers still run
            for mode in args.modes:
                rows.append(dict(base, mode=mode, note=f"error: {type(e).__name__}: {str(e)[:200]}"))
            print(f"warning: {name} at n={n}: {type(e).__name__}: {e}", file=sys.stderr)
        torch.cuda.empty_cache()


def check_cpu(args, fns, kind, cfg, n, dtype, meta, rows):
    inputs = make_inputs(kind, n, dtype, "cpu", args.seed)
    for name, fn in fns.items():
        e_loss, e_grad = correctness(fn, inputs, cfg, kind)
        for mode in args.modes:
            rows.append(dict(meta, provider=name, mode=mode, size=n, rel_err_loss=e_loss, rel_err_grad=e_grad,
                             note=CPU_NOTE))


def write_csv(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in COLUMNS})
    os.replace(tmp, path)


def plot(path: Path, rows, on_cuda: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({r["kind"] for r in rows})
    providers = [p for p in PROVIDERS if any(r["provider"] == p for r in rows)]
    colors = dict(zip(PROVIDERS, ("tab:blue", "tab:purple", "tab:orange", "tab:green")))
    head = rows[0] if rows else {}
    title = (f"fair loss ({head.get('objective')}, tau={head.get('tau')}, {head.get('dtype')}) on "
             f"{head.get('device')}; torch {head.get('torch')}, triton {head.get('triton')}, "
             f"{head.get('git_rev')}")

    def series(kind, provider, mode, key):
        pts = sorted((r["size"], r.get(key)) for r in rows if r["kind"] == kind and r["provider"] == provider
                     and r["mode"] == mode and r.get(key) not in (None, ""))
        return [p[0] for p in pts], [float(p[1]) for p in pts]

    if on_cuda:
        modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
        panels = [(m, "p50_ms", f"{m}: median time [ms] (band p20-p80)") for m in modes]
        panels += [("full" if "full" in modes else modes[0], "launches", "kernel launches per call"),
                   ("full" if "full" in modes else modes[0], "peak_mem_mib", "peak extra memory [MiB]")]
    else:
        panels = [("full" if any(r["mode"] == "full" for r in rows) else rows[0]["mode"], "rel_err_grad",
                   "max |grad - grad64| / max |grad64|"),
                  (rows[0]["mode"], "rel_err_loss", "|loss - loss64| / |loss64|")]
    fig, axes = plt.subplots(len(panels), len(kinds), figsize=(5.5 * len(kinds), 3.2 * len(panels)),
                             squeeze=False)
    for j, kind in enumerate(kinds):
        for i, (mode, key, label) in enumerate(panels):
            ax = axes[i][j]
            for prov in providers:
                xs, ys = series(kind, prov, mode, key)
                if not xs:
                    continue
                if key == "rel_err_grad" or key == "rel_err_loss":
                    ys = [max(y, 1e-17) for y in ys]  # exact agreement plotted at the floor
                ax.plot(xs, ys, "o-", color=colors[prov], label=prov)
                if key == "p50_ms":
                    _, lo = series(kind, prov, mode, "p20_ms")
                    _, hi = series(kind, prov, mode, "p80_ms")
                    if len(lo) == len(xs) == len(hi):
                        ax.fill_between(xs, lo, hi, color=colors[prov], alpha=0.2)
            ax.set_xscale("log", base=2)
            if key != "launches":
                ax.set_yscale("log")
            ax.set_xlabel("batch size (pairs)")
            ax.set_ylabel(label, fontsize=8)
            ax.set_title(f"{kind}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(title if on_cuda else title + "\n" + CPU_NOTE, fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    on_cuda = args.device == "cuda" or (args.device == "auto" and _cuda_available())
    if not on_cuda:
        # must be set before triton is imported: kernels are decorated as interpreted functions then
        os.environ["TRITON_INTERPRET"] = "1"
    import torch
    import triton
    from tqdm import tqdm

    from fairhpc.config import FairnessConfig

    if on_cuda and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    device = torch.device("cuda" if on_cuda else "cpu")
    dtype = getattr(torch, args.dtype)
    sizes = args.sizes
    providers = list(args.providers)
    if not on_cuda:
        skipped = [s for s in sizes if s > args.cpu_max_size]
        sizes = [s for s in sizes if s <= args.cpu_max_size]
        if "torch_compile_fp32" in providers:
            providers.remove("torch_compile_fp32")
            print("note: torch_compile_fp32 is skipped on CPU (correctness of the fused kernel only)",
                  file=sys.stderr)
        if skipped:
            print(f"note: CPU run, sizes {skipped} skipped (--cpu-max-size {args.cpu_max_size})",
                  file=sys.stderr)
        print(f"note: {CPU_NOTE}", file=sys.stderr)
        if not sizes:
            print("error: no size left to check on CPU", file=sys.stderr)
            return 2
    args.providers = providers
    if on_cuda:
        dyn = torch._dynamo.config
        if hasattr(dyn, "recompile_limit"):
            dyn.recompile_limit = max(dyn.recompile_limit, 64)  # one graph per batch size
        else:
            dyn.cache_size_limit = max(dyn.cache_size_limit, 64)

    meta = {"op": "fair_loss", "objective": args.objective, "tau": args.tau, "reduction": args.reduction,
            "dtype": args.dtype,
            "device": torch.cuda.get_device_name(device) if on_cuda
            else f"cpu ({platform.processor() or platform.machine()})",
            "torch": torch.__version__, "triton": triton.__version__, "git_rev": git_revision(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    rows = []
    points = [(kind, n) for kind in args.kinds for n in sizes]
    for kind, n in tqdm(points, desc="bench fair_loss", unit="point"):
        mode = args.objective
        if kind == "dpo" and mode == "bt":
            mode = "dpo"
        elif kind == "rm" and mode == "dpo":
            mode = "bt"
        cfg = FairnessConfig(mode=mode, tau=args.tau, alpha=args.alpha, gamma=args.gamma,
                             reduction=args.reduction, loss_impl="triton")
        fns = build_providers(args, cfg, kind, device)
        kmeta = dict(meta, kind=kind, objective=mode)
        if on_cuda:
            time_cuda(args, fns, kind, cfg, n, device, dtype, kmeta, rows)
        else:
            check_cpu(args, fns, kind, cfg, n, dtype, kmeta, rows)
    rows.append(empty_launch_row(meta, on_cuda))
    write_csv(Path(args.csv), rows)
    plot(Path(args.png), [r for r in rows if r["op"] == "fair_loss"], on_cuda)
    errs = [r["rel_err_grad"] for r in rows if r.get("rel_err_grad") not in (None, "")]
    worst = max(errs, default=math.nan)
    print(f"wrote {len(rows)} rows to {args.csv} and {args.png}; worst relative gradient error {worst:.2e}")
    return 0


def empty_launch_row(meta: dict, on_cuda: bool) -> dict:
    """Time of one launch of a Triton kernel that does nothing (one program, one masked-off load): the floor
    under any fused op's time on this device, measured in the same run as the loss (op ``empty_launch``)."""
    import triton
    import triton.language as tl

    @triton.jit
    def _empty_kernel(x_ptr, n):
        offs = tl.arange(0, 16)
        tl.load(x_ptr + offs, mask=offs < n)

    row = dict(meta, op="empty_launch", kind="", objective="", tau="", reduction="", provider="triton_empty",
               mode="launch", size=0)
    import torch

    x = torch.zeros(16, device="cuda" if on_cuda else "cpu")
    _empty_kernel[(1,)](x, 0)  # compiled (or interpreted) once
    if not on_cuda:
        return dict(row, note="CPU: interpreter launch, not timed")
    p20, p50, p80 = triton.testing.do_bench(lambda: _empty_kernel[(1,)](x, 0), quantiles=[0.2, 0.5, 0.8])
    return dict(row, p20_ms=p20, p50_ms=p50, p80_ms=p80, launches=1,
                note="one launch of an empty Triton kernel (do_bench: includes the L2 flush's own launch gap)")


def _cuda_available() -> bool:
    # decide before importing triton; torch.cuda does not import triton
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
