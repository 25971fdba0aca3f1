"""The ``fairhpc`` command.  Subcommands live next to their code: every module in COMMAND_MODULES
defines ``add_commands(subparsers)`` and each parser it adds sets ``func(args) -> exit code``.
User errors (:class:`fairhpc.errors.FairhpcError`) print ``fairhpc: <kind> error: <message>`` and exit 2."""

from __future__ import annotations

import argparse
import importlib
import sys

from fairhpc.errors import FairhpcError

COMMAND_MODULES = (
    "fairhpc.train",             # train-rm, train-dpo
    "fairhpc.synthetic",         # make-data
    "fairhpc.prepare",           # prepare-data
    "fairhpc.evaluation.cli",    # eval-rm, eval-benchmark, eval-policy, best-of-n
    "fairhpc.evaluation.bench_cli",  # alpaca-eval, mt-bench, lm-eval, policy-bench-*
    "fairhpc.report",            # report
    "fairhpc.online.cli",        # online-generate, online-score, online-pairs, online-eval, online-report
    "fairhpc.ops",               # build-ops
    "fairhpc.gridplan",          # grid-plan
    "fairhpc.hub",               # fetch-hub
    "fairhpc.rlchf.cli",         # personas, candidates, rank, aggregate, eval-groups, rlchf-report
    "fairhpc.pg.cli",            # pg-classifier, pg-report
    "fairhpc.armo.cli",          # armo-embed, armo-regress
    "fairhpc.rm_compare",        # report-rm-kinds
)


def _config_help(args) -> int:
    from fairhpc.config import fields_help

    rows = fields_help()
    if args.markdown:
        print("| key | type | default | meaning |\n|---|---|---|---|")
        for key, tp, default, help_ in rows:
            print(f"| `{key}` | {tp} | `{default!r}` | {help_.replace('|', '/')} |")
        return 0
    for key, tp, default, help_ in rows:
        print(f"{key:32s} {tp:6s} default={default!r:14s} {help_}")
    return 0


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line, like the other user errors (exit 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: usage error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fairhpc", description="Fairness-aware reward models and DPO "
                                     "policies (Fairness Regularization / Fairness Coefficient).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("config-help", help="list every run-config key with its default and help")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table (the README's reference)")
    p.set_defaults(func=_config_help)
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # a real missing dependency, not an absent optional command module
                raise
            continue
        mod.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FairhpcError as e:  # a user error: one line, exit 2; anything else keeps its traceback
        print(f"fairhpc: {e.kind} error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
