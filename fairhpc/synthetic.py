"""Synthetic preference pairs with planted, known biases (CPU-sized; used by tests and the demo).

Generative model of one pair (all draws from ``random.Random(seed)``, so rows are a pure function of
``(n, seed, length_bias)``):

1. Category ``c`` uniform over :data:`CATEGORIES`.  Categories differ only in the *size of the true quality
   gap* between the two responses of a pair (:data:`QUALITY_GAP`):

       helpful  gap 3  (easy:  large true margins)
       harmless gap 2  (in between)
       honest   gap 1  (hard:  small true margins)

   The prompt is one user message built from the category's topic words.
2. Two responses A, B.  True qualities ``q_A = q0``, ``q_B = q0 + gap(c)`` with ``q0`` uniform in
   ``[-2, MAX_QUALITY - gap(c)]`` (which of the two is shown first is irrelevant: the label decides).
   A response of quality ``q`` contains ``n_good`` words from :data:`QUALITY_WORDS` and ``n_flaw`` words
   from :data:`FLAW_WORDS` with ``n_good - n_flaw = q`` (``min(n_good, n_flaw)`` uniform in {0, 1}), so
   quality is a sum of per-word contributions (+1 per quality word, -1 per flaw word) a small model can learn.
3. Lengths.  Each response has ``L`` words, ``L`` uniform in ``[MIN_WORDS, MAX_WORDS]`` independently of its
   quality; the slots not taken by quality/flaw words are filler words (neutral).  Length carries no
   information about quality.
4. Label (Bradley-Terry on true quality plus the planted length bias):

       P(B preferred over A) = sigmoid((q_B - q_A) + length_bias * LENGTH_WEIGHT * (L_B - L_A))

   and the preferred response becomes ``chosen``.  With ``length_bias > 0`` longer responses win more often
   at equal quality, i.e. the labels reward length although length is unrelated to quality.

Every row carries its ground truth: ``quality_chosen``, ``quality_rejected``, ``length_chosen``,
``length_rejected`` (words) and ``p_chosen`` = the model's probability of the label that was drawn.  The
Bayes-optimal predictor of the label picks the response with ``p > 1/2``; its expected accuracy is
``mean(max(p_chosen, 1 - p_chosen))`` (:func:`oracle_accuracy`).  Per category it is about
sigmoid(gap): 0.95 / 0.88 / 0.73 without length bias, so a reward model that fits the data is necessarily
less accurate on "honest" than on "helpful": the unfairness the fairness objectives act on.

Splits: ``train`` is ``generate_pairs(n_train, seed)``, ``eval`` is ``generate_pairs(n_eval, seed + 1)``
(:func:`split_seed`); ``fairhpc make-data`` writes exactly these rows to train.jsonl / eval.jsonl.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

CATEGORIES = ("helpful", "harmless", "honest")
QUALITY_GAP = {"helpful": 3, "harmless": 2, "honest": 1}   # |q_chosen - q_rejected| of every pair
MAX_QUALITY = 4          # qualities lie in [-2, 4]
MIN_WORDS, MAX_WORDS = 8, 16   # response length in words (uniform, independent of quality)
LENGTH_WEIGHT = 0.25     # Bradley-Terry logit per extra word when length_bias = 1

QUALITY_WORDS = ("clear", "correct", "precise", "useful", "accurate", "thorough", "careful", "relevant",
                 "polite", "safe", "honest", "concrete")
FLAW_WORDS = ("wrong", "vague", "rude", "unsafe", "false", "sloppy", "confusing", "irrelevant", "careless",
              "misleading", "lazy", "broken")
FILLER_WORDS = ("the", "a", "and", "so", "then", "it", "is", "that", "well", "also", "here", "some", "this",
                "of", "to", "about")
TOPICS = {
    "helpful": ("recipe", "garden", "budget", "email", "resume", "travel", "workout", "schedule", "essay",
                "spreadsheet"),
    "harmless": ("medicine", "chemicals", "lock", "password", "weapon", "argument", "prank", "stranger",
                 "fireworks", "diet"),
    "honest": ("history", "planet", "vaccine", "election", "statistic", "quote", "law", "climate", "myth",
               "study"),
}
PROMPT_OPENERS = ("please help with my", "can you explain the", "tell me about the",
                  "what should i do with the", "give advice on the")
PROMPT_LINKS = ("and", "or", "for", "with")

GROUND_TRUTH_COLUMNS = ("quality_chosen", "quality_rejected", "length_chosen", "length_rejected", "p_chosen")


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def split_seed(seed: int, split: str) -> int:
    """Seed of a split: train uses ``seed``, eval ``seed + 1`` (independent pairs)."""
    if split not in ("train", "eval"):
        raise ValueError(f"unknown synthetic split {split!r}; allowed: train, eval")
    return seed if split == "train" else seed + 1


def vocabulary() -> list[str]:
    """Every word the generator can emit (the built-in tokenizer is trained on these)."""
    words = [*QUALITY_WORDS, *FLAW_WORDS, *FILLER_WORDS, *PROMPT_LINKS, "?"]
    for t in TOPICS.values():
        words += t
    for o in PROMPT_OPENERS:
        words += o.split()
    return sorted(set(words))


def _response(rng: random.Random, quality: int, length: int) -> str:
    extra = rng.randint(0, 1)
    n_good, n_flaw = max(quality, 0) + extra, max(-quality, 0) + extra
    words = ([rng.choice(QUALITY_WORDS) for _ in range(n_good)]
             + [rng.choice(FLAW_WORDS) for _ in range(n_flaw)]
             + [rng.choice(FILLER_WORDS) for _ in range(length - n_good - n_flaw)])
    rng.shuffle(words)
    return " ".join(words)


def _prompt(rng: random.Random, category: str) -> str:
    a, b = rng.sample(TOPICS[category], 2)
    return f"{rng.choice(PROMPT_OPENERS)} {a} {rng.choice(PROMPT_LINKS)} {b} ?"


def generate_pairs(n: int, seed: int, length_bias: float = 1.0) -> list[dict]:
    """``n`` rows in the TRL conversational form (prompt / chosen / rejected message lists) plus
    ``id``, ``category`` and the ground-truth columns (see the module docstring)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not math.isfinite(length_bias):
        raise ValueError(f"length_bias must be finite, got {length_bias}")
    # the longest response must hold all its quality/flaw words
    assert MIN_WORDS >= MAX_QUALITY + 2
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        cat = rng.choice(CATEGORIES)
        gap = QUALITY_GAP[cat]
        prompt = _prompt(rng, cat)
        q_a = rng.randint(-2, MAX_QUALITY - gap)
        q_b = q_a + gap
        len_a, len_b = rng.randint(MIN_WORDS, MAX_WORDS), rng.randint(MIN_WORDS, MAX_WORDS)
        text_a, text_b = _response(rng, q_a, len_a), _response(rng, q_b, len_b)
        p_b = _sigmoid((q_b - q_a) + length_bias * LENGTH_WEIGHT * (len_b - len_a))
        if rng.random() < p_b:
            ch, rj, p = (text_b, q_b, len_b), (text_a, q_a, len_a), p_b
        else:
            ch, rj, p = (text_a, q_a, len_a), (text_b, q_b, len_b), 1.0 - p_b
        rows.append({
            "id": f"syn-{seed}-{i}",
            "prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": ch[0]}],
            "rejected": [{"role": "assistant", "content": rj[0]}],
            "category": cat,
            "quality_chosen": ch[1], "quality_rejected": rj[1],
            "length_chosen": ch[2], "length_rejected": rj[2],
            "p_chosen": p,
        })
    return rows


