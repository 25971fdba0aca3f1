"""Real training runs with the fused kernel against the torch reference: `fairhpc train-rm` (fr) and
`fairhpc train-dpo` (fc), same seed, same data, `objective.loss_impl` triton vs torch.

    python scripts/gpu/train_compare.py --csv OUT/train.csv --work DIR [--smoke]

On a GPU: the tiny Llama widened to hidden 1,024 and 8 layers, bf16, DeepSpeed ZeRO-2, 30 optimizer steps of
16 pairs each, attention by `model.attn_implementation: auto` (flash-attention 2 where installed, else sdpa; the
CSV says which).  ``--smoke`` (CPU): the default tiny model in fp32, ZeRO-0, 3 steps, the kernel in Triton's
interpreter.  The CSV holds one row per (task, impl, step): loss, f, accuracy and the step's wall time; the
last rows compare the two implementations (largest loss difference over the steps, median step time ratio).
Agreement means: every step's loss within 2e-2 relative (bf16) or 1e-4 (fp32) of the reference's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import write_rows  # scripts/gpu/gpu_common.py, beside this script

GPU = ["model.tiny.hidden_size=1024", "model.tiny.num_hidden_layers=8", "model.tiny.num_attention_heads=16",
       "model.tiny.num_key_value_heads=8", "model.tiny.intermediate_size=2816", "train.precision=bf16",
       "train.zero_stage=2", "train.max_steps=30", "train.micro_batch_size=16", "data.synthetic.n_train=1024",
       "data.synthetic.n_eval=64"]
SMOKE = ["train.precision=fp32", "train.zero_stage=0", "train.max_steps=3", "train.micro_batch_size=4",
         "data.synthetic.n_train=32", "data.synthetic.n_eval=8"]
COMMON = ["train.log_steps=1", "train.save_steps=0", "train.eval_steps=0", "seed=7"]
RUNS = (("rm", "train-rm", ["objective.mode=fr", "objective.alpha=0.1", "objective.tau=-1"]),
        ("dpo", "train-dpo", ["objective.mode=fc", "objective.gamma=0.5", "objective.tau=-1"]))
COLUMNS = ("task", "impl", "step", "loss", "f", "accuracy", "step_s", "attn", "precision", "note")


def attention(smoke: bool) -> str:
    """What model.attn_implementation=auto resolves to on this machine (fairhpc.models' rule)."""
    import torch

    from fairhpc.models import resolve_attn_implementation

    dev = torch.device("cpu" if smoke or not torch.cuda.is_available() else "cuda")
    return resolve_attn_implementation("auto", dev)


def run(task_cmd: str, out: Path, overrides: list[str], env: dict) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "fairhpc.cli", task_cmd, f"output_dir={out}", *overrides]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    return res.returncode, (res.stdout + res.stderr)[-1500:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--csv", required=True)
    p.add_argument("--work", required=True, help="folder for the run directories")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args(argv)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               TOKENIZERS_PARALLELISM="false")
    if args.smoke:
        env["TRITON_INTERPRET"] = "1"
    size = SMOKE if args.smoke else GPU
    rtol = 1e-4 if args.smoke else 2e-2
    rows, failed = [], []
    for task, cmd, obj in RUNS:
        curves, times = {}, {}
        for impl in ("triton", "torch"):
            out = Path(args.work) / f"{task}_{impl}"
            t0 = time.time()
            rc, tail = run(cmd, out, [*size, *COMMON, *obj, f"objective.loss_impl={impl}"], env)
            if rc != 0:
                failed.append(f"{task}/{impl}: exit {rc}: {tail}")
                rows.append({"task": task, "impl": impl, "note": f"exit {rc} after {time.time() - t0:.0f} s"})
                continue
            summary = json.loads((out / "summary.json").read_text())
            attn, prec = attention(args.smoke), summary.get("precision", "")
            per_step = summary["train_time_s"] / max(1, summary["steps"])
            times[impl] = per_step
            trains = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()
                      if '"split": "train"' in x]
            curves[impl] = trains
            for r in trains:
                rows.append({"task": task, "impl": impl, "step": r["step"], "loss": r["loss"], "f": r.get("f"),
                             "accuracy": r.get("accuracy"), "step_s": per_step, "attn": attn,
                             "precision": prec})
        if len(curves) == 2:
            a, b = curves["triton"], curves["torch"]
            worst = max((abs(x["loss"] - y["loss"]) / max(abs(y["loss"]), 1e-6) for x, y in zip(a, b)), default=0.0)
            ratio = times["triton"] / times["torch"]
            ok = len(a) == len(b) and worst <= rtol
            rows.append({"task": task, "impl": "triton/torch", "loss": worst, "step_s": ratio,
                         "note": f"largest relative loss difference over {len(a)} steps (tolerance {rtol:g}): "
                                 f"{'agree' if ok else 'DISAGREE'}; step_s = ratio of the mean step times "
                                 "(training time / steps, the first step's compilation included)"})
            if not ok:
                failed.append(f"{task}: losses differ by {worst:.3g} relative (tolerance {rtol:g})")
    out = write_rows(args.csv, rows, COLUMNS)
    for msg in failed:
        print(msg, file=sys.stderr)
    print(f"train_compare: {'ok' if not failed else 'FAILED'} -> {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
