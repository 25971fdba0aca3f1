"""ArmoRM's inputs: rated responses (for the regression) and preference pairs (for the gate), as one
ordered list of (prompt, response) items that the embed stage turns into hidden states.

Ratings rows (JSONL / JSON / Parquet / CSV file, dataset directory or hub dataset; ``armo.ratings_train`` /
``armo.ratings_eval``; ``synthetic`` = :func:`fairhpc.synthetic.generate_armo_ratings`); instead of prompt and
response a row may hold ``messages``, a conversation whose last message is the rated assistant response (the
form of RLHFlow/ArmoRM-Multi-Objective-Data-v0.1)::

    {"prompt": "..." or [{"role": "user", "content": "..."}, ...],
     "response": "..." or [{"role": "assistant", "content": "..."}],
     "ratings": {"helpfulness": 3, "correctness": 4, "verbosity": null, ...},
     "category": "..." (optional), any other fields (kept, unused)}

The objectives are ``armo.objectives`` in that order, or (``[]``) the keys of the first ``ratings`` mapping of
``ratings_train`` followed by keys first seen in later rows.  With ``armo.objectives`` set, a row may instead
carry the ratings as top-level fields of those names (HelpSteer's columns).  A rating is a number in
``[armo.rating_min, armo.rating_max]`` (true / false count as 1 / 0) or null / NaN / absent (masked for that
objective).  Refused, naming the file,
the line and the field, before anything is computed: a rating out of range or not a number, a row with no
rating at all, a ``ratings`` key that is not an objective (an unknown rating column), a missing or empty
prompt / response.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

from fairhpc.errors import DataError

RATING_SPLITS = ("ratings_train", "ratings_eval")
PAIR_SPLITS = ("pairs_train", "pairs_eval")


@dataclass
class Rated:
    prompt: list[dict]
    response: str
    ratings: list[float]          # one per objective, NaN = missing
    category: str | None
    where: str


@dataclass
class Inputs:
    """Everything the embed stage reads, validated: rated responses and preference pairs per split."""

    objectives: list[str]
    ratings: dict = field(default_factory=dict)     # split -> list[Rated]
    pairs: dict = field(default_factory=dict)       # split -> list[PreferenceExample]
    sources: dict = field(default_factory=dict)     # split -> source name

    def items(self) -> list[tuple[str, int, str, list[dict], str]]:
        """(split, row, part, prompt, response) in the fixed order of the embeddings: the rated responses of
        ratings_train, ratings_eval, then every pair of pairs_train, pairs_eval as chosen, rejected."""
        from fairhpc.rewards.pair_pm import response_text

        out = []
        for split in RATING_SPLITS:
            for i, r in enumerate(self.ratings.get(split, [])):
                out.append((split, i, "response", r.prompt, r.response))
        for split in PAIR_SPLITS:
            for i, ex in enumerate(self.pairs.get(split, [])):
                out.append((split, i, "chosen", ex.prompt, response_text(ex.chosen)))
                out.append((split, i, "rejected", ex.prompt, response_text(ex.rejected)))
        return out

    def categories(self) -> list[str]:
        cats = {ex.category for split in PAIR_SPLITS for ex in self.pairs.get(split, []) if ex.category}
        return sorted(cats)


def items_digest(items) -> str:
    """sha256 of the items' texts in order (the embeddings' identity, with the backbone's)."""
    h = hashlib.sha256()
    for split, i, part, prompt, response in items:
        h.update(json.dumps([split, i, part, prompt, response], sort_keys=True).encode())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ ratings
def _messages(value, key: str, where: str, role: str) -> list[dict]:
    from fairhpc.formats import _text_or_messages

    if value is None:
        raise DataError(f"{where}: field {key!r}: missing", "missing_field")
    msgs = _text_or_messages(value, key, where, role)
    if key == "response" and (not msgs or not any(m["content"].strip() for m in msgs)):
        raise DataError(f"{where}: field 'response': empty response", "empty_response")
    return msgs


def _rating(value, key: str, where: str, lo: float, hi: float) -> float:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.nan
    if isinstance(value, bool):  # a yes/no attribute (e.g. is_safe) rates 1 or 0
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if hasattr(value, "item"):  # numpy scalars from parquet
            return _rating(value.item(), key, where, lo, hi)
        raise DataError(f"{where}: field {key!r}: expected a number or null, got {type(value).__name__} "
                        f"{value!r}", "wrong_type")
    v = float(value)
    if not math.isfinite(v) or not lo <= v <= hi:
        raise DataError(f"{where}: field {key!r}: rating {value!r} is out of range [{lo:g}, {hi:g}] "
                        "(armo.rating_min, armo.rating_max)", "wrong_type")
    return v


