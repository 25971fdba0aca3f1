"""The judge-answer parser (fairhpc/rlchf/parse.py) on a corpus of messy LLM outputs: each with the
expected ranking (0-based, best first) or the expected refusal."""

from __future__ import annotations

import pytest

from fairhpc.rlchf.parse import REFUSALS, parse_ranking

CORPUS = [
    # (K, text, expected ranking or refusal reason)
    (3, "Ranking: Response 2 > Response 1 > Response 3", [1, 0, 2]),
    (3, "I looked at all three carefully.\nResponse 1 is rude.\nRanking: Response 3 > Response 2 > Response 1",
     [2, 1, 0]),
    (3, "Final ranking: 2 > 3 > 1", [1, 2, 0]),
    (4, "ranking - [3, 1, 4, 2]", [2, 0, 3, 1]),
    (3, "Response 2 > Response 1 > Response 3", [1, 0, 2]),
    (3, "My answer: Response 3 < Response 1 < Response 2", [1, 0, 2]),          # worst first
    (3, "B > A > C", [1, 0, 2]),
    (3, "[2, 3, 1]", [1, 2, 0]),
    (3, "2 1 3", [1, 0, 2]),
    (3, "1. Response 3\n2. Response 1\n3. Response 2", [2, 0, 1]),                # list numbers ignored
    (3, "Response #2 is clearly best, followed by Response #3, and Response #1 comes last.", [1, 2, 0]),
    (3, "As a nurse I prefer (Answer 3), then (Answer 1), then (Answer 2).", [2, 0, 1]),
    (3, "Ranking: Response 1 > Response 2 > Response 3\nRanking: Response 3 > Response 2 > Response 1",
     [2, 1, 0]),                                                                  # the last ranking line wins
    (3, "Ranking: I prefer Response 2 > Response 3 > Response 1.", [1, 2, 0]),
    # refusals: counted, never guessed
    (3, "Ranking: Response 1 = Response 2 > Response 3", "tie"),
    (3, "Responses 1 and 2 are tied; Response 3 is worst.", "tie"),
    (3, "Ranking: Response 2 > Response 1", "incomplete"),
    (4, "Response 2 is the best. Response 4 is good too.", "incomplete"),
    (3, "Ranking: Response 2 > Response 2 > Response 1", "duplicate"),
    (3, "Ranking: Response 4 > Response 2 > Response 1", "out_of_range"),
    (3, "Ranking: Response 0 > Response 2 > Response 1", "out_of_range"),
    (3, "I cannot decide, they are all fine.", "no_ranking"),
    (3, "", "no_ranking"),
    (3, "Response 1 > Response 2 < Response 3", "mixed_order"),
    (3, "Response 2 is great. Response 1 is worse than Response 2. Response 3 is worst.", "duplicate"),
    (3, "the the the assistant user Response", "no_ranking"),
    (3, "<|eot_id|> garbage 17 tokens 9", "no_ranking"),
]


@pytest.mark.parametrize("k, text, expected", CORPUS)
def test_corpus(k, text, expected):
    p = parse_ranking(text, k)
    if isinstance(expected, list):
        assert p.ranking == expected and p.reason is None, (text, p)
    else:
        assert p.ranking is None and p.reason == expected, (text, p)
        assert expected in REFUSALS


def test_every_refusal_reason_is_exercised():
    assert {e for _, _, e in CORPUS if isinstance(e, str)} == set(REFUSALS)
