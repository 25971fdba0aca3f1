"""Preference row formats on top of :mod:`fairhpc.sources`: a row -> a :class:`PreferenceExample`.

Row formats (``data.format``; ``auto`` decides per file from its first decisive row):

* ``standard`` (RLHFlow): ``chosen`` and ``rejected`` are full conversations (message lists) that share the
  prompt; prompt = their common message prefix, responses = the rest of each.
* ``trl``: ``prompt`` (string or message list) plus ``chosen`` / ``rejected`` (strings or message lists).
  Response lists that repeat the prompt (as in UltraFeedback-binarized) have it stripped.
* ``hh`` (Anthropic HH-RLHF): ``chosen`` / ``rejected`` are ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``
  transcripts, split into messages; prompt = everything before the last ``"\\n\\nAssistant:"`` turn (the
  common prefix of the two transcripts' turns, which is the same thing whenever the transcripts agree
  before their last assistant turn).

Every message has a role in :data:`MESSAGE_ROLES` (``human`` / ``gpt`` of ShareGPT-style data are refused
in every format, so that no chat template renders them as "Gpt: ...").
An optional ``category`` column (string) is kept; any other column goes to ``PreferenceExample.meta``.

Bad rows raise :class:`DataError` naming file, line (JSONL/CSV, 1-based) or row (JSON array / Parquet /
hub, 0-based) and field; with ``bad_rows="skip"`` they are dropped and counted by reason
(:data:`~fairhpc.errors.SKIP_REASONS`).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from fairhpc import registry
from fairhpc.errors import ConfigError, DataError
from fairhpc.sources import Row, iter_source

MESSAGE_ROLES = ("system", "user", "assistant")


@dataclass
class PreferenceExample:
    prompt: list[dict]              # messages before the responses, each {"role", "content"}
    chosen: list[dict]              # response messages (normally one assistant message)
    rejected: list[dict]
    category: str | None = None
    source: str = ""                # "file:line", "file:row N" or "name[split]:row N"
    meta: dict = field(default_factory=dict)   # other columns (ids, scores, ground truth)


# --------------------------------------------------------------------------------------- row parsing
def _type_name(v) -> str:
    return "null" if v is None else type(v).__name__


def _short(v, n: int = 60) -> str:
    s = repr(v)
    return s if len(s) <= n else s[:n] + "..."


def _require(row: dict, key: str, where: str):
    if key not in row or row[key] is None:
        present = ", ".join(map(str, row)) or "none"
        raise DataError(f"{where}: field {key!r}: missing (columns present: {present})", "missing_field")
    return row[key]


def _messages(value, key: str, where: str) -> list[dict]:
    """A list of {"role", "content"} messages (validated; extra message keys dropped)."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays from pandas/parquet
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{where}: field {key!r}: expected a list of {{role, content}} messages, got "
                        f"{_type_name(value)} {_short(value)}", "wrong_type")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise DataError(f"{where}: field '{key}[{i}]': expected a {{role, content}} message, got "
                            f"{_type_name(m)} {_short(m)}", "wrong_type")
        for k in ("role", "content"):
            if m.get(k) is None:
                raise DataError(f"{where}: field '{key}[{i}].{k}': missing", "missing_field")
            if not isinstance(m[k], str):
                raise DataError(f"{where}: field '{key}[{i}].{k}': expected a string, got {_type_name(m[k])} "
                                f"{_short(m[k])}", "wrong_type")
        if m["role"] not in MESSAGE_ROLES:
            raise DataError(f"{where}: field '{key}[{i}].role': unknown role {m['role']!r}; allowed: "
                            f"{', '.join(MESSAGE_ROLES)}", "bad_conversation")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _text_or_messages(value, key: str, where: str, role: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": role, "content": value}] if value.strip() or key != "prompt" else []
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        return _messages(value, key, where)
    raise DataError(f"{where}: field {key!r}: expected a string or a list of {{role, content}} messages, got "
                    f"{_type_name(value)} {_short(value)}", "wrong_type")


_HH_MARKER = re.compile(r"\n\n(Human|Assistant):")


def _hh_messages(text, key: str, where: str) -> list[dict]:
    if not isinstance(text, str):
        raise DataError(f"{where}: field {key!r}: expected an HH-RLHF transcript string, got "
                        f"{_type_name(text)} {_short(text)}", "wrong_type")
    if text.startswith(("Human:", "Assistant:")):
        text = "\n\n" + text
    parts = _HH_MARKER.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise DataError(f"{where}: field {key!r}: not an HH-RLHF transcript (expected '\\n\\nHuman: ..."
                        f"\\n\\nAssistant: ...'), got {_short(text)}", "bad_conversation")
    return [{"role": "user" if who == "Human" else "assistant", "content": body.strip()}
            for who, body in zip(parts[1::2], parts[2::2])]


def _split_common_prefix(chosen: list[dict], rejected: list[dict], where: str):
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    prompt, c, r = chosen[:k], chosen[k:], rejected[k:]
    if not c and not r:
        raise DataError(f"{where}: field 'chosen': identical to 'rejected'", "identical")
    for key, resp in (("chosen", c), ("rejected", r)):
        if not resp:
            raise DataError(f"{where}: field {key!r}: empty response (the conversation is only the shared "
                            f"prompt)", "empty_response")
        if resp[0]["role"] != "assistant":
            raise DataError(f"{where}: field {key!r}: chosen and rejected differ at message {k}, which has "
                            f"role {resp[0]['role']!r}; the responses must start with an assistant message",
                            "bad_conversation")
    return prompt, c, r


def _strip_prompt(resp: list[dict], prompt: list[dict]) -> list[dict]:
    if prompt and len(resp) > len(prompt) and resp[:len(prompt)] == prompt:
        return resp[len(prompt):]
    return resp


def _parse_row(row, where: str, fmt: str):
    """(prompt, chosen, rejected, used keys) of one row in format ``fmt``; raises DataError."""
    if hasattr(row, "keys") and not isinstance(row, dict):
        row = dict(row)
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with chosen/rejected fields, got {_type_name(row)} "
                        f"{_short(row)}", "not_an_object")
    if fmt == "trl":
        p = _text_or_messages(_require(row, "prompt", where), "prompt", where, "user")
        c = _text_or_messages(_require(row, "chosen", where), "chosen", where, "assistant")
        r = _text_or_messages(_require(row, "rejected", where), "rejected", where, "assistant")
        c, r = _strip_prompt(c, p), _strip_prompt(r, p)
        used = ("prompt", "chosen", "rejected")
    elif fmt == "standard":
        c = _messages(_require(row, "chosen", where), "chosen", where)
        r = _messages(_require(row, "rejected", where), "rejected", where)
        p, c, r = _split_common_prefix(c, r, where)
        used = ("chosen", "rejected")
    elif fmt == "hh":
        c = _hh_messages(_require(row, "chosen", where), "chosen", where)
        r = _hh_messages(_require(row, "rejected", where), "rejected", where)
        p, c, r = _split_common_prefix(c, r, where)
        used = ("chosen", "rejected")
    else:  # auto, and no row of the file told the format
        for key in ("chosen", "rejected"):
            v = _require(row, key, where)
            if not isinstance(v, (str, list, tuple)):
                raise DataError(f"{where}: field {key!r}: expected a string or a list of {{role, content}} "
                                f"messages, got {_type_name(v)} {_short(v)}", "wrong_type")
        raise DataError(f"{where}: cannot tell the row format: expected 'prompt' + 'chosen'/'rejected' "
                        "(trl), message lists in 'chosen'/'rejected' (standard) or "
                        "'\\n\\nHuman: ...\\n\\nAssistant: ...' transcripts (hh); set data.format",
                        "undetected_format")
    for key, resp in (("chosen", c), ("rejected", r)):
        if not resp or not any(m["content"].strip() for m in resp):
            raise DataError(f"{where}: field {key!r}: empty response", "empty_response")
    if c == r:
        raise DataError(f"{where}: field 'chosen': identical to 'rejected'", "identical")
    return p, c, r, used


