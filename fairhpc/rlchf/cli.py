"""The RLCHF commands: ``fairhpc personas``, ``candidates``, ``rank``, ``aggregate``, ``eval-groups``,
``rlchf-report`` (docs/rlchf.md)."""

from __future__ import annotations

import json

from fairhpc.errors import ConfigError


def _attrs(text: str | None) -> list[str]:
    return [a.strip() for a in (text or "").split(",") if a.strip()]


def _personas(args) -> int:
    from fairhpc.rlchf.personas import generate_personas, load_personas, sample_personas, write_personas

    personas, skipped = load_personas(args.source, args.bad_rows)
    if args.generate:
        if not args.model:
            raise ConfigError("--generate: give --model, the local causal LM that writes the new personas")
        new, empty = generate_personas(personas, args.generate, args.model, seed=args.seed,
                                       temperature=args.temperature, max_new_tokens=args.max_new_tokens,
                                       batch_size=args.batch_size)
        print(f"generated {len(new)} personas ({empty} empty generations dropped)")
        personas = new
    else:
        n = args.n if args.n is not None else len(personas)
        personas = sample_personas(personas, n, _attrs(args.stratify), args.seed)
    write_personas(args.out, personas)
    skip = f", skipped {dict(skipped)}" if skipped else ""
    print(f"{len(personas)} personas -> {args.out}{skip}")
    return 0


def _read_prompts(source: str, limit: int | None):
    from fairhpc.errors import DataError
    from fairhpc.sources import iter_rows

    out = []
    for where, row in iter_rows(source, "train"):
        if limit is not None and len(out) >= limit:
            break
        if row.get("prompt") is None:
            raise DataError(f"{where}: field 'prompt': missing", "missing_field")
        out.append({"id": str(row.get("id", where)), "prompt": row["prompt"], "category": row.get("category")})
    return out


def _candidates(args) -> int:
    from fairhpc.io import atomic_write_text
    from fairhpc.rlchf import judges as J

    given = [x for x in ("synthetic", "columns", "policy") if getattr(args, x) is not None]
    if len(given) != 1:
        raise ConfigError("give exactly one of --synthetic N, --columns A,B,C (with --data) and --policy MODEL")
    if args.synthetic is not None:
        rows = J.synthetic_candidates(args.synthetic, args.k, args.seed)
    elif args.columns is not None:
        if not args.data:
            raise ConfigError("--columns: give --data, the file whose columns hold the responses")
        rows = J.column_candidates(args.data, _attrs(args.columns), args.prompt_column, args.limit)
    else:
        if args.data:
            prompts = _read_prompts(args.data, args.limit)
        else:
            prompts = [{"id": r["id"], "prompt": r["prompt"], "category": r["category"]}
                       for r in J.synthetic_candidates(args.limit or 100, 3, args.seed)]
        rows, dropped = J.policy_candidates(prompts, args.policy, args.k, args.temperature, args.seed,
                                            args.batch_size, args.max_new_tokens)
        print(f"{dropped} prompts dropped: a sample was empty")
    atomic_write_text(args.out, "".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} prompts x {len(rows[0]['responses']) if rows else 0} candidates -> {args.out}")
    return 0


def _rank(args) -> int:
    from fairhpc.errors import DataError
    from fairhpc.rlchf import judges as J
    from fairhpc.rlchf.aggregate import run_rank
    from fairhpc.rlchf.personas import load_personas
    from fairhpc.sources import iter_rows

    personas, _ = load_personas(args.personas)
    if args.judge == "synthetic":
        judge = J.SyntheticJudge(args.seed, args.noise, args.group_by)
        judge.check_personas(personas, args.personas)
    else:
        judge = J.ModelJudge(args.judge, args.batch_size, args.max_new_tokens, args.temperature, args.seed,
                             max_prompt_length=args.max_prompt_length)
    rows = []
    for where, row in iter_rows(args.candidates, "train"):
        if args.limit is not None and len(rows) >= args.limit:
            break
        for key in ("id", "prompt", "responses"):
            if row.get(key) is None:
                raise DataError(f"{where}: field {key!r}: missing", "missing_field")
        if not isinstance(row["responses"], list) or len(row["responses"]) < 3:
            raise DataError(f"{where}: field 'responses': expected a list of K >= 3 responses")
        rows.append(row)
    stats = run_rank(rows, personas, judge, args.out, args.candidates)
    print(f"{stats['judgements']} judgements of {stats['prompts']} prompts: {stats['parsed']} parsed, refused "
          f"{stats['refused'] or 'none'} -> {args.out}")
    return 0


def _aggregate(args) -> int:
    from fairhpc.rlchf.aggregate import run_aggregate

    s = run_aggregate(args.rankings, args.swf, args.out, args.pairs, args.group_by, args.voter_weights,
                      args.judge, args.seed, args.bad_rows, args.kemeny_exact_max, args.kemeny_heuristic)
    print(f"{args.swf}: {s['kept']} prompts ({s['skipped'] or 'none skipped'}), {s['pairs']} pairs "
          f"{s['pairs_by_category']}, {s['exactness']}, index tie-breaks {s['index_ties']}; "
          + ("group agreement " + ", ".join(f"{g} {v:.3f}" for g, v in s["group_agreement"].items())
             if s["group_agreement"] else "groups: " + s["groups"]) + f" -> {args.out}")
    return 0


