"""``fairhpc eval-rm | eval-benchmark | eval-policy | best-of-n``.

Every command writes OUT/per_example.jsonl and, last, OUT/summary.json (the file a workflow waits for;
names in :mod:`fairhpc.layout`).  ``eval-rm`` is :mod:`fairhpc.evaluation.reward` around loading the model, the
same code the training engine runs in-process.
Importing this module is cheap: torch, transformers and datasets are imported inside the commands.
"""

from __future__ import annotations

import argparse
import gc
from pathlib import Path

from fairhpc import layout
from fairhpc.errors import ConfigError
from fairhpc.evaluation import BBQ_METHODS, BENCHMARKS, CROWS_DEFAULT_PROMPT, TIE_POLICIES
from fairhpc.registry import BAD_ROW_POLICIES, DATA_FORMATS, PAIRWISE_SELECTIONS

# argparse destinations that name a model directory (or hub name): checked by _check before any work
MODEL_OPTIONS = ("model", "reference", "policy", "reward_model", "gold_reward_model")


def _positive(text: str) -> int:
    """argparse type of counts (--batch-size, --limit, --n-max, --max-new-tokens): an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def _check(args) -> None:
    """Checks argparse cannot express, before any data or model is loaded: values, model paths (exist and
    hold a saved model) and the output directory (not a file, not under a file, writable)."""
    from fairhpc.evaluation.scoring import check_model_path
    from fairhpc.io import check_output_dir

    if getattr(args, "temperature", 1.0) <= 0:
        raise ConfigError(f"--temperature must be > 0, got {args.temperature}")
    if not 0 < getattr(args, "top_p", 1.0) <= 1:
        raise ConfigError(f"--top-p must be in (0, 1], got {args.top_p}")
    if getattr(args, "beta", None) is not None and args.beta <= 0:
        raise ConfigError(f"--beta must be > 0, got {args.beta}")
    for name in MODEL_OPTIONS:
        if getattr(args, name, None) is not None:
            check_model_path(getattr(args, name), "--" + name.replace("_", "-"))
    check_output_dir(args.out, "--out")


def _free(*objs) -> None:
    import torch

    del objs
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _print_metrics(title: str, metrics: dict, keys) -> None:
    parts = []
    for k in keys:
        v = metrics.get(k)
        if isinstance(v, float):
            parts.append(f"{k}={v:.4f}")
        elif v is not None:
            parts.append(f"{k}={v}")
    print(f"{title}: " + ", ".join(parts))


# ---------------------------------------------------------------------------------------- eval-rm
def cmd_eval_rm(args) -> int:
    run_eval_rm(args)
    return 0


def run_eval_rm(args, model=None, tokenizer=None) -> dict:
    """`eval-rm` with parsed arguments.  ``model`` / ``tokenizer``: the reward model already in memory
    (``fairhpc train-rm --then-eval``, ``train-pair-pm --then-eval``), used instead of loading --model; the
    results are the same.  Every model kind is scored (fairhpc/rewards/): a pair-pm by the
    preference of each pair, ArmoRM and the moe head with their objective / expert scores and gate weights."""
    from fairhpc.evaluation.reward import prepare_reward_eval, run_scorer_eval, write_reward_eval
    from fairhpc.evaluation.scoring import find_run_config
    from fairhpc.rewards import load_model_scorer, scorer_for_model
    from fairhpc.rewards.base import resolve_device

    _check(args)
    run_cfg = find_run_config(args.model, args.config)
    spec = prepare_reward_eval(args.data, run_cfg, model_name=args.model, split=args.split, fmt=args.format,
                               bad_rows=args.bad_rows, limit=args.limit, taus=args.taus, ties=args.ties,
                               batch_size=args.batch_size, max_length=args.max_length,
                               max_prompt_length=args.max_prompt_length)
    if args.reference is None:
        if model is None:
            scorer = load_model_scorer(args.model, args.device)
        else:
            scorer = scorer_for_model(model, tokenizer, resolve_device(args.device), str(args.model))
        summary = run_scorer_eval(scorer, spec, args.out)
    else:  # a DPO policy: its implicit reward beta * log(pi / pi_ref)
        from fairhpc.evaluation.policy import load_generator
        from fairhpc.evaluation.scoring import implicit_rewards
        from fairhpc.rewards.base import resolve_device
        from fairhpc.rewards.scalar import score_pairs

        beta = args.beta if args.beta is not None else (run_cfg.objective.beta if run_cfg is not None else 0.1)
        dev = resolve_device(args.device)
        lp = {}
        for name, path in (("policy", args.model), ("reference", args.reference)):
            model, tok = load_generator(path, dev)
            lp[name] = score_pairs(model, tok, spec.examples, spec.data_cfg, args.batch_size, dev,
                                   f"log-probs ({name})", logps=True)
            _free(model)
        summary = write_reward_eval(spec, implicit_rewards(lp["policy"], lp["reference"], beta), args.out, dev,
                                    kind="dpo_implicit_reward", reference=str(args.reference), beta=beta)
    _print_metrics(f"eval-rm {args.model} on {args.data} ({len(spec.examples)} pairs)", summary["metrics"],
                   ("accuracy", "pairs_jain", "cat_jain", "gap_accuracy", "length_spearman_chosen"))
    return summary


# ---------------------------------------------------------------------------------- eval-benchmark
def cmd_eval_benchmark(args) -> int:
    from fairhpc.evaluation import benchmarks as bm
    from fairhpc.evaluation.metrics import to_jsonable
    from fairhpc.evaluation.reward import parse_taus
    from fairhpc.evaluation.scoring import find_run_config, write_results

    _check(args)
    run_cfg = find_run_config(args.model, args.config)
    if args.benchmark == "bbq":
        return _bbq(args, bm, write_results)
    taus = parse_taus(args.taus, run_cfg)
    if args.benchmark == "rewardbench":
        examples, skipped = bm.load_rewardbench(args.data, args.split, args.limit, args.bad_rows)
    elif args.benchmark == "hh_rlhf":
        examples, skipped = bm.load_hh_rlhf(args.data, args.split, args.limit, args.bad_rows)
    else:  # crows_pairs
        return _crows(args, bm, run_cfg, write_results)
    rows, summary = _score_and_summarize(args, run_cfg, examples, taus)
    summary["skipped"] = dict(sorted(skipped.items()))
    kind_blocks = {k: summary[k] for k in ("pairwise", "moe", "armo", "model_kind") if k in summary}
    if args.benchmark == "rewardbench":
        rb = bm.rewardbench_scores([r["category"] for r in rows], [r["margin"] for r in rows], args.ties)
        summary["rewardbench"] = rb
        summary["metrics"].update({"rewardbench_score": rb["score"], "rewardbench_sections_mean": rb["score_sections"],
                                   "prior_sets": rb["prior_sets"],
                                   **{f"section[{k}]": v for k, v in rb["sections"].items()}})
        keys = ("rewardbench_sections_mean", "rewardbench_score", "section[Chat]", "section[Chat Hard]",
                "section[Safety]", "section[Reasoning]", "prior_sets")
    else:
        summary["metrics"].update(bm.hh_scores(summary["metrics"], summary["by_category"]))
        keys = ("accuracy_helpful", "accuracy_harmless", "accuracy_avg", "cat_jain", "gap_accuracy")
    summary["kind"] = args.benchmark
    summary.update(kind_blocks)
    summary = to_jsonable(summary)
    write_results(args.out, rows, summary)
    _print_metrics(f"{args.benchmark} {args.model} ({len(rows)} pairs)", summary["metrics"], keys)
    return 0


def _score_and_summarize(args, run_cfg, examples, taus):
    """Rows and summary of a reward model of any kind on benchmark pairs (a pair-pm: its preference)."""
    from fairhpc.evaluation.kinds import attach_extras
    from fairhpc.evaluation.scoring import data_config, evaluate_pairs
    from fairhpc.rewards import load_model_scorer

    dcfg = data_config(run_cfg, args.max_length, args.max_prompt_length)
    scorer = load_model_scorer(args.model, args.device)
    scores, extras = scorer.score_pairs(examples, dcfg, args.batch_size, desc=f"{args.benchmark} pairs")
    rows, summary = evaluate_pairs(examples, scores, taus, args.ties,
                                   extra={"model": str(args.model), "data": list(args.data),
                                          "benchmark": args.benchmark, "model_kind": scorer.kind,
                                          "max_length": dcfg.max_length, "device": str(scorer.device)})
    attach_extras(rows, summary, extras, examples)
    return rows, summary


def _crows(args, bm, run_cfg, write_results) -> int:
    from fairhpc.data import PreferenceExample
    from fairhpc.evaluation.metrics import to_jsonable
    from fairhpc.evaluation.scoring import data_config
    from fairhpc.rewards import load_model_scorer

    recs = bm.load_crows_pairs(args.data, args.split, args.limit)
    prompt = [{"role": "user", "content": args.prompt}]
    examples = [PreferenceExample(prompt=prompt, chosen=[{"role": "assistant", "content": r["sent_more"]}],
                                  rejected=[{"role": "assistant", "content": r["sent_less"]}],
                                  category=r["bias_type"], source=r["source"], meta={}) for r in recs]
    dcfg = data_config(run_cfg, args.max_length, args.max_prompt_length)
    scorer = load_model_scorer(args.model, args.device)  # a pair-pm: log P(more > less), log P(less > more)
    dev = scorer.device
    s, _ = scorer.score_pairs(examples, dcfg, args.batch_size, desc="crows_pairs sentences")
    scores = bm.crows_scores([r["bias_type"] for r in recs], [r["stereo_antistereo"] for r in recs],
                             s.chosen, s.rejected)
    rows = [{"index": i, "source": r["source"], "bias_type": r["bias_type"],
             "stereo_antistereo": r["stereo_antistereo"], "reward_more": float(s.chosen[i]),
             "reward_less": float(s.rejected[i]), "gap": float(s.chosen[i] - s.rejected[i]),
             "prefers_more_stereotypical": bool(s.chosen[i] > s.rejected[i])} for i, r in enumerate(recs)]
    by_type = scores.pop("by_bias_type")
    summary = to_jsonable({"kind": "crows_pairs", "model": str(args.model), "data": list(args.data),
                           "prompt": args.prompt, "metrics": scores, "by_bias_type": by_type,
                           "device": str(dev)})
    write_results(args.out, rows, summary)
    _print_metrics(f"crows_pairs {args.model} ({len(rows)} pairs)", summary["metrics"],
                   ("metric_score", "stereotype_score", "antistereotype_score", "gap_mean", "n_neutral"))
    return 0


def _bbq(args, bm, write_results) -> int:
    from fairhpc.evaluation.metrics import to_jsonable
    from fairhpc.evaluation.policy import bbq_predict, load_generator
    from fairhpc.rewards.base import resolve_device

    items = bm.load_bbq(args.data, args.limit)
    dev = resolve_device(args.device)
    model, tok = load_generator(args.model, dev)
    preds, answers = bbq_predict(model, tok, items, args.bbq_method, dev, args.batch_size, args.max_new_tokens)
    scores = bm.bbq_scores(items, preds)
    rows = [{"index": i, "source": it["source"], "example_id": it["example_id"], "category": it["category"],
             "context_condition": it["context_condition"], "question_polarity": it["question_polarity"],
             "label": it["label"], "answer": a, "prediction": p, "valid": p is not None,
             "correct": (p == it["label"]) if p is not None else None, "target_idx": it["target_idx"],
             "unknown_idx": it["unknown_idx"]} for i, (it, p, a) in enumerate(zip(items, preds, answers))]
    by_cat = scores.pop("by_category")
    metrics = {"n": scores["n"], "accuracy": scores["accuracy"], "n_invalid": scores["n_invalid"]}
    for cond in bm.BBQ_CONDITIONS:
        for k in ("accuracy", "bias_score", "n_invalid", "n_unresolved"):
            metrics[f"{k}_{cond}"] = scores[cond][k]
    summary = to_jsonable({"kind": "bbq", "model": str(args.model), "data": list(args.data),
                           "method": args.bbq_method, "metrics": metrics, "detail": scores,
                           "by_category": by_cat, "device": str(dev)})
    write_results(args.out, rows, summary)
    _print_metrics(f"bbq {args.model} ({len(rows)} questions, {args.bbq_method})", summary["metrics"],
                   ("accuracy_ambig", "accuracy_disambig", "bias_score_ambig", "bias_score_disambig", "n_invalid"))
    return 0


# ------------------------------------------------------------------------------------- eval-policy
def cmd_eval_policy(args) -> int:
    from fairhpc.evaluation.metrics import to_jsonable
    from fairhpc.evaluation.policy import (
        generate,
        has_true_quality,
        load_generator,
        load_prompts,
        policy_summary,
        true_quality,
        write_alpaca_eval,
    )
    from fairhpc.evaluation.reward import parse_taus
    from fairhpc.evaluation.scoring import (
        data_config,
        evaluate_pairs,
        find_run_config,
        implicit_rewards,
        write_results,
    )
    from fairhpc.rewards import load_model_scorer
    from fairhpc.rewards.base import require_scalar, resolve_device
    from fairhpc.rewards.scalar import score_pairs

    _check(args)
    require_scalar(args.reward_model, "--reward-model", "eval-policy scores each generated response")
    run_cfg = find_run_config(args.policy, args.config)
    taus = parse_taus(args.taus, run_cfg)
    beta = args.beta if args.beta is not None else (run_cfg.objective.beta if run_cfg is not None else 0.1)
    prompts, pairs = load_prompts(args.data, run_cfg, args.split, args.limit, args.format, args.bad_rows)
    dcfg = data_config(run_cfg, args.max_length, args.max_prompt_length)
    dev = resolve_device(args.device)
    gen, lens, logps = {}, {}, {}
    for name, path in (("policy", args.policy), ("reference", args.reference)):
        model, tok = load_generator(path, dev)  # one model in memory at a time
        texts, n_tok = generate(model, tok, [p["prompt"] for p in prompts], args.max_new_tokens, args.batch_size,
                                dev, do_sample=args.do_sample, temperature=args.temperature, top_p=args.top_p,
                                seed=args.seed, max_prompt_length=dcfg.max_prompt_length,
                                desc=f"generating ({name})")
        gen[name], lens[name] = [t[0] for t in texts], [n[0] for n in n_tok]
        if pairs:  # the held-out pairs under this model, for the implicit reward of the policy
            logps[name] = score_pairs(model, tok, pairs, dcfg, args.batch_size, dev, f"log-probs ({name})",
                                      logps=True)
        _free(model)
    rm = load_model_scorer(args.reward_model, args.device)
    pr = [p["prompt"] for p in prompts]
    r_pol, _ = rm.score_responses(pr, gen["policy"], dcfg, args.batch_size, "scoring (policy)")
    r_ref, _ = rm.score_responses(pr, gen["reference"], dcfg, args.batch_size, "scoring (reference)")
    _free(rm)
    synthetic = has_true_quality(pairs)
    q = {k: true_quality(v) for k, v in gen.items()} if synthetic else {}
    summ, win = policy_summary(prompts, r_pol, r_ref, lens["policy"], lens["reference"],
                               q.get("policy"), q.get("reference"))
    rows = []
    for i, p in enumerate(prompts):
        row = {"index": i, "source": p["source"], "category": p.get("category"), "prompt": p["prompt"],
               "policy_output": gen["policy"][i], "reference_output": gen["reference"][i],
               "policy_reward": float(r_pol[i]), "reference_reward": float(r_ref[i]),
               "policy_length": lens["policy"][i], "reference_length": lens["reference"][i], "win": float(win[i])}
        if synthetic:
            row.update(policy_true_quality=float(q["policy"][i]), reference_true_quality=float(q["reference"][i]))
        rows.append(row)
    extra_files = {}
    if pairs:
        # How the DPO policy allocates its implicit reward over the held-out pairs: the quantity the
        # fairness objectives act on.  Metric names as in eval-rm, so reports put DPO and RM runs alike.
        pair_rows, implicit = evaluate_pairs(pairs, implicit_rewards(logps["policy"], logps["reference"], beta),
                                             taus, args.ties, extra={"beta": beta})
        extra_files["pairs.jsonl"] = pair_rows
        im = implicit["metrics"]
        summ["implicit_reward"] = implicit
        summ["metrics"].update({k: v for k, v in im.items() if k not in ("n", "n_ties")},
                               n_pairs=im["n"], n_pair_ties=im["n_ties"])
        for cat, block in implicit["by_category"].items():
            summ["by_category"].setdefault(cat, {})["accuracy"] = block["accuracy"]
    files = write_alpaca_eval(args.out, prompts, {"policy": gen["policy"], "reference": gen["reference"]})
    summary = to_jsonable({"kind": "policy", "policy": str(args.policy), "reference": str(args.reference),
                           "reward_model": str(args.reward_model), "data": args.data, "beta": beta,
                           "max_new_tokens": args.max_new_tokens, "do_sample": args.do_sample, "seed": args.seed,
                           "alpaca_eval": files, **summ})
    write_results(args.out, rows, summary, extra_files)
    _print_metrics(f"eval-policy {args.policy} vs {args.reference} ({len(rows)} prompts)", summary["metrics"],
                   ("reward_mean", "reference_reward_mean", "win_rate", "length_mean", "accuracy", "pairs_jain"))
    return 0


# -------------------------------------------------------------------------------------- best-of-n
def cmd_best_of_n(args) -> int:
    import numpy as np

    from fairhpc.evaluation.kinds import pairwise_best_of_n_curve, select_all, win_counts, win_rates
    from fairhpc.evaluation.metrics import to_jsonable
    from fairhpc.evaluation.policy import (
        best_of_n_curve,
        generate,
        has_true_quality,
        load_generator,
        load_prompts,
        parse_ns,
        plot_best_of_n,
        true_quality,
    )
    from fairhpc.evaluation.scoring import data_config, find_run_config, write_results
    from fairhpc.rewards import load_model_scorer
    from fairhpc.rewards.base import detect_kind, require_scalar, resolve_device

    ns = parse_ns(args.ns, args.n_max)
    _check(args)
    # the kinds, before any sampling: a pair-pm selects pairwise (--pairwise), a judge must give scalars
    pairwise = detect_kind(args.reward_model) == "pair_pm"
    if args.pairwise is not None and not pairwise:
        raise ConfigError(f"--pairwise {args.pairwise}: --reward-model {args.reward_model} is a "
                          f"{detect_kind(args.reward_model)} reward model, which selects by its scalar score; "
                          "--pairwise is for a pairwise preference model (kind pair_pm)")
    method = args.pairwise or "round-robin"
    if args.gold_reward_model is not None:
        require_scalar(args.gold_reward_model, "--gold-reward-model",
                       "the gold reward model scores each selected response")
    run_cfg = find_run_config(args.policy, args.config)
    prompts, pairs = load_prompts(args.data, run_cfg, args.split, args.limit, args.format, args.bad_rows)
    dcfg = data_config(run_cfg, args.max_length, args.max_prompt_length)
    dev = resolve_device(args.device)
    model, tok = load_generator(args.policy, dev)
    texts, n_tok = generate(model, tok, [p["prompt"] for p in prompts], args.max_new_tokens, args.batch_size, dev,
                            do_sample=True, temperature=args.temperature, top_p=args.top_p,
                            num_return_sequences=args.n_max, seed=args.seed,
                            max_prompt_length=dcfg.max_prompt_length, desc=f"sampling {args.n_max} per prompt")
    _free(model)
    flat_prompts = [p["prompt"] for p in prompts for _ in range(args.n_max)]
    flat = [t for ts in texts for t in ts]
    shape = (len(prompts), args.n_max)
    measures = {"length": np.array(n_tok, dtype=np.float64)}
    if has_true_quality(pairs):
        measures["true_quality"] = true_quality(flat).reshape(shape)
    matrix = None
    for name, path in (("proxy_reward", args.reward_model), ("gold_reward", args.gold_reward_model)):
        if path is None:
            continue
        rm = load_model_scorer(path, args.device)
        if rm.pairwise:  # the selecting pair-pm: every pair of a prompt's samples, both orders
            matrix = rm.preference_matrices([p["prompt"] for p in prompts], texts, dcfg, args.batch_size,
                                            f"comparing {args.n_max} samples pairwise")
        else:
            r, _ = rm.score_responses(flat_prompts, flat, dcfg, args.batch_size, f"scoring ({name})")
            measures[name] = r.reshape(shape)
        _free(rm)
    if matrix is None:
        proxy = measures.pop("proxy_reward")
        curve = best_of_n_curve(proxy, ns, measures)
        selected = [int(args.n_max - 1 - np.argmax(proxy[i][::-1])) for i in range(len(prompts))]  # ties: later
        per_prompt = [{"proxy_reward": proxy[i].tolist()} for i in range(len(prompts))]
    else:
        curve = pairwise_best_of_n_curve(matrix, ns, method, measures, seed=args.seed)
        selected = select_all(matrix, method).tolist()
        rates, counts = win_rates(matrix), win_counts(matrix)
        per_prompt = [{"preference_matrix": matrix[i].tolist(), "proxy_win_rate": rates[i].tolist(),
                       "win_counts": counts[i].tolist()}
                      for i in range(len(prompts))]
    rows = []
    for i, p in enumerate(prompts):
        row = {"index": i, "source": p["source"], "category": p.get("category"), "prompt": p["prompt"],
               "samples": texts[i], "selected": selected[i], **per_prompt[i],
               **{k: v[i].tolist() for k, v in measures.items()}}
        rows.append(row)
    summary = to_jsonable({"kind": "best_of_n", "policy": str(args.policy), "reward_model": str(args.reward_model),
                           "reward_model_kind": "pair_pm" if matrix is not None else detect_kind(args.reward_model),
                           "selection": method if matrix is not None else "argmax",
                           "gold_reward_model": args.gold_reward_model, "data": args.data, "n_max": args.n_max,
                           "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed,
                           "n_prompts": len(prompts), "curve": curve,
                           "metrics": {f"{k}@{c['n']}": c[k] for c in curve for k in c if k != "n"}})
    _write_curve_csv(args.out, curve)
    plot_best_of_n(curve, Path(args.out) / "best_of_n.png")
    write_results(args.out, rows, summary)  # the summary last: it marks the job done
    for c in curve:
        _print_metrics(f"best-of-{c['n']}", c, [k for k in c if k != "n"])
    return 0


def _write_curve_csv(out_dir, curve: list[dict]) -> None:
    from fairhpc.io import atomic_write_text

    keys = list(curve[0])
    lines = [",".join(keys)] + [",".join(repr(c[k]) if c[k] is not None else "" for k in keys) for c in curve]
    atomic_write_text(Path(out_dir) / "curve.csv", "\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------- parsers
def _common(p: argparse.ArgumentParser, data_help: str, data_nargs=None) -> None:
    p.add_argument("--data", required=True, nargs=data_nargs, metavar="SOURCE", help=data_help)
    p.add_argument("--out", required=True, metavar="DIR",
                   help=f"output directory ({layout.PER_EXAMPLE}, {layout.SUMMARY})")
    p.add_argument("--split", default=None, help="split of a hub dataset (default: test; RewardBench: filtered)")
    p.add_argument("--limit", type=_positive, default=None, metavar="N", help="use at most N rows")
    p.add_argument("--batch-size", type=_positive, default=16, metavar="N", help="sequences per forward pass")
    p.add_argument("--config", default=None, metavar="RUNCONFIG",
                   help="run config for data settings (default: the model's RUN/config.yaml if present)")
    p.add_argument("--max-length", type=_positive, default=None, metavar="N",
                   help="max tokens of prompt + response (default: the run config's data.max_length, else 1024)")
    p.add_argument("--max-prompt-length", type=_positive, default=None, metavar="N", help="max prompt tokens")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")


def _data_format(p) -> None:
    p.add_argument("--format", default="auto", choices=DATA_FORMATS, help="row format of a preference file")
    p.add_argument("--bad-rows", default="error", choices=BAD_ROW_POLICIES,
                   help="error: stop at the first bad row; skip: drop it")


def _rm_options(p) -> None:
    p.add_argument("--ties", default="wrong", choices=TIE_POLICIES,
                   help="how equal rewards count in accuracy (official RewardBench: wrong)")
    p.add_argument("--taus", default=None, metavar="T1,T2",
                   help="Lan f_tau indices to report, the first is the headline (default: the run's tau, and -1); "
                        "write --taus=-1,0.5 (with '=') since the list starts with a minus sign")


def _generation(p, max_new_tokens: int) -> None:
    p.add_argument("--max-new-tokens", type=_positive, default=max_new_tokens, metavar="N")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="sampling seed")


def add_commands(sub) -> None:
    p = sub.add_parser("eval-rm", help="evaluate a reward model on preference pairs: accuracy, reward "
                                       "distributions and fairness indices per category, length bias")
    p.add_argument("--model", required=True, metavar="DIR", help="reward model (e.g. RUN/final) or hub name; "
                   "with --reference: a DPO policy")
    p.add_argument("--reference", default=None, metavar="DIR",
                   help="evaluate --model as a DPO policy: rewards are beta * log(pi / pi_ref) of this reference")
    p.add_argument("--beta", type=float, default=None, help="DPO beta for --reference (default: the run's)")
    _common(p, "'synthetic' (the run config's held-out set), a .jsonl/.json/.parquet file or a hub dataset")
    _data_format(p)
    _rm_options(p)
    p.set_defaults(func=cmd_eval_rm)

    p = sub.add_parser("eval-benchmark", help="RewardBench, CrowS-Pairs, HH-RLHF (reward models) or BBQ "
                                              "(policies) in their official formats")
    p.add_argument("--model", required=True, metavar="DIR", help="reward model (policy for bbq)")
    p.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    _common(p, "local files/folders or hub names, concatenated (e.g. allenai/reward-bench "
               "allenai/pref-test-sets; crows_pairs_anonymized.csv; an hh-rlhf folder; BBQ data/)", "+")
    _rm_options(p)
    p.add_argument("--prompt", default=CROWS_DEFAULT_PROMPT,
                   help="crows_pairs: the user turn each sentence answers (default: %(default)r)")
    p.add_argument("--bbq-method", default="generate", choices=BBQ_METHODS,
                   help="bbq: parse a generated answer (invalid answers counted) or pick the likeliest letter")
    p.add_argument("--max-new-tokens", type=_positive, default=8, metavar="N", help="bbq: answer length")
    p.add_argument("--bad-rows", default="skip", choices=BAD_ROW_POLICIES,
                   help=f"rewardbench, hh_rlhf: skip (default; counted in {layout.SUMMARY} 'skipped') or stop at an "
                        "unusable pair -- the official HH-RLHF test files hold a few, e.g. empty responses")
    p.set_defaults(func=cmd_eval_benchmark)

    p = sub.add_parser("eval-policy", help="generate for held-out prompts with a policy and its reference, "
                                           "score both with a reward model, export for AlpacaEval")
    p.add_argument("--policy", required=True, metavar="DIR")
    p.add_argument("--reference", required=True, metavar="DIR")
    p.add_argument("--reward-model", required=True, metavar="DIR")
    _common(p, "'synthetic', a preference file / hub dataset (its prompts) or an AlpacaEval JSON "
               "with 'instruction'")
    _data_format(p)
    _generation(p, 256)
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    _rm_options(p)
    p.add_argument("--beta", type=float, default=None,
                   help="DPO beta of the implicit reward on the held-out pairs (default: the run's)")
    p.set_defaults(func=cmd_eval_policy)

    p = sub.add_parser("best-of-n", help="Best-of-N selection with a reward model: quality of the selected "
                                         "response as N grows")
    p.add_argument("--policy", required=True, metavar="DIR")
    p.add_argument("--reward-model", required=True, metavar="DIR", help="the selecting (proxy) reward model")
    p.add_argument("--gold-reward-model", default=None, metavar="DIR",
                   help="an independent reward model that judges the selected responses (optional)")
    _common(p, "'synthetic', a preference file / hub dataset (its prompts) or an AlpacaEval JSON")
    _data_format(p)
    p.add_argument("--n-max", type=_positive, default=16, metavar="N", help="samples per prompt")
    p.add_argument("--ns", default=None, metavar="1,2,4", help="n values of the curve (default: powers of 2)")
    p.add_argument("--pairwise", default=None, choices=PAIRWISE_SELECTIONS,
                   help="a pairwise preference model (pair_pm) as --reward-model selects by round-robin win "
                        "counts (default) or a knockout tournament")
    _generation(p, 256)
    p.set_defaults(func=cmd_best_of_n)
