"""Peak memory and time of one fair-DPO step's log-prob head: full logits vs chunked vs Liger-Kernel.

    python benchmarks/bench_dpo_memory.py --csv results/bench/dpo_memory.csv --png results/bench/dpo_memory.png

A case is (V, T, H, B): 2B sequences (chosen, rejected) of T tokens with last hidden states [2B, T, H] for the
policy (requires grad) and for the reference (no grad), LM-head weights [V, H] for both; the first quarter of
every row is prompt and each row ends in padding (neither counts).  One step = the policy's and the
reference's sequence log-probs, the fairness objective (objective fr, tau = -1, alpha = 0.1, beta = 0.1) on
the B margins, and backward into the hidden states and the policy's LM-head weight.  The transformer body is
left out: it is the same for every method.  Methods:

* ``eager``   -- full logits [2B, T, V] as a transformers model returns them, then logsumexp and the label
                 logit (fairhpc.logprobs.eager_sequence_logps, the path of model.logprob_impl=eager);
* ``chunked`` -- fairhpc.logprobs.chunked_sequence_logps (Triton kernels on CUDA, torch on CPU), the path of
                 model.logprob_impl=auto;
* ``liger``   -- Liger-Kernel's LigerFusedLinearDPOLoss (its chunked, fused linear + plain DPO loss, no
                 fairness term), where liger-kernel is installed; otherwise the CSV row says "not installed".

Each (method, case) runs in a fresh subprocess: inputs are built, one warm-up step allocates the gradients,
then the peak is reset and one measured step runs.  Peak memory is the step's peak above what was allocated
before it: on CUDA torch.cuda.max_memory_allocated minus memory_allocated; on CPU the process's peak
resident set (VmHWM of /proc/self/status, reset by writing 5 to /proc/self/clear_refs) minus the resident
set before the step.  Time per step is the median of ``--repeats`` further steps.  Both are also given as
ratios to eager of the same case in the same run.  The CSV records device, versions and git revision; the
PNG plots the ratios.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import git_revision

REPO = Path(__file__).resolve().parents[1]
METHODS = ("eager", "chunked", "liger")
GPU_GRID = {"V": (32000, 128256), "T": (512, 1024, 2048), "H": (2048, 4096), "B": (1, 2, 4, 8, 16)}
# a 2-core CPU: one vocabulary, the two sequence lengths and hidden sizes that fit a few seconds per step
CPU_CASES = ((32000, 256, 256, 1), (32000, 256, 256, 4), (32000, 512, 256, 2), (32000, 512, 512, 1),
             (32000, 512, 512, 4))
COLUMNS = ("method", "impl", "V", "T", "H", "B", "tokens", "dtype", "peak_mib", "peak_ratio", "time_s",
           "time_ratio", "loss", "status", "device", "memory_method", "torch", "triton", "liger_kernel",
           "git_rev", "date", "note")
CPU_MEMORY = "peak RSS (VmHWM reset via /proc/self/clear_refs) minus RSS before the step, fresh process"
CUDA_MEMORY = "torch.cuda.max_memory_allocated minus memory_allocated before the step, fresh process"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--csv", required=True, help="output CSV (one row per method and case)")
    p.add_argument("--png", required=True, help="output plot of the ratios to eager")
    p.add_argument("--cases", default=None,
                   help="V:T:H:B,... (default: on CUDA the grid V {32000,128256} x T {512,1024,2048} x "
                        "H {2048,4096} x B {1,2,4,8,16}; on CPU " +
                        ",".join(":".join(map(str, c)) for c in CPU_CASES) + ")")
    p.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    p.add_argument("--repeats", type=int, default=2, help="timed steps per case (median)")
    p.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--chunk-tokens", type=int, default=-1, help="model.logprob_chunk_tokens of the chunked path")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per case")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in METHODS]
    if bad or not args.methods:
        p.error(f"--methods: unknown {bad}; allowed: {', '.join(METHODS)}")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def parse_cases(text: str | None, on_cuda: bool) -> list[tuple[int, int, int, int]]:
    if not text:
        if on_cuda:
            g = GPU_GRID
            return [(v, t, h, b) for v in g["V"] for t in g["T"] for h in g["H"] for b in g["B"]]
        return list(CPU_CASES)
    out = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) != 4 or not all(x.isdigit() and int(x) > 0 for x in parts):
            raise SystemExit(f"--cases: {item!r} is not V:T:H:B with positive integers")
        out.append(tuple(int(x) for x in parts))
    return out


def liger_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("liger-kernel")
    except PackageNotFoundError:
        return "not installed"


# ------------------------------------------------------------------------------------------ one case (child)
def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class Meter:
    """The peak memory of a block above the memory before it (CUDA allocator, or the process's RSS)."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.base = _rss_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.peak = _rss_kib("VmHWM") * 1024 - self.base
        return False


def build_step(method: str, v: int, t: int, h: int, b: int, dtype, device, chunk_tokens: int):
    """(step() -> loss float, impl name): one fair-DPO head step of ``method`` on fixed random inputs."""
    import torch

    from fairhpc import logprobs as L
    from fairhpc.config import FairnessConfig
    from fairhpc.losses import PreferenceLoss

    g = torch.Generator(device="cpu").manual_seed(0)
    n = 2 * b
    hidden = torch.randn(n, t, h, generator=g).to(device=device, dtype=dtype).requires_grad_()
    ref_hidden = torch.randn(n, t, h, generator=g).to(device=device, dtype=dtype)
    weight = (torch.randn(v, h, generator=g) / h**0.5).to(device=device, dtype=dtype).requires_grad_()
    ref_weight = (torch.randn(v, h, generator=g) / h**0.5).to(device=device, dtype=dtype)
    labels = torch.randint(0, v, (n, t), generator=g)
    labels[:, : t // 4] = -100  # the prompt
    for r in range(n):  # right padding of 0..t/8 tokens
        labels[r, t - (r * 37) % (t // 8 + 1):] = -100
    labels = labels.to(device)
    cfg = FairnessConfig(mode="fr", alpha=0.1, tau=-1.0, beta=0.1)
    loss_fn = PreferenceLoss("dpo", cfg, device, torch.float32)

    if method == "liger":
        from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss

        liger = LigerFusedLinearDPOLoss(beta=0.1, use_ref_model=True, compiled=device.type == "cuda")

        def step():
            out = liger(weight, hidden, labels, None, ref_hidden, ref_weight)
            loss = out[0] if isinstance(out, tuple) else out
            loss.backward()
            return float(loss)

        return step, "liger (plain DPO)"

    if method == "eager":
        def logps(hd, w):
            return L.eager_sequence_logps(hd, w, labels).sum
        impl = "eager"
    else:
        impl = L.resolve_impl("auto", device, dtype)

        def logps(hd, w):
            return L.chunked_sequence_logps(hd, w, labels, impl=impl, chunk_tokens=chunk_tokens).sum

    def step():
        with torch.no_grad():
            ref = logps(ref_hidden, ref_weight)
        lp = logps(hidden, weight)
        res = loss_fn(lp[:b], lp[b:], ref[:b], ref[b:])
        res.loss.backward()
        return float(res.loss)

    return step, impl


def run_child(spec: dict) -> dict:
    import torch

    device = torch.device(spec["device"])
    dtype = getattr(torch, spec["dtype"])
    step, impl = build_step(spec["method"], spec["V"], spec["T"], spec["H"], spec["B"], dtype, device,
                            spec["chunk_tokens"])
    step()  # warm-up: gradients allocated, kernels compiled
    with Meter(device) as m:
        loss = step()
    times = []
    for _ in range(spec["repeats"]):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"impl": impl, "peak_mib": m.peak / 2**20, "time_s": statistics.median(times), "loss": loss}


# ------------------------------------------------------------------------------------------ driver
def run_case(args, method, case, device, dtype) -> dict:
    v, t, h, b = case
    spec = {"method": method, "V": v, "T": t, "H": h, "B": b, "device": device, "dtype": dtype,
            "repeats": args.repeats, "chunk_tokens": args.chunk_tokens}
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        res = subprocess.run([sys.executable, __file__, "--csv", "-", "--png", "-", "--child", json.dumps(spec)],
                             capture_output=True, text=True, timeout=args.timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {args.timeout} s"}
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        err = (res.stderr.strip().splitlines() or ["no output"])[-1]
        status = "out of memory" if "out of memory" in res.stderr.lower() or res.returncode == -9 else "failed"
        return {"status": f"{status}: {err[:200]}"}
    return {**json.loads(lines[-1]), "status": "ok"}


def plot(path: Path, rows: list[dict], meta: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = []
    for r in rows:
        key = (r["V"], r["T"], r["H"], r["B"])
        if key not in cases:
            cases.append(key)
    labels = [f"V{v // 1000}k T{t} H{h} B{b}" for v, t, h, b in cases]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.9 * len(cases) + 4), 4.5))
    for ax, key, title in ((axes[0], "peak_ratio", "peak memory / eager"), (axes[1], "time_ratio",
                                                                             "time per step / eager")):
        for method, marker in zip(METHODS, "osD"):
            pts = [(i, r[key]) for r in rows if r["method"] == method and r[key] != ""
                   for i, c in enumerate(cases) if c == (r["V"], r["T"], r["H"], r["B"])]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=method)
        ax.axhline(1.0, color="grey", lw=0.8)
        if key == "peak_ratio":
            ax.axhline(0.25, color="red", lw=0.8, ls="--", label="25% target")
        ax.set_xticks(range(len(cases)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(f"fair-DPO head step, {meta['device']} {meta['dtype']}; torch {meta['torch']}, liger "
                 f"{meta['liger_kernel']}, {meta['git_rev']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        print(json.dumps(run_child(json.loads(args.child))), flush=True)
        return 0
    import torch
    import triton
    from tqdm.auto import tqdm

    on_cuda = torch.cuda.is_available()
    device = "cuda" if on_cuda else "cpu"
    dtype = args.dtype or ("bfloat16" if on_cuda else "float32")
    cases = parse_cases(args.cases, on_cuda)
    liger = liger_version()
    meta = {"device": torch.cuda.get_device_name(0) if on_cuda else f"CPU {platform.processor() or platform.machine()}"
                      f" ({os.cpu_count()} cores, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})",
            "memory_method": CUDA_MEMORY if on_cuda else CPU_MEMORY, "torch": torch.__version__,
            "triton": triton.__version__, "liger_kernel": liger, "git_rev": git_revision(),
            "date": _dt.datetime.now().isoformat(timespec="seconds"), "dtype": dtype}
    rows = []
    for case in tqdm(cases, desc="cases", unit="case"):
        v, t, h, b = case
        base = {"V": v, "T": t, "H": h, "B": b, "tokens": 2 * b * t, **meta}
        results = {}
        for method in args.methods:
            if method == "liger" and liger == "not installed":
                results[method] = {"status": "not installed", "impl": "liger"}
                continue
            results[method] = run_case(args, method, case, device, dtype)
        eager = results.get("eager", {})
        for method, r in results.items():
            ok, eok = r.get("status") == "ok", eager.get("status") == "ok"
            note = "plain DPO loss (no fairness term)" if method == "liger" else ""
            if ok and eok and not (eager["peak_mib"] > 0 and eager["time_s"] > 0):
                eok = False  # a case too small to measure (CPU resident set unchanged): no ratio
                note = (note + "; " if note else "") + "eager peak or time below the measurement's resolution"
            rows.append({**base, "method": method, "impl": r.get("impl", method), "status": r["status"],
                         "peak_mib": round(r["peak_mib"], 1) if ok else "",
                         "time_s": round(r["time_s"], 4) if ok else "", "loss": r.get("loss", ""),
                         "peak_ratio": round(r["peak_mib"] / eager["peak_mib"], 4) if ok and eok else "",
                         "time_ratio": round(r["time_s"] / eager["time_s"], 3) if ok and eok else "",
                         "note": note})
            print(f"V={v} T={t} H={h} B={b} {method:8s} {r['status']:>8s} "
                  + (f"peak {r['peak_mib']:9.1f} MiB  time {r['time_s']:.3f} s" if ok else ""), flush=True)
    out = Path(args.csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, out)
    png = Path(args.png)
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp_png = png.with_name(png.stem + ".tmp" + png.suffix)
    plot(tmp_png, rows, meta)
    os.replace(tmp_png, png)
    print(f"wrote {len(rows)} rows to {out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
