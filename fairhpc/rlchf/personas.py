"""Personas: the simulated annotators.

A persona file is JSONL, one persona per line, in the format of the RLCHF persona sets: a ``persona`` text
plus attributes (``sex``, ``age``, ``nationality``, ``social_class`` and any others, e.g. ``occupation``)
and an optional ``id`` (default ``p<line>``).  The built-in set (fairhpc/rlchf/data/personas.jsonl, 30
personas) also has ``group``: the planted preference of the synthetic judge (``length``, ``quality``,
``brevity``; fairhpc/rlchf/judges.py), which the evaluation reports per group.

:func:`sample_personas` draws N personas stratified by chosen attributes (largest-remainder allocation of N
over the strata, a seeded draw inside each); :func:`generate_personas` writes new persona texts with a local
transformers model prompted with a few seed personas.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from fairhpc.errors import ConfigError, DataError

BUILTIN = Path(__file__).parent / "data" / "personas.jsonl"
ATTRIBUTES = ("sex", "age", "nationality", "social_class")
GENERATE_PROMPT = (
    "Here are descriptions of people:\n{examples}\n"
    "Write a description of one more person, different from all of these, in the same style: one sentence "
    "with their age, nationality, occupation, social class and what they value in an answer."
)


def resolve(source: str) -> str:
    """``builtin`` -> the built-in persona file; anything else is a path."""
    return str(BUILTIN) if source == "builtin" else source


def load_personas(source: str = "builtin", bad_rows: str = "error") -> tuple[list[dict], Counter]:
    """(personas, skipped rows by reason) of a persona JSONL file.  A row without a ``persona`` string, with
    a non-scalar attribute, or a repeated ``id`` raises DataError naming the file, line and field (or is
    skipped and counted with ``bad_rows="skip"``)."""
    from fairhpc.sources import iter_source

    path = resolve(source)
    if bad_rows not in ("error", "skip"):
        raise ConfigError(f"--bad-rows: unknown policy {bad_rows!r}; allowed: error, skip")
    if not Path(path).is_file():
        raise DataError(f"{path}: no such persona file")
    out, skipped, ids = [], Counter(), set()
    for n, r in enumerate(iter_source(path), 1):
        try:
            if r.error is not None:
                raise r.error
            row = r.value
            if not isinstance(row, dict):
                raise DataError(f"{r.where}: expected a persona object, got {type(row).__name__}", "not_an_object")
            text = row.get("persona")
            if text is None:
                raise DataError(f"{r.where}: field 'persona': missing (columns present: "
                                f"{', '.join(row) or 'none'})", "missing_field")
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{r.where}: field 'persona': expected a non-empty string, got {text!r:.60}",
                                "wrong_type")
            for key, v in row.items():
                if not isinstance(v, (str, int, float, bool)) and v is not None:
                    raise DataError(f"{r.where}: field {key!r}: persona attributes are strings or numbers, got "
                                    f"{type(v).__name__}", "wrong_type")
            pid = str(row.get("id", f"p{n}"))
            if pid in ids:
                raise DataError(f"{r.where}: field 'id': {pid!r} repeats an earlier persona", "wrong_type")
            ids.add(pid)
            out.append({**row, "id": pid, "persona": text.strip()})
        except DataError as e:
            if bad_rows == "error" or e.reason is None:
                raise
            skipped[e.reason] += 1
    if not out:
        raise DataError(f"{path}: no usable personas" + (f" (skipped: {dict(skipped)})" if skipped else ""))
    return out, skipped


def strata_key(p: dict, by: list[str]) -> tuple:
    return tuple(str(p.get(a, "")) for a in by)


def sample_personas(personas: list[dict], n: int, by: list[str] | tuple = (), seed: int = 0) -> list[dict]:
    """N personas, stratified by the attributes ``by``: each stratum (a combination of their values) gets
    its share of N by largest remainder (ties: the larger stratum, then the first in file order), drawn
    with ``random.Random(seed)``; returned in file order.  All of them when n >= len(personas) is refused
    unless n == len."""
    if n < 1:
        raise ConfigError(f"--n: must be >= 1, got {n}")
    if n > len(personas):
        raise ConfigError(f"--n: {n} personas asked, the file has {len(personas)}")
    missing = [a for a in by if all(a not in p for p in personas)]
    if missing:
        raise ConfigError(f"--stratify: attribute {missing[0]!r} is in no persona; attributes present: "
                          f"{', '.join(sorted({k for p in personas for k in p} - {'persona'}))}")
    strata: dict[tuple, list[int]] = {}
    for i, p in enumerate(personas):
        strata.setdefault(strata_key(p, list(by)), []).append(i)
    total = len(personas)
    quota = {s: n * len(ix) / total for s, ix in strata.items()}
    take = {s: int(q) for s, q in quota.items()}
    order = sorted(strata, key=lambda s: (-(quota[s] - take[s]), -len(strata[s]), strata[s][0]))
    for s in order[: n - sum(take.values())]:
        take[s] += 1
    rng = random.Random(seed)
    chosen = []
    for s in sorted(strata, key=lambda s: strata[s][0]):
        chosen += rng.sample(strata[s], take[s])
    return [personas[i] for i in sorted(chosen)]


def write_personas(path: str, personas: list[dict]) -> None:
    from fairhpc.io import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(p) + "\n" for p in personas))


def generate_personas(seed_personas: list[dict], n: int, model_path: str, seed: int = 0, temperature: float = 0.9,
                      max_new_tokens: int = 96, batch_size: int = 8, examples: int = 3,
                      device: str = "auto") -> tuple[list[dict], int]:
    """``n`` new personas written by a local causal LM from ``examples`` seed personas each (drawn with
    ``seed``); returns (personas, number of empty generations dropped).  New rows carry ``id`` gen<i>,
    ``persona`` and ``seed_personas`` (the ids shown); attributes are unknown and left out."""
    from fairhpc.evaluation.policy import generate, load_generator
    from fairhpc.evaluation.scoring import check_model_path
    from fairhpc.rewards.base import resolve_device

    check_model_path(model_path, "--model")
    rng = random.Random(seed)
    shown = [rng.sample(seed_personas, min(examples, len(seed_personas))) for _ in range(n)]
    prompts = [[{"role": "user", "content": GENERATE_PROMPT.format(
        examples="\n".join(f"- {p['persona']}" for p in s))}] for s in shown]
    dev = resolve_device(device)
    model, tok = load_generator(model_path, dev)
    texts, _ = generate(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, device=dev,
                        do_sample=temperature > 0, temperature=max(temperature, 1e-5), seed=seed,
                        desc="generating personas")
    out, empty = [], 0
    for i, (t, s) in enumerate(zip(texts, shown)):
        text = t[0].strip().splitlines()[0].strip() if t[0].strip() else ""
        if not text:
            empty += 1
            continue
        out.append({"id": f"gen{i}", "persona": text, "seed_personas": [p["id"] for p in s]})
    return out, empty