def parse_rated(row, where: str, objectives: list[str] | None, lo: float, hi: float) -> tuple[Rated, dict]:
    """(Rated with ratings in ``objectives`` order, {name: value} of the row's ratings) of one row.

    ``objectives`` None: the names are still open (the first file decides), every key of ``ratings`` is taken."""
    from fairhpc.rewards.pair_pm import response_text

    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with prompt, response and ratings, got "
                        f"{type(row).__name__}", "not_an_object")
    if row.get("prompt") is None and row.get("response") is None and row.get("messages") is not None:
        msgs = _messages(row["messages"], "messages", where, "user")
        if len(msgs) < 2 or msgs[-1]["role"] != "assistant":
            raise DataError(f"{where}: field 'messages': expected a conversation ending with the assistant's "
                            "response", "bad_conversation")
        prompt, response = msgs[:-1], msgs[-1]["content"]
    else:
        prompt = _messages(row.get("prompt"), "prompt", where, "user")
        response = response_text(_messages(row.get("response"), "response", where, "assistant"))
    raw = row.get("ratings")
    if raw is None:
        if not objectives:
            raise DataError(f"{where}: field 'ratings': missing (expected a mapping of rating column -> number; "
                            "or name the rating columns in armo.objectives to read them as top-level fields)",
                            "missing_field")
        raw = {k: row[k] for k in objectives if k in row}
        prefix = ""
    else:
        if not isinstance(raw, dict):
            raise DataError(f"{where}: field 'ratings': expected a mapping of rating column -> number, got "
                            f"{type(raw).__name__} {raw!r}", "wrong_type")
        prefix = "ratings."
        if objectives is not None:
            unknown = [k for k in raw if k not in objectives]
            if unknown:
                raise DataError(f"{where}: field 'ratings.{unknown[0]}': unknown rating column; the objectives are "
                                f"{', '.join(objectives)} (armo.objectives, or the columns of armo.ratings_train)",
                                "wrong_type")
    values = {k: _rating(v, f"{prefix}{k}", where, lo, hi) for k, v in raw.items()}
    names = objectives if objectives is not None else list(values)
    ratings = [values.get(k, math.nan) for k in names]
    if all(math.isnan(v) for v in ratings):
        raise DataError(f"{where}: field '{prefix.rstrip('.') or 'ratings'}': no rating for any objective "
                        f"({', '.join(names) or 'none given'}); a rated response needs at least one",
                        "missing_field")
    category = row.get("category")
    if category is not None and not isinstance(category, str):
        raise DataError(f"{where}: field 'category': expected a string, got {type(category).__name__}",
                        "wrong_type")
    return Rated(prompt, response, ratings, category, where), values


def load_ratings(source: str, split: str, run_cfg, objectives: list[str] | None,
                 label: str) -> tuple[list[Rated], list[str]]:
    """Rated responses of one source (all rows validated first) and the objective names."""
    from fairhpc.sources import Row, iter_source

    a = run_cfg.armo
    if source == "synthetic":
        from fairhpc.synthetic import armo_synthetic_rows

        rows = (Row(f"synthetic[{label}]: row {i}", f"synthetic[{label}]:row {i}", r)
                for i, r in enumerate(armo_synthetic_rows(run_cfg, "ratings", split.split("_")[-1])))
    else:
        rows = iter_source(source, run_cfg.data.train_split if split.endswith("train")
                           else run_cfg.data.eval_split)
    parsed: list[tuple[Rated, dict]] = []
    order: dict[str, None] = {}
    for r in rows:
        if r.error is not None:
            raise r.error
        rated, values = parse_rated(r.value, r.where, objectives, a.rating_min, a.rating_max)
        parsed.append((rated, values))
        order.update(dict.fromkeys(values))
    if not parsed:
        raise DataError(f"{source}: no rated responses ({label})")
    if objectives is None:  # names from the file: re-order every row's ratings by them
        objectives = list(order)
        for rated, values in parsed:
            rated.ratings = [values.get(k, math.nan) for k in objectives]
    return [p[0] for p in parsed], objectives


def load_inputs(run_cfg) -> Inputs:
    """Ratings of armo.ratings_train / armo.ratings_eval and pairs of data.train / data.eval, validated."""
    from fairhpc.formats import load_preferences

    a, d = run_cfg.armo, run_cfg.data
    objectives = list(a.objectives) or None
    out = Inputs(objectives=[])
    out.ratings["ratings_train"], objectives = load_ratings(a.ratings_train, "ratings_train", run_cfg, objectives,
                                                            "ratings_train")
    out.sources["ratings_train"] = a.ratings_train
    if a.ratings_eval is not None:
        out.ratings["ratings_eval"], _ = load_ratings(a.ratings_eval, "ratings_eval", run_cfg, objectives,
                                                      "ratings_eval")
        out.sources["ratings_eval"] = a.ratings_eval
    out.objectives = objectives
    if a.verbosity and a.verbosity not in objectives:
        from fairhpc.errors import ConfigError

        raise ConfigError(f"armo.verbosity: {a.verbosity!r} is not an objective ({', '.join(objectives)}); "
                          "name the verbosity rating column or set armo.verbosity='' (no decorrelation)")
    for split, src, hub_split in (("pairs_train", d.train, d.train_split), ("pairs_eval", d.eval, d.eval_split)):
        if src is None:
            continue
        if src == "synthetic":
            from fairhpc.formats import _example
            from fairhpc.sources import Row
            from fairhpc.synthetic import armo_synthetic_rows

            rows = armo_synthetic_rows(run_cfg, "pairs", split.split("_")[-1])
            out.pairs[split] = [_example(row, Row(f"synthetic[{split}]: row {i}", f"synthetic[{split}]:row {i}",
                                                  row), "trl") for i, row in enumerate(rows)]
        else:
            limit = d.max_train_examples if split == "pairs_train" else d.max_eval_examples
            out.pairs[split], _ = load_preferences(src, hub_split, d.format, d.bad_rows, limit)
        if not out.pairs[split]:
            raise DataError(f"{src}: no preference pairs ({'data.train' if split == 'pairs_train' else 'data.eval'})")
        out.sources[split] = src
    return out
