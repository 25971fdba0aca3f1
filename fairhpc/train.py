"""The ``fairhpc train-<task>`` commands: one per registered task (fairhpc/tasks/; ``_`` in a task name is
written ``-``, e.g. train-pair-pm), all run by the engine (fairhpc/engine.py)."""

from __future__ import annotations

import argparse
import shlex

from fairhpc import registry
from fairhpc.engine import EXIT_PREEMPTED, Preempted


def _run(args, task: str) -> int:
    import torch.distributed as dist

    from fairhpc.config import load_config
    from fairhpc.engine import train

    cfg = load_config(args.config, args.overrides, task=task)  # validated before any model is built
    try:
        train(cfg, resume=args.resume, on_mismatch=args.on_mismatch, overwrite=args.overwrite,
              then_eval=shlex.split(args.then_eval) if getattr(args, "then_eval", None) else None)
    except Preempted as e:
        print(f"[fairhpc] {e}", flush=True)
        return EXIT_PREEMPTED
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def add_commands(sub) -> None:
    from fairhpc.tasks import get_task

    for task in registry.TASKS:
        what = get_task(task).description
        # command names spell a task's underscores as hyphens (train-pair-pm); the task's own name
        # (train-pair_pm, what the workflow's rule `train` runs) stays accepted as an alias
        name = f"train-{task.replace('_', '-')}"
        aliases = [f"train-{task}"] if name != f"train-{task}" else []
        p = sub.add_parser(name, aliases=aliases, help=f"train {what}",
                           description=f"Train {what} with DeepSpeed. Overrides are dotted keys, e.g. "
                                       "objective.mode=fr objective.tau=-1 train.zero_stage=3 "
                                       "(see `fairhpc config-help`).")
        p.add_argument("--config", help="YAML run config (defaults apply to missing keys)")
        p.add_argument("--resume", action="store_true",
                       help="continue from the latest checkpoint in output_dir/checkpoints (fresh if none)")
        p.add_argument("--on-mismatch", choices=("error", "restart"), default="error",
                       help="--resume of a run whose configuration or data changed: refuse (error) or move the "
                            "old run aside and start fresh (restart; what the workflow uses)")
        p.add_argument("--overwrite", action="store_true",
                       help="start fresh even if output_dir holds a run (the old one is moved aside, not deleted)")
        if task in registry.EVAL_IN_TRAINING:
            cmd = registry.EVAL_IN_TRAINING[task]
            p.add_argument("--then-eval", default=None, metavar="COMMAND",
                           help=f"after training, run this `fairhpc {cmd}` command (one quoted string, e.g. "
                                f"'{cmd} --model OUTPUT_DIR/final --data synthetic --out OUTPUT_DIR/eval') in "
                                "this process with the model it holds; checked before training starts")
        p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
        p.add_argument("overrides", nargs="*", metavar="key=value")
        p.set_defaults(func=lambda a, t=task: _run(a, t))