def detect_format(row) -> str | None:
    """The format a row is in (``trl`` / ``standard`` / ``hh``), or None when the row does not say."""
    if not isinstance(row, dict):
        return None
    if "prompt" in row and row["prompt"] is not None:
        return "trl"
    chosen = row.get("chosen")
    if isinstance(chosen, (list, tuple)) or (hasattr(chosen, "tolist") and not isinstance(chosen, str)):
        return "standard"
    if isinstance(chosen, str) and ("\n\nAssistant:" in chosen or chosen.startswith("Human:")):
        return "hh"
    return None


def _example(row: dict, r: Row, fmt: str) -> PreferenceExample:
    p, c, rj, used = _parse_row(row, r.where, fmt)
    category = row.get("category")
    if category is not None and not isinstance(category, str):
        raise DataError(f"{r.where}: field 'category': expected a string, got {_type_name(category)} "
                        f"{_short(category)}", "wrong_type")
    meta = {k: v for k, v in row.items() if k not in used and k != "category"}
    return PreferenceExample(prompt=p, chosen=c, rejected=rj, category=category, source=r.source, meta=meta)


def load_preferences(source: str, split: str = "train", fmt: str = "auto", bad_rows: str = "error",
                     limit: int | None = None) -> tuple[list[PreferenceExample], Counter]:
    """Preference pairs of a local data file (:data:`~fairhpc.sources.DATA_SUFFIXES`), a dataset directory
    or a hub dataset name (``split`` applies to the last two).

    Returns (examples, Counter of skipped rows by reason).  ``bad_rows="error"`` raises DataError at the
    first bad row; ``"skip"`` drops it.  ``limit`` stops after that many kept examples.
    """
    if fmt not in registry.DATA_FORMATS:
        raise ConfigError(f"data.format: unknown format {fmt!r}; allowed: {', '.join(registry.DATA_FORMATS)}")
    if bad_rows not in registry.BAD_ROW_POLICIES:
        raise ConfigError(f"data.bad_rows: unknown policy {bad_rows!r}; allowed: "
                          f"{', '.join(registry.BAD_ROW_POLICIES)}")
    rows = iter_source(str(source), split)
    pending: list[Row] = []
    if fmt == "auto":  # look ahead to the first row that tells the format; a file is in one format
        fmt = None
        for r in rows:
            pending.append(r)
            if r.error is None and (fmt := detect_format(r.value)) is not None:
                break
    examples: list[PreferenceExample] = []
    skipped: Counter = Counter()

    def all_rows():
        yield from pending
        yield from rows

    for r in all_rows():
        if limit is not None and len(examples) >= limit:
            break
        try:
            if r.error is not None:
                raise r.error
            examples.append(_example(r.value, r, fmt))
        except DataError as e:
            if bad_rows == "error" or e.reason is None:
                raise
            skipped[e.reason] += 1
    return examples, skipped


# ------------------------------------------------------------------------------------------ synthetic
def synthetic_examples(data_cfg, split: str = "train") -> list[PreferenceExample]:
    """The synthetic pairs of ``data_cfg.synthetic`` as examples (split train: seed, eval: seed + 1)."""
    from fairhpc.synthetic import synthetic_rows

    out = []
    for i, row in enumerate(synthetic_rows(data_cfg, split)):
        where = Row(f"synthetic[{split}]: row {i}", f"synthetic[{split}]:row {i}", row)
        out.append(_example(row, where, "trl"))
    return out


