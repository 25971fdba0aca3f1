"""Reading a ranking out of a judge model's free text, or saying why it cannot be read.

The judge prompt (fairhpc/rlchf/judges.py) numbers the responses 1..K and asks for one line
``Ranking: Response a > Response b > ...``.  Models answer in many ways; :func:`parse_ranking` accepts

* the requested line, anywhere in the text (the last ``Ranking:`` / ``Final ranking:`` line wins), with
  extra words around it;
* ``Response 2 > Response 1 > Response 3``, ``[2, 1, 3]``, ``2 > 1 > 3``, ``B > A > C`` (letters A.. when K
  <= 26), ``Answer``/``Option``/``Candidate`` instead of ``Response``, ``#2``, ``(2)``;
* numbered lists (``1. Response 2`` / ``2. Response 3`` / ...), whose list numbers are not read as responses;
* ``<`` orderings written worst first (``Response 3 < Response 1 < Response 2``);
* free text that names every response once, in order ("Response 2 is the best, then Response 1, ...").

It never guesses.  It refuses, with a reason that the caller counts (:data:`REFUSALS`):

    tie            two responses declared equal ("=", "tie", "equally")
    incomplete     fewer than K distinct responses named
    duplicate      a response named twice in the ranking (in free text: named more than once)
    out_of_range   a response number outside 1..K
    no_ranking     no response numbers at all
    mixed_order    both ">" and "<" between responses
Returned indices are 0-based (response 1 -> 0).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

REFUSALS = {
    "tie": "two responses declared equal",
    "incomplete": "fewer than K distinct responses named",
    "duplicate": "a response named more than once",
    "out_of_range": "a response number outside 1..K",
    "no_ranking": "no response numbers in the answer",
    "mixed_order": "both '>' and '<' between responses",
}

_RANKING_LINE = re.compile(r"(?:final\s+)?ranking\s*[:=\-]\s*(.+)", re.IGNORECASE)
_NAMED = re.compile(r"\b(?i:response|answer|option|candidate)\s*#?\s*\(?\s*(\d+|[A-Z])\b\)?")
_LIST_MARK = re.compile(r"^\s*(?:\d+[.):]|[-*\u2022])\s+", re.MULTILINE)
_MARKUP = re.compile(r"<\|[^|>]*\|>|</?[A-Za-z_][\w-]*>")
_TIE = re.compile(r"(?<![<>!])=(?!>)|\btie[ds]?\b|\bequally\b|\bsame rank\b", re.IGNORECASE)


@dataclass
class Parsed:
    ranking: list[int] | None     # 0-based, best first; None when refused
    reason: str | None = None     # a key of REFUSALS when refused


def _index(token: str, k: int) -> int | None:
    """'2' -> 1, 'B' -> 1 (1-based in the text); None when out of 1..K."""
    if token.isdigit():
        i = int(token)
    elif len(token) == 1 and token.isalpha() and k <= 26:
        i = ord(token.upper()) - ord("A") + 1
    else:
        return None
    return i - 1 if 1 <= i <= k else None


def _finish(tokens: list[str], k: int) -> Parsed:
    if not tokens:
        return Parsed(None, "no_ranking")
    idx = [_index(t, k) for t in tokens]
    if any(i is None for i in idx):
        return Parsed(None, "out_of_range")
    if len(set(idx)) < len(idx):
        return Parsed(None, "duplicate")
    if len(idx) < k:
        return Parsed(None, "incomplete")
    return Parsed(idx)


def _segment_tokens(seg: str) -> tuple[list[str], str | None]:
    """Response tokens of one ordering segment (e.g. 'Response 2 > Response 1 > 3'), and the separator
    direction ('>' or '<'); named mentions take precedence over bare numbers / letters."""
    named = _NAMED.findall(seg)
    if named:
        tokens = named
    else:
        tokens = re.findall(r"(?<![\w.])(\d+)(?![\w.])", seg) or re.findall(r"(?<![\w.])([A-Z])(?![\w.])", seg)
    gt, lt = ">" in seg or "\u227b" in seg, "<" in seg or "\u227a" in seg
    direction = "mixed" if gt and lt else ("<" if lt else ">")
    return tokens, direction


def parse_ranking(text: str, k: int) -> Parsed:
    """The ranking (0-based, best first) of K responses in a judge's answer, or a refusal reason."""
    if not isinstance(text, str) or not text.strip():
        return Parsed(None, "no_ranking")
    text = _MARKUP.sub(" ", text)   # special tokens and tags (<|eot_id|>, </s>) are not orderings
    lines = [m.group(1) for m in _RANKING_LINE.finditer(text)]
    if lines:
        seg = lines[-1].strip()
    else:
        ordering = [ln for ln in text.splitlines() if re.search(r"[<>\u227b\u227a]", ln)]
        seg = ordering[-1] if ordering else None
    if seg is not None:
        if _TIE.search(seg):
            return Parsed(None, "tie")
        tokens, direction = _segment_tokens(seg)
        if direction == "mixed":
            return Parsed(None, "mixed_order")
        if direction == "<":
            tokens = tokens[::-1]
        return _finish(tokens, k)
    # a numbered list or free text: every named response in order of mention, list numbers dropped
    if _TIE.search(text):
        return Parsed(None, "tie")
    body = _LIST_MARK.sub("", text)
    named = _NAMED.findall(body)
    if not named:
        bare = re.findall(r"(?<![\w.])(\d+)(?![\w.])", body)
        if bare and len(bare) == len(body.replace(",", " ").split()):   # the answer is only numbers
            return _finish(bare, k)
        return Parsed(None, "no_ranking")
    return _finish(named, k)
