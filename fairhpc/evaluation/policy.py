"""Policy evaluation: batched generation, reward-model scoring, win rate, AlpacaEval export, Best-of-N,
and BBQ answers.

eval-policy   greedy (or sampled) responses of the policy and of the reference policy to held-out
              prompts, both scored by one reward model: mean reward, per category, output length,
              win rate of the policy against the reference by that RM (a tie counts half); the
              generations are also exported in AlpacaEval's input format (a JSON list of
              {"instruction", "output", "generator", "dataset"}) for its judge, which is not run here.
best-of-n     N samples per prompt, the one with the highest reward (proxy RM) is selected; the curve
              reports the expected reward of the selected response for every n <= N (unbiased: the
              order-statistics estimator over all n-subsets of the N samples), optionally under a
              second, "gold" reward model, with the analytic KL bound log n - (n - 1) / n.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from fairhpc.errors import ConfigError, DataError
from fairhpc.evaluation.metrics import describe, spearman, to_jsonable


def load_generator(path: str, device="auto"):
    """(causal LM in eval mode on ``device`` ("auto", "cpu", a torch.device, ...), its tokenizer)."""
    from fairhpc.models import load_policy
    from fairhpc.rewards.base import eval_dtype, load_tokenizer_for, resolve_device

    device = resolve_device(device) if isinstance(device, str) else device
    tok = load_tokenizer_for(path)
    model = load_policy(str(path), dtype=eval_dtype(device), tokenizer=tok).to(device).eval()
    return model, tok


def generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 256, batch_size: int = 8,
             device=None, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
             num_return_sequences: int = 1, seed: int = 0, max_prompt_length: int | None = None,
             desc: str = "generating") -> tuple[list[list[str]], list[list[int]]]:
    """Responses to chat prompts: ([P][K] texts, [P][K] generated token counts), K = num_return_sequences.

    Prompts are rendered with the chat template (generation prompt appended), left-padded and, when
    ``max_prompt_length`` is set, cut on the left.  A response ends at EOS or after max_new_tokens.
    Sampling is seeded, so a rerun gives the same samples on the same device.
    """
    import torch
    from tqdm.auto import tqdm

    from fairhpc.data import render_messages

    if max_new_tokens < 1 or batch_size < 1 or num_return_sequences < 1:
        raise ValueError("max_new_tokens, batch_size and num_return_sequences must be >= 1")
    device = device or torch.device("cpu")
    texts = [render_messages(tokenizer, p, add_generation_prompt=True) for p in prompts]
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    out_text: list[list[str]] = [None] * len(texts)  # type: ignore[list-item]
    out_len: list[list[int]] = [None] * len(texts)   # type: ignore[list-item]
    torch.manual_seed(seed)
    saved = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", disable=not order):
                idx = order[start:start + batch_size]
                enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                                add_special_tokens=False, truncation=max_prompt_length is not None,
                                max_length=max_prompt_length)
                gen_kwargs = {"max_new_tokens": max_new_tokens, "do_sample": do_sample, "pad_token_id": pad,
                              "eos_token_id": eos, "num_return_sequences": num_return_sequences}
                if do_sample:
                    gen_kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
                seqs = model.generate(input_ids=enc["input_ids"].to(device),
                                      attention_mask=enc["attention_mask"].to(device), **gen_kwargs)
                new = seqs[:, enc["input_ids"].shape[1]:].cpu()
                for j, i in enumerate(idx):
                    rows = new[j * num_return_sequences:(j + 1) * num_return_sequences]
                    out_text[i] = [tokenizer.decode(_until_eos(r, eos, pad), skip_special_tokens=True).strip()
                                   for r in rows]
                    out_len[i] = [len(_until_eos(r, eos, pad)) for r in rows]
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = saved
    return out_text, out_len


def _until_eos(row, eos: int | None, pad: int | None) -> list[int]:
    """Generated ids up to (not including) the first EOS; trailing padding of finished rows removed."""
    toks = row.tolist()
    if eos is not None and eos in toks:
        toks = toks[:toks.index(eos)]
    while toks and pad is not None and toks[-1] == pad:
        toks.pop()
    return toks


# -------------------------------------------------------------------------------------- prompts
def load_prompts(source: str, run_cfg=None, split: str | None = None, limit: int | None = None,
                 fmt: str = "auto", bad_rows: str = "error") -> tuple[list[dict], list | None]:
    """(distinct prompts {"prompt": messages, "category", "source"}, the preference pairs they come from).

    Sources: "synthetic" (the run config's held-out pairs), any preference file / hub dataset (the prompts
    of its pairs, first occurrence kept; ``limit`` counts prompts), or an AlpacaEval-style JSON/JSONL whose
    rows have an "instruction" (optionally "dataset"); the latter has no pairs (None).
    """
    from fairhpc.sources import is_local_path, iter_rows

    if source != "synthetic" and is_local_path(source):
        first = next(iter(iter_rows(source)), None)
        if first is not None and "instruction" in first[1] and "chosen" not in first[1]:
            out = []
            for where, row in iter_rows(source):
                inst = row.get("instruction")
                if not isinstance(inst, str) or not inst.strip():
                    raise DataError(f"{where}: field 'instruction': expected a non-empty string, got {inst!r:.60}")
                out.append({"prompt": [{"role": "user", "content": inst}], "category": row.get("dataset"),
                            "source": where})
                if limit is not None and len(out) >= limit:
                    break
            return out, None
    from fairhpc.evaluation.scoring import load_examples

    seen, out, pairs = set(), [], []
    for ex in load_examples(source, run_cfg, split, fmt, bad_rows)[0]:
        key = tuple((m["role"], m["content"]) for m in ex.prompt)
        if key not in seen:
            if limit is not None and len(out) >= limit:
                break
            seen.add(key)
            out.append({"prompt": ex.prompt, "category": ex.category, "source": ex.source})
        pairs.append(ex)
    return out, pairs


def has_true_quality(examples) -> bool:
    """Whether pairs carry the synthetic generator's ground truth (then outputs get a true quality)."""
    return bool(examples) and all("quality_chosen" in ex.meta for ex in examples)


