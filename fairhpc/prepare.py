"""``fairhpc prepare-data``: collect preference pairs from hub datasets or local files into one JSONL file.

The workflow's rule prepare_data runs it for each split of a ``datasets.<name>.prepare`` entry; each PART is
a JSON object (the workflow config's part, schemas/config.schema.yaml):

    hh_rlhf      Anthropic HH-RLHF helpful-base + harmless-base (hub name, or local files / folders whose
                 names say helpful or harmless), category helpful / harmless
    preferences  any preference source fairhpc.data reads (e.g. HuggingFaceH4/ultrafeedback_binarized),
                 category = part["category"] (or the row's own)
    shp          stanfordnlp/SHP rows (history, human_ref_A/B, labels, score_ratio, post_id, domain): pairs
                 with score_ratio >= min_score_ratio, at most max_pairs_per_prompt per post (the authors'
                 DPO data), category shp/<domain>

Unusable rows (e.g. HH-RLHF's empty responses) are dropped and counted: stdout gets one JSON line per part,
``{"part": ..., "kept": N, "skipped": {reason: count}}``.  The output rows are
``{prompt, chosen, rejected (message lists), category}``, the ``standard``/``trl`` format the trainer reads.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, fields

# the data layer, the only way this module reads data: where rows come from (fairhpc.sources), what a row
# means (fairhpc.formats; HH-RLHF's helpful / harmless parts: fairhpc.evaluation.benchmarks)
from fairhpc.errors import DataError
from fairhpc.evaluation.benchmarks import load_hh_rlhf
from fairhpc.formats import load_preferences
from fairhpc.io import atomic_write_text
from fairhpc.sources import iter_rows

PART_KINDS = ("hh_rlhf", "preferences", "shp")
SHP_FIELDS = ("history", "human_ref_A", "human_ref_B", "labels", "score_ratio", "post_id")


@dataclass(frozen=True)
class Part:
    """One source of pairs; the defaults are those of the workflow config's parts."""

    kind: str
    source: str
    split: str
    category: str | None = None       # preferences: the category of every pair
    format: str = "auto"              # preferences: row format (fairhpc.registry.DATA_FORMATS)
    min_score_ratio: float = 2.0      # shp: keep pairs with score_ratio >= this
    max_pairs_per_prompt: int = 5     # shp: pairs kept per post

    @classmethod
    def from_dict(cls, d: dict) -> Part:
        known = [f.name for f in fields(cls)]
        problems = [f"unknown key {k!r}" for k in d if k not in known]
        problems += [f"missing key {k!r}" for k in ("kind", "source", "split") if k not in d]
        if problems:
            raise DataError(f"prepare part {json.dumps(d)}: {'; '.join(problems)} (keys: {', '.join(known)})")
        part = cls(**d)
        if part.kind not in PART_KINDS:
            raise DataError(f"prepare part {json.dumps(d)}: kind {part.kind!r} is not one of "
                            f"{', '.join(PART_KINDS)}")
        for key in ("source", "split"):
            if not isinstance(getattr(part, key), str) or not getattr(part, key):
                raise DataError(f"prepare part {json.dumps(d)}: {key}: expected a non-empty string, "
                                f"got {getattr(part, key)!r}")
        r, n = part.min_score_ratio, part.max_pairs_per_prompt
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r < 0:
            raise DataError(f"prepare part {json.dumps(d)}: min_score_ratio: expected a finite number >= 0, got {r!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DataError(f"prepare part {json.dumps(d)}: max_pairs_per_prompt: expected an integer >= 1, "
                            f"got {n!r}")
        return part


def _pair(prompt: list[dict], chosen: list[dict], rejected: list[dict], category) -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "category": category}


def _shp_pairs(part: Part) -> tuple[list[dict], dict]:
    out, per_post = [], {}
    skipped = {"score_ratio_below_min": 0, "over_max_pairs_per_prompt": 0}
    for where, row in iter_rows(part.source, part.split):
        try:
            if float(row["score_ratio"]) < part.min_score_ratio:
                skipped["score_ratio_below_min"] += 1
                continue
            n = per_post.get(row["post_id"], 0)
            if n >= part.max_pairs_per_prompt:
                skipped["over_max_pairs_per_prompt"] += 1
                continue
            a_wins = int(row["labels"]) == 1
            a, b = row["human_ref_A"], row["human_ref_B"]
            prompt = row["history"]
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{where}: not an SHP row ({type(e).__name__}: {e}); expected "
                            f"{', '.join(SHP_FIELDS)}") from None
        per_post[row["post_id"]] = n + 1
        out.append(_pair([{"role": "user", "content": prompt}],
                         [{"role": "assistant", "content": a if a_wins else b}],
                         [{"role": "assistant", "content": b if a_wins else a}],
                         f"shp/{row.get('domain') or 'unknown'}"))
    return out, skipped


def collect(part: Part) -> tuple[list[dict], dict]:
    """(rows of one part, skipped rows by reason)."""
    if part.kind == "shp":
        return _shp_pairs(part)
    if part.kind == "hh_rlhf":
        exs, skipped = load_hh_rlhf([part.source], part.split, bad_rows="skip")
    else:
        exs, skipped = load_preferences(part.source, split=part.split, fmt=part.format, bad_rows="skip")
    category = part.category if part.kind == "preferences" else None
    return [_pair(e.prompt, e.chosen, e.rejected, category or e.category) for e in exs], dict(skipped)


def prepare(parts: list[Part], out: str) -> list[dict]:
    """Concatenate the parts' pairs into the JSONL file `out`; returns {part, kept, skipped} per part."""
    rows, stats = [], []
    for part in parts:
        got, skipped = collect(part)
        rows += got
        stats.append({"part": asdict(part), "kept": len(got), "skipped": dict(sorted(skipped.items()))})
    if not rows:
        raise DataError(f"{out}: the prepare parts gave no pairs: {json.dumps(stats)}")
    atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in rows))
    return stats


def _part_arg(text: str) -> Part:
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"prepare part {text!r}: not JSON ({e.msg})") from None
    if not isinstance(d, dict):
        raise DataError(f"prepare part {text!r}: expected a JSON object")
    return Part.from_dict(d)


def _prepare_data(args) -> int:
    parts = [_part_arg(p) for p in args.parts]
    for line in prepare(parts, args.out):
        print(json.dumps(line), flush=True)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser(
        "prepare-data", help="collect preference pairs (HH-RLHF, SHP, any preference source) into one JSONL",
        description="Collect the pairs of each PART into one JSONL file (prompt, chosen, rejected, category). "
                    "A PART is a JSON object: kind (" + ", ".join(PART_KINDS) + "), source, split, and "
                    "optionally category, format, min_score_ratio, max_pairs_per_prompt. Prints one JSON line "
                    "per part with the pairs kept and the rows skipped by reason.")
    p.add_argument("--out", required=True, metavar="FILE", help="output JSONL file")
    p.add_argument("parts", nargs="+", metavar="PART", help='e.g. \'{"kind": "shp", "source": '
                   '"stanfordnlp/SHP", "split": "train"}\'')
    p.set_defaults(func=_prepare_data)
