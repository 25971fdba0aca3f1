"""``fairhpc online-generate | online-score | online-pairs | online-eval | online-report``: the stages of
online iterative DPO / RAFT (docs/online.md), one command per workflow job (rules/online.smk)."""

from __future__ import annotations

import os

from fairhpc import registry
from fairhpc.errors import ConfigError


def _positive(name):
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise ConfigError(f"{name} {text!r}: not a number") from None
        if not v > 0:
            raise ConfigError(f"{name} {text}: must be > 0")
        return v
    return parse


def _generate(args) -> int:
    from fairhpc.io import check_output_dir
    from fairhpc.online.stages import generate_stage

    if not 0 < args.top_p <= 1:
        raise ConfigError(f"--top-p {args.top_p}: must be in (0, 1]")
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens {args.max_new_tokens}: must be >= 1")
    check_output_dir(os.path.dirname(args.out) or ".", "--out")
    info = generate_stage(args.policy, args.prompts, args.iteration, args.iterations, args.k, args.temperature,
                          args.top_p, args.max_new_tokens, args.seed, args.out, args.engine, args.batch_size,
                          args.per_iteration, args.max_prompt_length, args.split, args.device)
    print(f"iteration {info['iteration']}: {info['k']} samples x {info['n_prompts']} prompts -> {args.out} "
          f"(mean length {info['mean_length']:.1f} tokens)")
    return 0


def _score(args) -> int:
    from fairhpc.online.stages import score_stage

    info = score_stage(args.samples, args.reward_model, args.out, args.selection, args.batch_size, args.seed,
                       args.device)
    extra = (f", {info['comparisons']} comparisons ({info['tournament_comparisons']} in the tournaments)"
             if "comparisons" in info else "")
    print(f"scored {info['n_prompts']} prompts with {info['kind']} {args.reward_model}{extra} -> {args.out}")
    return 0


def _pairs(args) -> int:
    from fairhpc.online.stages import pairs_stage

    c = pairs_stage(args.scores, args.out, args.selection, args.margin, args.seed)
    print(f"{c['pairs']} pairs from {c['prompts_with_pairs']} of {c['prompts']} prompts (all equal "
          f"{c['skipped_all_equal']}, below margin {c['skipped_margin']}) -> {args.out}")
    return 0


def _eval(args) -> int:
    from fairhpc.online.stages import eval_stage

    s = eval_stage(args.policy, args.reward_model, args.prompts, args.out, args.baseline, args.tau,
                   args.max_new_tokens, args.batch_size, args.limit, args.max_prompt_length, args.samples,
                   args.temperature, args.top_p, args.seed, args.split, args.device)
    vs = f", gain {s['reward_gain']:+.4f}, win rate {s['win_rate']:.3f}" if "win_rate" in s else ""
    print(f"held-out reward {s['reward_mean']:.4f} over {s['n']} prompts{vs} -> {args.out}")
    return 0


def _report(args) -> int:
    from fairhpc.online.report import report

    res = report(args.points, args.initial, args.out)
    print(f"online report of {len(res['rows'])} (point, iteration) rows -> {args.out}")
    return 0


def _count(name, low):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise ConfigError(f"{name} {text!r}: not a whole number") from None
        if v < low:
            raise ConfigError(f"{name} {v}: must be >= {low}")
        return v
    return parse


def add_commands(sub) -> None:
    p = sub.add_parser("online-generate", help="online DPO: K samples per prompt of an iteration's prompt shard",
                       description="Sample K responses per prompt of iteration i's shard of the prompts from a "
                                   "policy (HF generate, or vLLM with --engine vllm); docs/online.md.")
    p.add_argument("--policy", required=True, help="policy directory (policy i-1)")
    p.add_argument("--prompts", required=True, help="prompt source: a preference or prompt file, or hub dataset")
    p.add_argument("--iteration", type=_count("--iteration", 1), required=True)
    p.add_argument("--iterations", type=_count("--iterations", 1), required=True, help="N: the prompts are split "
                   "into N shards")
    p.add_argument("--per-iteration", type=_count("--per-iteration", 1), default=None,
                   help="prompts per iteration (default: an equal share)")
    p.add_argument("--k", type=int, default=4, help="samples per prompt (>= 2)")
    p.add_argument("--temperature", type=_positive("--temperature"), default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--max-prompt-length", type=_count("--max-prompt-length", 1), default=None)
    p.add_argument("--engine", choices=registry.GENERATE_ENGINES, default="hf")
    p.add_argument("--batch-size", type=_count("--batch-size", 1), default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train", help="split of a hub dataset")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="samples.jsonl to write")
    p.set_defaults(func=_generate)

    p = sub.add_parser("online-score", help="online DPO: score the samples with a reward model of any kind",
                       description="Rewards of every sample (scalar, moe, armo), or a pair-pm's tournament for "
                                   "the best and worst of each prompt (ceil(3K/2)-2 comparisons).")
    p.add_argument("--samples", required=True)
    p.add_argument("--reward-model", required=True)
    p.add_argument("--selection", choices=registry.PAIR_SELECTIONS, default="best_worst",
                   help="pair-pm: which comparisons besides the tournament are made")
    p.add_argument("--batch-size", type=_count("--batch-size", 1), default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="scores.jsonl to write")
    p.set_defaults(func=_score)

    p = sub.add_parser("online-pairs", help="online DPO: preference pairs (and RAFT targets) from the scores",
                       description="Best vs worst (or a random other, or every other) per prompt, the margin "
                                   "filter applied; writes pairs.jsonl, sft.jsonl and pairs_stats.json.")
    p.add_argument("--scores", required=True)
    p.add_argument("--selection", choices=registry.PAIR_SELECTIONS, default="best_worst")
    p.add_argument("--margin", type=float, default=0.0, help="drop pairs whose reward gap is below this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="directory")
    p.set_defaults(func=_pairs)

    p = sub.add_parser("online-eval", help="online DPO: held-out reward, win rate and fairness of a policy",
                       description="Greedy responses to the held-out prompts scored by the reward model; with "
                                   "--baseline the gain and win rate against the initial policy.")
    p.add_argument("--policy", required=True)
    p.add_argument("--reward-model", required=True)
    p.add_argument("--prompts", required=True)
    p.add_argument("--baseline", default=None, help="online-eval directory of the initial policy")
    p.add_argument("--tau", type=float, default=-1.0)
    p.add_argument("--max-new-tokens", type=_count("--max-new-tokens", 1), default=64)
    p.add_argument("--max-prompt-length", type=_count("--max-prompt-length", 1), default=None)
    p.add_argument("--batch-size", type=_count("--batch-size", 1), default=16)
    p.add_argument("--limit", type=_count("--limit", 1), default=None)
    p.add_argument("--samples", type=_count("--samples", 1), default=2, help="seeded samples per prompt")
    p.add_argument("--temperature", type=_positive("--temperature"), default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="test", help="split of a hub dataset")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_eval)

    p = sub.add_parser("online-report", help="online DPO: reward and fairness against iteration per mode",
                       description="Tables (md, csv) and one plot of held-out reward and fairness over the "
                                   "iterations, per mode with intervals over seeds.")
    p.add_argument("--points", nargs="+", required=True, help="point directories (holding iter<i>/eval/)")
    p.add_argument("--initial", required=True, help="online-eval directory of the initial policy")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_report)