def instruction_text(prompt: list[dict]) -> str:
    """AlpacaEval's "instruction": the user turn of a one-turn prompt, else the transcript."""
    if len(prompt) == 1:
        return prompt[0]["content"]
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def alpaca_eval_records(prompts: list[dict], outputs: list[str], generator: str) -> list[dict]:
    return [{"instruction": instruction_text(p["prompt"]), "output": o, "generator": generator,
             "dataset": p.get("category") or "fairhpc"} for p, o in zip(prompts, outputs)]


# ------------------------------------------------------------------------------------- eval-policy
def policy_summary(prompts: list[dict], r_pol, r_ref, len_pol, len_ref, q_pol=None, q_ref=None) -> tuple[dict, np.ndarray]:
    """Summary of a policy vs its reference, both scored by one RM, and the per-prompt win (1, 0.5, 0).

    len_*: output lengths in generated tokens; q_*: true qualities (synthetic prompts only)."""
    r_pol, r_ref = np.asarray(r_pol, dtype=np.float64), np.asarray(r_ref, dtype=np.float64)
    len_pol, len_ref = np.asarray(len_pol, dtype=np.float64), np.asarray(len_ref, dtype=np.float64)
    win = np.where(r_pol > r_ref, 1.0, np.where(r_pol < r_ref, 0.0, 0.5))  # a tie counts half
    cats = np.asarray([p.get("category") or "all" for p in prompts], dtype=object)

    def block(m) -> dict:
        return {"n": int(m.sum()), "reward_mean": float(r_pol[m].mean()),
                "reference_reward_mean": float(r_ref[m].mean()),
                "reward_gain": float((r_pol[m] - r_ref[m]).mean()), "win_rate": float(win[m].mean()),
                "length_mean": float(len_pol[m].mean()), "reference_length_mean": float(len_ref[m].mean())}

    allm = np.ones(len(prompts), dtype=bool)
    metrics = {**block(allm), "n_ties": int(np.sum(r_pol == r_ref)),
               "length_spearman": spearman(r_pol, len_pol),
               "reference_length_spearman": spearman(r_ref, len_ref)}
    if q_pol is not None and q_ref is not None:
        metrics["true_quality_mean"] = float(np.mean(q_pol))
        metrics["reference_true_quality_mean"] = float(np.mean(q_ref))
    by_cat = {c: block(cats == c) for c in sorted(set(cats.tolist()))}
    return to_jsonable({"metrics": metrics, "by_category": by_cat,
                        "reward": describe(r_pol), "reference_reward": describe(r_ref)}), win


