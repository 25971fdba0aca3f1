"""The stages of one online iteration (``fairhpc online-generate | online-score | online-pairs | online-eval``)
as functions; fairhpc/online/plan.py says which files each reads and writes.

Rewards of a pairwise preference model: a pair-pm has no score per response, so its held-out "reward" of a
response is its log-odds over the initial policy's response to the same prompt (0 for the initial policy
itself), and its win rate is the share of those log-odds above 0 (ties count 1/2).  Held-out responses are
sampled (seeded, the loop's temperature and top-p), not greedy: a small policy's greedy decoding collapses
into one repeated token, whatever it was trained on.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from fairhpc import layout
from fairhpc.errors import ConfigError, DataError
from fairhpc.io import atomic_write_json, atomic_write_text, read_jsonl

SAMPLES, SCORES, PAIRS, SFT, PAIRS_STATS, RESPONSES = ("samples.jsonl", "scores.jsonl", "pairs.jsonl",
                                                         "sft.jsonl", "pairs_stats.json", "responses.jsonl")


def write_jsonl(path, rows) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def check_counts(k: int | None = None, iteration: int | None = None, iterations: int | None = None) -> None:
    if k is not None and k < 2:
        raise ConfigError(f"--k {k}: K >= 2 samples per prompt are needed to form a pair")
    if iterations is not None and iterations < 1:
        raise ConfigError(f"--iterations {iterations}: the loop needs N >= 1 iterations")
    if iteration is not None and iterations is not None and not 1 <= iteration <= iterations:
        raise ConfigError(f"--iteration {iteration}: must be in 1..{iterations}")


def _prompt_messages(row: dict, where: str) -> list[dict]:
    for key in ("prompt", "context_messages", "instruction"):
        v = row.get(key)
        if isinstance(v, str) and v.strip():
            return [{"role": "user", "content": v}]
        if isinstance(v, list) and v and all(isinstance(m, dict) and "role" in m and "content" in m for m in v):
            return [{"role": m["role"], "content": m["content"]} for m in v]
    raise DataError(f"{where}: no prompt: expected a non-empty 'prompt' (text or messages), "
                    "'context_messages' or 'instruction'")


def read_prompts(source: str, split: str | None = "train", limit: int | None = None) -> list[dict]:
    """Distinct prompts of a source, in order: rows with ``prompt`` (text or chat messages; preference
    files), ``context_messages`` (RLHFlow's iterative prompt sets) or ``instruction`` (AlpacaEval), each
    {"prompt": messages, "category"} (``category``, else ``dataset``, else None)."""
    from fairhpc.sources import iter_source

    seen, out = set(), []
    for r in iter_source(source, split):
        if r.error is not None:
            raise r.error
        if not isinstance(r.value, dict):
            raise DataError(f"{r.where}: expected an object")
        msgs = _prompt_messages(r.value, r.where)
        key = tuple((m["role"], m["content"]) for m in msgs)
        if key in seen:
            continue
        seen.add(key)
        out.append({"prompt": msgs, "category": r.value.get("category", r.value.get("dataset"))})
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise DataError(f"{source}: no prompts")
    return out


def prompt_shard(source: str, iteration: int, iterations: int, per_iteration: int | None = None,
                 split: str = "train") -> list[dict]:
    """Iteration i's prompts: rows (i-1)*P .. i*P-1 of the source's distinct prompts (P = per_iteration, or
    an equal share of all of them), each {"prompt_id", "prompt", "category"}."""
    check_counts(iteration=iteration, iterations=iterations)
    prompts = read_prompts(source, split, limit=per_iteration * iterations if per_iteration else None)
    n = len(prompts)
    per = per_iteration or n // iterations
    if per < 1 or per * iterations > n:
        raise DataError(f"{source}: {n} distinct prompts, but {iterations} iterations of "
                        f"{per_iteration or 'an equal share of'} prompts need {max(per, 1) * iterations}; "
                        "lower prompts_per_iteration or the iterations")
    lo = (iteration - 1) * per
    return [{"prompt_id": lo + j, "prompt": p["prompt"], "category": p.get("category")}
            for j, p in enumerate(prompts[lo:lo + per])]


def generate_stage(policy: str, prompts: str, iteration: int, iterations: int, k: int, temperature: float,
                   top_p: float, max_new_tokens: int, seed: int, out: str, engine: str = "hf", batch_size: int = 8,
                   per_iteration: int | None = None, max_prompt_length: int | None = None,
                   split: str = "train", device: str = "auto") -> dict:
    from fairhpc.online.generate import check_engine, sample

    check_counts(k, iteration, iterations)
    check_engine(engine, "--engine")
    check_policy(policy)
    shard = prompt_shard(prompts, iteration, iterations, per_iteration, split)
    texts, lengths = sample(policy, [p["prompt"] for p in shard], k, temperature, top_p, max_new_tokens, seed,
                            engine, batch_size, max_prompt_length, device)
    rows = [{**p, "responses": t, "lengths": n} for p, t, n in zip(shard, texts, lengths)]
    write_jsonl(out, rows)
    info = {"policy": str(policy), "prompts": prompts, "iteration": iteration, "n_prompts": len(rows), "k": k,
            "engine": engine, "seed": seed, "mean_length": float(np.mean([n for r in rows for n in r["lengths"]]))}
    atomic_write_json(f"{out}.json", info)
    return info


def check_policy(path: str, option: str = "--policy") -> None:
    from fairhpc.config import check_model_path
    from fairhpc.evaluation.scoring import check_model_role

    check_model_path(option, path)
    check_model_role(path, option, "policy")


def _data_cfg(reward_model: str):
    from fairhpc.evaluation.scoring import data_config, find_run_config

    return data_config(find_run_config(reward_model))


def _read_rows(path: str, option: str, maker: str, fields: tuple[str, ...] = ("prompt", "prompt_id", "responses"),
               either: tuple[str, ...] = ()) -> list[dict]:
    """The rows of a file an earlier stage wrote, each checked for the fields this stage reads (``either``:
    at least one of them), so a wrong file is named with its line before any model is loaded."""
    if not Path(path).is_file():
        raise DataError(f"{option} {path}: file not found (written by `fairhpc {maker}`)")
    try:
        rows = read_jsonl(path)
    except ValueError as e:
        raise DataError(f"{option} {e}") from None
    if not rows:
        raise DataError(f"{option} {path}: empty")
    for line, r in enumerate(rows, 1):
        missing = [f for f in fields if f not in r] if isinstance(r, dict) else list(fields)
        if not missing and either and not any(f in r for f in either):
            missing = [" or ".join(either)]
        if missing:
            raise DataError(f"{option} {path}: line {line}: no {', '.join(map(repr, missing))} "
                            f"(not a file written by `fairhpc {maker}`)")
        if not isinstance(r["responses"], list) or not all(isinstance(y, str) for y in r["responses"]):
            raise DataError(f"{option} {path}: line {line}: 'responses' must be a list of texts")
    return rows


def check_reward_model(path: str) -> None:
    from fairhpc.config import check_model_path
    from fairhpc.evaluation.scoring import check_model_role

    check_model_path("--reward-model", path)
    check_model_role(path, "--reward-model", "reward model")


def load_reward_model(path: str, device: str = "auto"):
    from fairhpc.rewards import load_model_scorer

    check_reward_model(path)
    return load_model_scorer(path, device, option="--reward-model")


def _pair_pm_compare(scorer, rows, data_cfg, batch_size):
    def compare(batch):
        if not batch:
            return []
        return scorer.compare([rows[p]["prompt"] for p, _, _ in batch],
                              [rows[p]["responses"][i] for p, i, _ in batch],
                              [rows[p]["responses"][j] for p, _, j in batch], data_cfg, batch_size,
                              desc="comparing")
    return compare


def score_stage(samples: str, reward_model: str, out: str, selection: str = "best_worst", batch_size: int = 16,
                seed: int = 0, device: str = "auto") -> dict:
    """Scalar kinds: every sample's reward.  pair_pm: the tournament's best and worst of each prompt, then
    the comparisons the selection needs (best vs worst / a random other / every other), all recorded."""
    from fairhpc.online.select import tournament, tournament_comparisons

    check_reward_model(reward_model)
    rows = _read_rows(samples, "--samples", "online-generate")
    scorer = load_reward_model(reward_model, device)
    data_cfg = _data_cfg(reward_model)
    info = {"reward_model": str(reward_model), "kind": scorer.kind, "n_prompts": len(rows)}
    if not scorer.pairwise:
        prompts = [r["prompt"] for r in rows for _ in r["responses"]]
        flat = [y for r in rows for y in r["responses"]]
        rewards, _ = scorer.score_responses(prompts, flat, data_cfg, batch_size, desc="scoring samples")
        at = 0
        for r in rows:
            r["rewards"] = [float(x) for x in rewards[at:at + len(r["responses"])]]
            at += len(r["responses"])
        info["forward_passes"] = len(flat)
    else:
        compare = _pair_pm_compare(scorer, rows, data_cfg, batch_size)
        ends, made = tournament([len(r["responses"]) for r in rows], compare)
        extra = []
        for p, ((best, worst), r) in enumerate(zip(ends, rows)):
            k = len(r["responses"])
            r["best"], r["worst"], r["tournament_comparisons"] = best, worst, made[p]
            if selection == "best_worst":
                others = [worst] if worst != best else []
            elif selection == "best_random":
                rest = [j for j in range(k) if j != best]
                others = [int(np.random.default_rng([seed, r["prompt_id"]]).choice(rest))]
            else:
                others = [j for j in range(k) if j != best]
            extra += [(p, best, j) for j in others]
        z = compare(extra)
        for r in rows:
            r["comparisons"] = []
        for (p, i, j), v in zip(extra, z):
            rows[p]["comparisons"].append([i, j, float(v)])
        n_cmp = sum(made) + len(extra)
        info.update(comparisons=n_cmp, tournament_comparisons=sum(made),
                    comparisons_per_prompt=n_cmp / len(rows), forward_passes=2 * n_cmp,
                    tournament_formula="ceil(3K/2) - 2 per prompt",
                    expected_tournament=sum(tournament_comparisons(len(r["responses"])) for r in rows))
    write_jsonl(out, rows)
    atomic_write_json(f"{out}.json", info)
    return info


def _pairwise_pairs(rows, margin):
    from fairhpc.online.select import keep_above_margin, pair_counts

    out, counts = [], pair_counts(len(rows))
    for p, r in enumerate(rows):
        cmp = r["comparisons"]
        if sum(1 for y in r["responses"] if y.strip()) < 2:
            continue
        if not cmp or all(z == 0 for _, _, z in cmp):
            counts["skipped_all_equal"] += 1
            continue
        pairs = [(p, i, j, z) for i, j, z in cmp if z > 0]
        counts["ties_dropped"] += len(cmp) - len(pairs)
        keep_above_margin(pairs, margin, out, counts)
    counts["pairs"] = len(out)
    return out, counts


def pairs_stage(scores: str, out_dir: str, selection: str = "best_worst", margin: float = 0.0,
                seed: int = 0) -> dict:
    """pairs.jsonl (chosen, rejected, category, margin) for DPO and sft.jsonl (each kept prompt's best
    response) for RAFT, plus pairs_stats.json with what was skipped and why."""
    from fairhpc.online.select import select_pairs

    rows = _read_rows(scores, "--scores", "online-score", either=("rewards", "comparisons"))
    if not math.isfinite(margin) or margin < 0:
        raise ConfigError(f"--margin {margin!r}: must be a finite number >= 0")
    # an empty response (EOS first) is no training target: it takes part in no pair
    keep = [[j for j, y in enumerate(r["responses"]) if y.strip()] for r in rows]
    if "rewards" in rows[0]:
        usable = [p for p, ks in enumerate(keep) if len(ks) >= 2]
        sel, counts = select_pairs([[rows[p]["rewards"][j] for j in keep[p]] for p in usable], selection, margin,
                                   seed, [rows[p]["prompt_id"] for p in usable])
        pairs = [(usable[q], keep[usable[q]][c], keep[usable[q]][j], g) for q, c, j, g in sel]
        counts["prompts"] = len(rows)
    else:
        for r, ks in zip(rows, keep):
            r["comparisons"] = [c for c in r["comparisons"] if c[0] in ks and c[1] in ks]
        usable = [p for p, ks in enumerate(keep) if len(ks) >= 2]
        pairs, counts = _pairwise_pairs(rows, margin)
    counts["skipped_empty"] = len(rows) - len(usable)
    counts["empty_responses"] = sum(len(r["responses"]) - len(ks) for r, ks in zip(rows, keep))
    if not pairs:
        raise DataError(f"{scores}: no preference pair left of {counts['prompts']} prompts "
                        f"(all rewards equal: {counts['skipped_all_equal']}, every gap below margin {margin}: "
                        f"{counts['skipped_margin']}, fewer than 2 non-empty responses: {counts['skipped_empty']}); lower pairs.margin or sample more (generate.k, temperature)")
    out = Path(out_dir)

    def msg(text):
        return [{"role": "assistant", "content": text}]

    write_jsonl(out / PAIRS, [{"prompt": rows[p]["prompt"], "chosen": msg(rows[p]["responses"][c]),
                               "rejected": msg(rows[p]["responses"][j]), "category": rows[p].get("category"),
                               "prompt_id": rows[p]["prompt_id"], "margin": g} for p, c, j, g in pairs])
    best = {}
    for p, c, _, _ in pairs:
        best.setdefault(p, c)
    write_jsonl(out / SFT, [{"prompt": rows[p]["prompt"], "completion": rows[p]["responses"][c],
                             "category": rows[p].get("category"), "prompt_id": rows[p]["prompt_id"]}
                            for p, c in sorted(best.items())])
    counts.update(selection=selection, margin=margin, mean_margin=float(np.mean([g for *_, g in pairs])))
    atomic_write_json(out / PAIRS_STATS, counts)
    return counts


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def fairness_by_category(rewards, categories, tau: float) -> dict:
    """Mean reward per category and the fairness of the allocation x_g = sigmoid(mean reward of g)."""
    from fairhpc.evaluation.metrics import gini_index, jain_index, lan_index

    by = {}
    for r, c in zip(rewards, categories):
        by.setdefault(str(c), []).append(float(r))
    means = {c: float(np.mean(v)) for c, v in sorted(by.items())}
    x = np.array([_sigmoid(m) for m in means.values()])
    out = {"reward_by_category": means, "n_by_category": {c: len(v) for c, v in sorted(by.items())}}
    if len(means) >= 2:
        worst = min(means, key=means.get)
        best = max(means, key=means.get)
        out.update(worst_category=worst, worst_category_reward=means[worst], best_category=best,
                   category_gap=means[best] - means[worst], f_category=float(lan_index(x, tau)),
                   jain_category=float(jain_index(x)), gini_category=float(gini_index(x)))
    return out


def eval_stage(policy: str, reward_model: str, prompts: str, out_dir: str, baseline: str | None = None,
               tau: float = -1.0, max_new_tokens: int = 64, batch_size: int = 16, limit: int | None = None,
               max_prompt_length: int | None = None, samples: int = 2, temperature: float = 1.0,
               top_p: float = 1.0, seed: int = 0, split: str = "test", device: str = "auto") -> dict:
    """``samples`` seeded samples of ``policy`` per held-out prompt, scored by the reward model (a prompt's
    reward: the mean over its samples); with ``baseline`` (the initial policy's eval directory) also the
    gain and win rate against its samples, sample j of a prompt against the initial policy's sample j."""
    from fairhpc.evaluation.policy import generate, load_generator

    if samples < 1:
        raise ConfigError(f"--samples {samples}: must be >= 1")
    check_policy(policy)
    check_reward_model(reward_model)
    base = None
    if baseline is not None:
        f = Path(baseline) / RESPONSES
        if not f.is_file():
            raise DataError(f"--baseline {baseline}: no {RESPONSES} (an online-eval directory of the initial policy)")
        base = read_jsonl(f)
    ps = read_prompts(prompts, split=split, limit=limit)
    if base is not None and (len(base) != len(ps) or any(len(b["responses"]) != samples for b in base)):
        raise DataError(f"--baseline {baseline}: its responses are not {samples} per prompt for the "
                        f"{len(ps)} held-out prompts of {prompts}; evaluate both with the same settings")
    scorer = load_reward_model(reward_model, device)
    model, tok = load_generator(policy, device)
    texts, lengths = generate(model, tok, [p["prompt"] for p in ps], max_new_tokens=max_new_tokens,
                              batch_size=batch_size, device=next(model.parameters()).device, do_sample=True,
                              temperature=temperature, top_p=top_p, num_return_sequences=samples, seed=seed,
                              max_prompt_length=max_prompt_length, desc="held-out samples")
    del model
    data_cfg = _data_cfg(reward_model)
    flat_p = [p["prompt"] for p in ps for _ in range(samples)]
    flat_y = [y for t in texts for y in t]
    if not scorer.pairwise:
        r, _ = scorer.score_responses(flat_p, flat_y, data_cfg, batch_size, desc="scoring")
        r = np.asarray(r, dtype=np.float64)
    elif base is None:
        r = np.zeros(len(flat_y))  # the initial policy against itself
    else:
        r = np.asarray(scorer.compare(flat_p, flat_y, [y for b in base for y in b["responses"]], data_cfg,
                                      batch_size, desc="comparing with the initial policy"), dtype=np.float64)
    r = r.reshape(len(ps), samples)
    cats = [p.get("category") for p in ps]
    rows = [{"prompt_id": j, "category": c, "responses": y, "lengths": n, "rewards": [float(x) for x in rr]}
            for j, (c, y, n, rr) in enumerate(zip(cats, texts, lengths, r))]
    per_prompt = r.mean(axis=1)
    summary = {"kind": "online_eval", "policy": str(policy), "reward_model": str(reward_model),
               "reward_model_kind": scorer.kind, "prompts": prompts, "n": len(rows), "samples": samples,
               "temperature": temperature, "top_p": top_p, "seed": seed,
               "reward_mean": float(per_prompt.mean()),
               "mean_length": float(np.mean([n for row in rows for n in row["lengths"]])),
               **fairness_by_category(per_prompt, cats, tau), "tau": tau}
    if base is not None:
        if scorer.pairwise:
            gain = r.mean(axis=1)
            win = ((r > 0) + 0.5 * (r == 0)).mean(axis=1)
        else:
            b = np.array([x["rewards"] for x in base], dtype=np.float64)
            gain = (r - b).mean(axis=1)
            win = ((r > b) + 0.5 * (r == b)).mean(axis=1)
        se = float(gain.std(ddof=1) / math.sqrt(len(gain))) if len(gain) > 1 else float("nan")
        summary.update(baseline=str(baseline), reward_gain=float(gain.mean()), reward_gain_se=se,
                       win_rate=float(win.mean()), improved=bool(gain.mean() > 0))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / RESPONSES, rows)
    atomic_write_json(out / layout.SUMMARY, summary)
    return summary