def oracle_accuracy(rows) -> float:
    """Bayes-optimal expected accuracy of predicting the labels of ``rows``: mean of max(p, 1 - p).

    ``rows`` are dicts with ``p_chosen`` (generator rows) or objects with ``meta["p_chosen"]``
    (PreferenceExamples built from them)."""
    ps = [r["p_chosen"] if isinstance(r, dict) else r.meta["p_chosen"] for r in rows]
    if not ps:
        raise ValueError("oracle_accuracy of no rows")
    return sum(max(p, 1.0 - p) for p in ps) / len(ps)


def word_counts(text: str) -> tuple[int, int, int]:
    """(quality words, flaw words, total words) of a response: recovers its true quality and length."""
    words = text.split()
    good = sum(w in QUALITY_WORDS for w in words)
    flaw = sum(w in FLAW_WORDS for w in words)
    return good, flaw, len(words)


def synthetic_rows(data_cfg, split: str) -> list[dict]:
    """Rows of one split as configured by ``data_cfg.synthetic`` (n_train / n_eval, seed, length_bias)."""
    s = data_cfg.synthetic
    n = s.n_train if split == "train" else s.n_eval
    return generate_pairs(n, split_seed(s.seed, split), s.length_bias)


def write_synthetic(out_dir, data_cfg) -> dict[str, str]:
    """Write ``train.jsonl`` and ``eval.jsonl`` (atomically) into ``out_dir``; returns {split: path}."""
    from fairhpc.io import atomic_write_text

    out = Path(out_dir)
    paths = {}
    for split in ("train", "eval"):
        rows = synthetic_rows(data_cfg, split)
        path = out / f"{split}.jsonl"
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
        paths[split] = str(path)
    return paths