# ---------------------------------------------------------------------------------------- Best-of-N
def best_of_n_weights(k: int, n: int) -> np.ndarray:
    """[k] probability that the j-th smallest of k scores is the maximum of a uniformly random
    n-subset: C(j - 1, n - 1) / C(k, n) (j = 1..k).  Sums to 1."""
    if not 1 <= n <= k:
        raise ValueError(f"best-of-n needs 1 <= n <= k, got n={n}, k={k}")
    return np.array([math.comb(j - 1, n - 1) for j in range(1, k + 1)], dtype=np.float64) / math.comb(k, n)


def best_of_n_curve(proxy, ns, others: dict | None = None) -> list[dict]:
    """Expected quality of the best-of-n response, for each n in ns, averaged over prompts.

    proxy: [P, K] rewards of the selecting RM; others: {name: [P, K]} further measures of the same
    samples (a gold RM's reward, the length, the synthetic true quality), reported for the selected
    response.  Selection is argmax of proxy (ties: the later sample, a stable ascending sort).  The
    estimate averages over all n-subsets of the K samples (exact order statistics), not over one subset.
    """
    proxy = np.asarray(proxy, dtype=np.float64)
    if proxy.ndim != 2:
        raise ValueError(f"proxy rewards must be [prompts, samples], got shape {proxy.shape}")
    k = proxy.shape[1]
    order = np.argsort(proxy, axis=1, kind="stable")

    def expect(values, w):
        v = np.take_along_axis(np.asarray(values, dtype=np.float64), order, axis=1)
        return float((v @ w).mean())

    out = []
    for n in ns:
        w = best_of_n_weights(k, n)
        row = {"n": int(n), "proxy_reward": expect(proxy, w), "kl_bound": math.log(n) - (n - 1) / n}
        for name, values in (others or {}).items():
            row[name] = expect(values, w)
        out.append(row)
    return out


def plot_best_of_n(curve: list[dict], path) -> None:
    """best_of_n.png: each measure of the selected response against n (log scale), KL bound on top."""
    from matplotlib.ticker import NullLocator

    from fairhpc.report import pyplot, save_png

    plt = pyplot()
    measures = [k for k in curve[0] if k not in ("n", "kl_bound")]
    fig, axes = plt.subplots(1, len(measures), figsize=(4 * len(measures), 3.6), squeeze=False)
    ns = [c["n"] for c in curve]
    for ax, key in zip(axes[0], measures):
        ax.plot(ns, [c[key] for c in curve], marker="o")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_xlabel("n (samples per prompt)")
        ax.set_title(key.replace("_", " "), fontsize=10)
        ax.grid(alpha=0.3)
        top = ax.secondary_xaxis("top", functions=(lambda x: x, lambda x: x))
        top.set_xticks(ns, [f"{c['kl_bound']:.2f}" for c in curve], fontsize=7)
        for axis in (ax.xaxis, top.xaxis):
            axis.set_minor_locator(NullLocator())
        top.set_xlabel("KL bound log n - (n-1)/n", fontsize=8)
    fig.suptitle("Best-of-n: the selected response as n grows (selection by the proxy reward model)")
    fig.tight_layout()
    save_png(fig, Path(path))
    plt.close(fig)


def true_quality(texts: list[str]) -> np.ndarray:
    """Synthetic data's ground truth of free text: quality words minus flaw words (fairhpc.synthetic)."""
    from fairhpc.synthetic import word_counts

    return np.array([float(g - f) for g, f, _ in (word_counts(t) for t in texts)])