def _eval_groups(args) -> int:
    from fairhpc.rlchf.evaluate import run_eval_groups

    s = run_eval_groups(args.rankings, args.out, args.policy, args.reward_model, args.reference, args.group_by,
                        args.batch_size, args.device, args.bad_rows, args.limit)
    print(f"mean agreement {s['mean_agreement']:.4f}, worst group {s['worst_group']} "
          f"{s['worst_group_agreement']:.4f}: " + ", ".join(f"{g} {v['agreement']:.4f}" for g, v in s["groups"].items()))
    return 0


def _report(args) -> int:
    from fairhpc.rlchf.evaluate import comparison

    rows = comparison(args.evals, args.out)
    print(f"{len(rows)} runs -> {args.out}/comparison.md, comparison.csv, comparison.png")
    return 0


def add_commands(sub) -> None:
    from fairhpc.rlchf.aggregate import BASELINES, VOTER_WEIGHTS
    from fairhpc.rlchf.swf import KEMENY_EXACT_MAX, PAIR_POLICIES, SWFS

    p = sub.add_parser("personas", help="sample (stratified) or generate persona judges",
                       description="Write a persona JSONL file: N personas of SOURCE stratified by attributes, or "
                                   "(--generate) new persona texts written by a local model from seed personas.")
    p.add_argument("--source", default="builtin", help="persona JSONL file, or 'builtin' (default)")
    p.add_argument("--n", type=int, default=None, help="personas to sample (default: all)")
    p.add_argument("--stratify", default="", help="attributes to stratify by, comma-separated (e.g. sex,group)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--generate", type=int, default=0, metavar="N", help="generate N new personas with --model")
    p.add_argument("--model", default=None, help="local causal LM for --generate")
    p.add_argument("--temperature", type=float, default=0.9)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--bad-rows", choices=("error", "skip"), default="error")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_personas)

    p = sub.add_parser("candidates", help="K >= 3 candidate responses per prompt",
                       description="Candidates from synthetic prompts (--synthetic N), from a data file's "
                                   "columns (--data FILE --columns A,B,C, or one list column), or sampled from a "
                                   "policy (--policy MODEL, prompts from --data or synthetic).")
    p.add_argument("--synthetic", type=int, default=None, metavar="N")
    p.add_argument("--columns", default=None)
    p.add_argument("--policy", default=None)
    p.add_argument("--data", default=None)
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_candidates)

    p = sub.add_parser("rank", help="every persona judge ranks every prompt's candidates",
                       description="Rank candidates with persona judges: the synthetic judge (planted group "
                                   "preferences, offline) or a local transformers model prompted with each persona. "
                                   "Answers that cannot be parsed are counted by reason (OUT.stats.json).")
    p.add_argument("--candidates", required=True)
    p.add_argument("--personas", required=True)
    p.add_argument("--judge", default="synthetic", help="'synthetic' or a local causal LM directory / hub name")
    p.add_argument("--group-by", default="group", help="persona attribute of the synthetic judge's groups")
    p.add_argument("--noise", type=float, default=0.5, help="synthetic judge: Gumbel noise scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0, help="model judge: 0 = greedy")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--max-prompt-length", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_rank)

    p = sub.add_parser("aggregate", help="aggregate judge rankings with a social welfare function",
                       description="Aggregate each prompt's judge rankings into one ranking and write "
                                   "OUT/aggregated.jsonl, OUT/pairs.jsonl (preference pairs), OUT/sft.jsonl, "
                                   "OUT/summary.json.")
    p.add_argument("--swf", required=True, choices=SWFS + BASELINES)
    p.add_argument("--rankings", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--pairs", choices=PAIR_POLICIES, default="best-worst")
    p.add_argument("--group-by", default="group", help="persona attribute that defines the groups")
    p.add_argument("--voter-weights", choices=VOTER_WEIGHTS, default="uniform")
    p.add_argument("--judge", default=None, help="single-judge: the persona id (default: each row's first judge)")
    p.add_argument("--seed", type=int, default=0, help="majority-pair: which pair of candidates")
    p.add_argument("--bad-rows", choices=("error", "skip"), default="error")
    p.add_argument("--kemeny-exact-max", type=int, default=KEMENY_EXACT_MAX)
    p.add_argument("--kemeny-heuristic", action="store_true",
                   help="above --kemeny-exact-max candidates: local search (output says exact: false)")
    p.set_defaults(func=_aggregate)

    p = sub.add_parser("eval-groups", help="per persona group agreement of a trained policy or reward model",
                       description="Share of each persona group's held-out rankings that the model's scores "
                                   "(implicit DPO reward against the reference, or reward) agree with; min over groups.")
    p.add_argument("--rankings", required=True)
    p.add_argument("--policy", default=None)
    p.add_argument("--reward-model", default=None)
    p.add_argument("--reference", default=None, help="policy's reference (default: the run's own)")
    p.add_argument("--group-by", default="group")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--bad-rows", choices=("error", "skip"), default="error")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_eval_groups)

    p = sub.add_parser("rlchf-report", help="RLHF vs RLCHF comparison table and plot",
                       description="comparison.csv / .md and comparison.png (mean vs worst-group agreement) over "
                                   "the eval-groups directories of many runs.")
    p.add_argument("--evals", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_report)
