"""summary.json of scripts/gpu/check.sh: the device, driver, CUDA and package versions, the git revision, and
each step's status (ok / failed / timeout), exit code, wall time and budget; refuses more than 8 files in OUT.

    python scripts/gpu/summary.py --steps STEPS.tsv --out DIR --smoke 0|1 --wall SECONDS
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STEPS = ("kernels", "bench_fair_loss", "dpo_memory", "train")  # every step check.sh runs, in order
OUTPUTS = {"kernels": ["kernels.csv"], "bench_fair_loss": ["fair_loss.csv", "fair_loss.png"],
           "dpo_memory": ["dpo_memory.csv"], "train": ["train.csv"]}
MAX_FILES = 8
PACKAGES = ("torch", "triton", "transformers", "tokenizers", "safetensors", "accelerate", "deepspeed",
            "liger_kernel", "flash_attn", "jsonschema", "numpy", "pandas", "matplotlib")


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name.replace("_", "-"))
            importlib.import_module(name)  # installed is not enough: it must import here
        except Exception as e:  # noqa: BLE001 - absent or broken: say which
            out[name] = f"not available ({type(e).__name__})" if name not in out else f"{out[name]} (import fails: " \
                f"{type(e).__name__})"
    return out


def device() -> dict:
    import torch

    info = {"cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
            "host": platform.node(), "cpu": platform.processor() or platform.machine()}
    if torch.cuda.is_available():
        info["name"] = torch.cuda.get_device_name(0)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        info["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, check=False, timeout=30)
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        info["nvidia_smi"] = f"not available ({type(e).__name__})"
    return info


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=False).stdout.strip()
        return (rev + ("-dirty" if dirty else "")) if rev else "unknown (no git)"
    except OSError:
        return "unknown (no git)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", default="0")
    p.add_argument("--wall", type=float, default=None)
    args = p.parse_args(argv)
    out = Path(args.out)
    ran = {}
    for line in Path(args.steps).read_text().splitlines():
        name, rc, wall, budget = line.split("\t")
        ran[name] = {"exit": int(rc), "wall_s": float(wall), "budget_s": int(budget)}
    steps = []
    for name in STEPS:
        r = ran.get(name)
        if r is None:
            steps.append({"step": name, "status": "not run"})
            continue
        status = "ok" if r["exit"] == 0 else "timeout" if r["exit"] in (124, 137) else "failed"
        missing = [f for f in OUTPUTS[name] if not (out / f).is_file()]
        if status == "ok" and missing:
            status = "failed"
        steps.append({"step": name, "status": status, **r, "outputs": OUTPUTS[name],
                      **({"missing_outputs": missing} if missing else {})})
    summary = {"kind": "cpu-smoke (Triton interpreter, tiny sizes: correctness only, no timings)"
               if args.smoke == "1" else "gpu", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "git_rev": git_revision(), "device": device(), "versions": versions(), "wall_s": args.wall,
               "steps": steps, "ok": all(s["status"] == "ok" for s in steps)}
    tmp = out / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, out / "summary.json")
    files = sorted(f.name for f in out.iterdir() if f.is_file())
    for s in steps:
        print(f"{s['step']:16s} {s['status']:8s} {s.get('wall_s', '')!s:>7} s (budget {s.get('budget_s', '-')} s)")
    print(f"summary.json: {'all steps ok' if summary['ok'] else 'SOME STEPS FAILED'}; {len(files)} files in {out}")
    if len(files) > MAX_FILES:
        print(f"summary.py: {len(files)} files in {out} (at most {MAX_FILES} come back from the GPU machine): "
              f"{', '.join(files)}", file=sys.stderr)
        return 1
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