def parse_ns(text: str | None, n_max: int) -> list[int]:
    """"1,2,4" -> [1, 2, 4]; None -> powers of two up to n_max, and n_max."""
    if text:
        try:
            ns = sorted({int(x) for x in text.split(",") if x.strip()})
        except ValueError:
            raise ConfigError(f"--ns {text!r}: expected comma-separated integers, e.g. 1,2,4,8") from None
    else:
        ns = sorted({2 ** i for i in range(int(math.log2(n_max)) + 1)} | {n_max})
    bad = [n for n in ns if not 1 <= n <= n_max]
    if bad or not ns:
        raise ConfigError(f"--ns: every n must be in 1..{n_max} (--n-max), got {bad or ns}")
    return ns


# --------------------------------------------------------------------------------------------- BBQ
def bbq_predict(model, tokenizer, items: list[dict], method: str, device, batch_size: int = 8,
                max_new_tokens: int = 8) -> tuple[list[int | None], list[str]]:
    """The option each BBQ item's answer picks (None = invalid) and the raw answers.

    generate: greedy answer, parsed by :func:`benchmarks.parse_bbq_answer` (invalid answers possible);
    loglik: the letter (A/B/C) with the highest log-probability as the assistant's reply (never invalid).
    """
    from fairhpc.evaluation import BBQ_METHODS
    from fairhpc.evaluation.benchmarks import BBQ_LETTERS, bbq_prompt, parse_bbq_answer

    if method not in BBQ_METHODS:
        raise ValueError(f"--bbq-method: unknown method {method!r}; allowed: {', '.join(BBQ_METHODS)}")
    prompts = [bbq_prompt(it) for it in items]
    if method == "generate":
        texts, _ = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                            device=device, desc="BBQ answers")
        answers = [t[0] for t in texts]
        return [parse_bbq_answer(a, it) for a, it in zip(answers, items)], answers
    lp = letter_logprobs(model, tokenizer, prompts, BBQ_LETTERS, device, batch_size)
    preds = [int(np.argmax(row)) for row in lp]
    return preds, [BBQ_LETTERS[p] for p in preds]


def letter_logprobs(model, tokenizer, prompts: list[list[dict]], options, device, batch_size: int = 8):
    """[P, len(options)] log pi(option | prompt) with each option as the assistant's whole reply."""
    import torch
    from tqdm.auto import tqdm

    from fairhpc.config import DataConfig
    from fairhpc.data import PreferenceExample, tokenize_example
    from fairhpc.models import sequence_logps

    cfg = DataConfig(max_length=2048, max_prompt_length=2000)
    seqs = []
    for p in prompts:
        for o in options:
            ex = PreferenceExample(prompt=p, chosen=[{"role": "assistant", "content": o}],
                                   rejected=[{"role": "assistant", "content": o}], category=None,
                                   source="bbq", meta={})
            t = tokenize_example(ex, tokenizer, cfg.max_length, cfg.max_prompt_length, cfg.truncation_side)
            seqs.append((t["chosen_input_ids"], t["chosen_labels"]))
    out = np.empty(len(seqs), dtype=np.float64)
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        for start in tqdm(range(0, len(seqs), batch_size), desc="BBQ log-probs", unit="batch"):
            chunk = seqs[start:start + batch_size]
            width = max(len(s) for s, _ in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, (s, lab) in enumerate(chunk):
                ids[r, :len(s)] = torch.as_tensor(s)
                labels[r, :len(lab)] = torch.as_tensor(lab)
                mask[r, :len(s)] = 1
            out[start:start + len(chunk)] = sequence_logps(model, ids.to(device), mask.to(device),
                                                           labels.to(device)).double().cpu().numpy()
    return out.reshape(len(prompts), len(options))


def write_alpaca_eval(out_dir: Path, prompts, outputs: dict[str, list[str]]) -> dict[str, str]:
    """alpaca_eval/<name>.json for each generator: a JSON list AlpacaEval reads as model outputs."""
    from fairhpc.io import atomic_write_json

    files = {}
    for name, outs in outputs.items():
        path = Path(out_dir) / "alpaca_eval" / f"{name}.json"
        atomic_write_json(path, alpaca_eval_records(prompts, outs, name))
        files[name] = str(path)
    return files