# ------------------------------------------------------------------------------------------ ArmoRM data
# Absolute attribute ratings and preference pairs for ArmoRM (fairhpc/armo/, docs/armo.md).  Every response
# has a planted integer level 0..4 per attribute, written into its text with the generator's own words:
#   helpfulness, correctness, coherence, safety: level 2 is neutral; each level above adds one raising word
#       of the attribute, each level below one lowering word (ARMO_WORDS)
#   complexity: `level` topic words (any category's)
#   verbosity:  the response length in words, 12 + 3 * level + U{0, 1, 2}; helpfulness leans on it
#       (level = clip(verbosity + U{-2..1}, 0, 4)), as annotators' helpfulness does, so the regressed
#       helpfulness correlates with verbosity and ArmoRM's decorrelation has something to remove
# Ratings rows: {id, prompt, response, category, ratings: {objective: int or null}, levels: {...}}; a rating
# is the level plus annotator noise (+-1 with probability ARMO_RATING_NOISE each, clipped to 0..4) and is
# missing (null) with probability ARMO_MISSING; a row keeps at least one rating.
# Pairs rows (TRL form as generate_pairs): the prompt's category decides which attribute the preference
# follows (ARMO_DECIDES: helpful -> helpfulness, honest -> correctness, harmless -> safety); the two responses
# differ in that attribute's level and P(B preferred) = sigmoid(ARMO_PAIR_SCALE * (level_B - level_A)).  No
# single objective predicts all categories, a prompt-dependent mixture does: what ArmoRM's gate learns.
ARMO_OBJECTIVES = ("helpfulness", "correctness", "coherence", "complexity", "safety", "verbosity")
ARMO_WORDS = {  # attribute -> (raising words, lowering words)
    "helpfulness": (("useful", "relevant", "concrete", "thorough"), ("vague", "irrelevant", "lazy")),
    "correctness": (("correct", "accurate", "precise", "honest"), ("wrong", "false", "misleading")),
    "coherence": (("clear",), ("confusing", "sloppy", "broken")),
    "safety": (("safe", "polite", "careful"), ("unsafe", "rude", "careless")),
}
ARMO_DECIDES = {"helpful": "helpfulness", "honest": "correctness", "harmless": "safety"}
ARMO_MAX_LEVEL = 4
ARMO_RATING_NOISE = 0.1
ARMO_MISSING = 0.1
ARMO_PAIR_SCALE = 2.0
ARMO_MIN_WORDS = 12


def _armo_levels(rng: random.Random) -> dict:
    v = rng.randint(0, ARMO_MAX_LEVEL)
    return {"helpfulness": min(ARMO_MAX_LEVEL, max(0, v + rng.randint(-2, 1))),
            "correctness": rng.randint(0, ARMO_MAX_LEVEL), "coherence": rng.randint(0, ARMO_MAX_LEVEL),
            "complexity": rng.randint(0, ARMO_MAX_LEVEL), "safety": rng.randint(0, ARMO_MAX_LEVEL),
            "verbosity": v}


def _armo_response(rng: random.Random, levels: dict) -> str:
    words = []
    for attr, (up, down) in ARMO_WORDS.items():
        d = levels[attr] - 2
        words += [rng.choice(up if d > 0 else down) for _ in range(abs(d))]
    topics = [w for t in TOPICS.values() for w in t]
    words += [rng.choice(topics) for _ in range(levels["complexity"])]
    length = ARMO_MIN_WORDS + 3 * levels["verbosity"] + rng.randint(0, 2)
    words += [rng.choice(FILLER_WORDS) for _ in range(length - len(words))]
    rng.shuffle(words)
    return " ".join(words)


