"""The policy-gradient commands: ``fairhpc pg-classifier`` (the synthetic task's reward classifier) and
``fairhpc pg-report`` (reward vs likelihood and the Pareto front across runs); docs/pg.md."""

from __future__ import annotations


def _classifier(args) -> int:
    from fairhpc.errors import ConfigError
    from fairhpc.pg.synthetic import train_classifier

    for key in ("steps", "batch_size"):
        if getattr(args, key) < 1:
            raise ConfigError(f"--{key.replace('_', '-')}: must be >= 1, got {getattr(args, key)}")
    if not args.lr > 0:
        raise ConfigError(f"--lr: must be > 0, got {args.lr}")
    s = train_classifier(args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    print(f"[fairhpc] classifier in {args.out}: held-out accuracy {s['heldout_accuracy']:.3f} "
          f"({s['train_time_s']:.0f} s)")
    return 0


def _report(args) -> int:
    from fairhpc.pg.report import report

    res = report(args.runs, args.out)
    on = [p["point"] for p in res["points"] if p["on_front"]]
    print(f"[fairhpc] {len(res['points'])} points, Pareto front: {', '.join(on)}; tables and plots in {args.out}")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("pg-classifier", help="train the synthetic policy-gradient task's reward classifier",
                       description="Train a tiny sequence classifier (labels other / planted) that detects the "
                                   "planted attribute of the synthetic task (a quality word in the response); "
                                   "use it as pg.reward_model with pg.target_label: planted.")
    p.add_argument("--out", required=True, help="model directory to write (transformers format + summary.json)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_classifier)
    p = sub.add_parser("pg-report", help="reward vs likelihood and the Pareto front of train-pg runs",
                       description="Tables and plots of train-pg runs: held-out mean reward against mean "
                                   "log-likelihood under the behaviour model, the Pareto front, hypervolume per "
                                   "(algo, dropout), and both along training.")
    p.add_argument("--runs", nargs="+", required=True, help="train-pg run directories")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=_report)