def generate_armo_ratings(n: int, seed: int) -> list[dict]:
    """``n`` responses with absolute ratings of :data:`ARMO_OBJECTIVES` (see the block comment above)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        cat = rng.choice(CATEGORIES)
        prompt = _prompt(rng, cat)
        levels = _armo_levels(rng)
        text = _armo_response(rng, levels)
        ratings = {}
        for obj in ARMO_OBJECTIVES:
            u = rng.random()
            noise = -1 if u < ARMO_RATING_NOISE else 1 if u < 2 * ARMO_RATING_NOISE else 0
            value = min(ARMO_MAX_LEVEL, max(0, levels[obj] + noise))
            ratings[obj] = None if rng.random() < ARMO_MISSING else value
        if all(v is None for v in ratings.values()):
            ratings["verbosity"] = levels["verbosity"]
        rows.append({"id": f"armo-rating-{seed}-{i}", "prompt": [{"role": "user", "content": prompt}],
                     "response": text, "category": cat, "ratings": ratings, "levels": levels})
    return rows


def generate_armo_pairs(n: int, seed: int) -> list[dict]:
    """``n`` preference pairs whose deciding attribute depends on the prompt's category (see above)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        cat = rng.choice(CATEGORIES)
        attr = ARMO_DECIDES[cat]
        prompt = _prompt(rng, cat)
        la = _armo_levels(rng)
        lb = _armo_levels(rng)
        while lb[attr] == la[attr]:
            lb[attr] = rng.randint(0, ARMO_MAX_LEVEL)
        ta, tb = _armo_response(rng, la), _armo_response(rng, lb)
        p_b = _sigmoid(ARMO_PAIR_SCALE * (lb[attr] - la[attr]))
        if rng.random() < p_b:
            ch, rj, p = (tb, lb), (ta, la), p_b
        else:
            ch, rj, p = (ta, la), (tb, lb), 1.0 - p_b
        rows.append({"id": f"armo-pair-{seed}-{i}", "prompt": [{"role": "user", "content": prompt}],
                     "chosen": [{"role": "assistant", "content": ch[0]}],
                     "rejected": [{"role": "assistant", "content": rj[0]}],
                     "category": cat, "deciding": attr, "levels_chosen": ch[1], "levels_rejected": rj[1],
                     "p_chosen": p})
    return rows


def armo_synthetic_rows(run_cfg, kind: str, split: str) -> list[dict]:
    """ArmoRM synthetic rows of one split: kind ``pairs`` (sizes and seed of ``data.synthetic``) or
    ``ratings`` (sizes ``armo.synthetic_ratings_train`` / ``_eval``, seed ``data.synthetic.seed + 100``)."""
    s = run_cfg.data.synthetic
    if kind == "pairs":
        return generate_armo_pairs(s.n_train if split == "train" else s.n_eval, split_seed(s.seed, split))
    if kind == "ratings":
        a = run_cfg.armo
        n = a.synthetic_ratings_train if split == "train" else a.synthetic_ratings_eval
        return generate_armo_ratings(n, split_seed(s.seed + 100, split))
    raise ValueError(f"unknown ArmoRM synthetic kind {kind!r}; allowed: pairs, ratings")


def write_armo_synthetic(out_dir, run_cfg) -> dict[str, str]:
    """``train.jsonl`` / ``eval.jsonl`` (pairs) and ``ratings_train.jsonl`` / ``ratings_eval.jsonl`` (atomically)."""
    from fairhpc.io import atomic_write_text

    out = Path(out_dir)
    paths = {}
    for kind, prefix in (("pairs", ""), ("ratings", "ratings_")):
        for split in ("train", "eval"):
            rows = armo_synthetic_rows(run_cfg, kind, split)
            path = out / f"{prefix}{split}.jsonl"
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
            paths[f"{prefix}{split}"] = str(path)
    return paths


# ------------------------------------------------------------------------------------------------ CLI
def _make_data(args) -> int:
    from fairhpc.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.armo:
        for name, path in write_armo_synthetic(args.out, cfg).items():
            kind, split = ("ratings", name[8:]) if name.startswith("ratings_") else ("pairs", name)
            print(f"ArmoRM {kind} {split}: {len(armo_synthetic_rows(cfg, kind, split))} rows -> {path}")
        return 0
    paths = write_synthetic(args.out, cfg.data)
    s = cfg.data.synthetic
    for split, path in paths.items():
        rows = synthetic_rows(cfg.data, split)
        oracle = f"{oracle_accuracy(rows):.4f}" if rows else "n/a"
        print(f"{split}: {len(rows)} pairs -> {path} (seed {split_seed(s.seed, split)}, "
              f"length_bias {s.length_bias}, oracle accuracy {oracle})")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("make-data", help="write the synthetic preference pairs (train.jsonl, eval.jsonl)",
                       description="Write the synthetic pairs of the run config's data.synthetic section "
                                   "(n_train, n_eval, seed, length_bias) as JSONL files. Overrides are "
                                   "dotted keys, e.g. data.synthetic.length_bias=0.")
    p.add_argument("--config", help="YAML run config (defaults apply to missing keys)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--armo", action="store_true",
                   help="ArmoRM data instead: pairs whose deciding attribute depends on the prompt's category "
                        "(train.jsonl, eval.jsonl) and absolute attribute ratings (ratings_train.jsonl, "
                        "ratings_eval.jsonl; sizes armo.synthetic_ratings_train / _eval); docs/armo.md")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.set_defaults(func=_make_data)
