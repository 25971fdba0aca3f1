"""`fairhpc prepare-data` (fairhpc/prepare.py) on small HH-RLHF and SHP files written here."""

import json
from pathlib import Path

import pytest
import yaml

from fairhpc.cli import main
from fairhpc.errors import DataError
from fairhpc.formats import load_preferences
from fairhpc.prepare import PART_KINDS, Part, collect, prepare

REPO = Path(__file__).resolve().parents[1]


def hh(h, a, b):
    return {"chosen": f"\n\nHuman: {h}\n\nAssistant: {a}", "rejected": f"\n\nHuman: {h}\n\nAssistant: {b}"}


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def shp_row(post, i, labels, ratio=3.0, domain="askscience"):
    return {"post_id": post, "domain": domain, "history": f"question of {post}", "human_ref_A": f"A{i}",
            "human_ref_B": f"B{i}", "labels": labels, "score_ratio": ratio}


@pytest.fixture
def src(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    write_jsonl(d / "helpful-base.jsonl", [hh(f"q{i}", "good", "bad") for i in range(3)])
    # an HH row with an empty response: dropped and counted, as in the official files
    write_jsonl(d / "harmless-base.jsonl", [hh("how do I pick a lock", "I can't help", "sure"), hh("x", "", "y")])
    shp = [shp_row("p1", i, i % 2) for i in range(7)]
    shp += [shp_row("p2", 7, 1, ratio=1.5, domain="askculinary")]  # below the ratio
    shp += [shp_row("p3", 8, 0, ratio=2.0, domain=None)]  # at the ratio: kept; no domain
    write_jsonl(d / "shp.jsonl", shp)
    return d


def test_shp_filters_by_ratio_and_pairs_per_post_and_orders_by_label(src):
    rows, skipped = collect(Part(kind="shp", source=str(src / "shp.jsonl"), split="train"))
    assert skipped == {"score_ratio_below_min": 1, "over_max_pairs_per_prompt": 2}
    assert [r["category"] for r in rows] == ["shp/askscience"] * 5 + ["shp/unknown"]
    # labels 1: A preferred; labels 0: B preferred
    assert [r["chosen"][0]["content"] for r in rows] == ["B0", "A1", "B2", "A3", "B4", "B8"]
    assert [r["rejected"][0]["content"] for r in rows] == ["A0", "B1", "A2", "B3", "A4", "A8"]
    assert rows[0]["prompt"] == [{"role": "user", "content": "question of p1"}]
    strict, skipped = collect(Part(kind="shp", source=str(src / "shp.jsonl"), split="train", min_score_ratio=2.5,
                                   max_pairs_per_prompt=2))
    assert len(strict) == 2 and skipped == {"score_ratio_below_min": 2, "over_max_pairs_per_prompt": 5}


def test_a_row_that_is_not_shp_names_file_line_and_fields(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [shp_row("p", 0, 1), {"post_id": "p", "score_ratio": 3}])
    with pytest.raises(DataError, match=r"bad.jsonl: line 2: not an SHP row .*human_ref_A"):
        collect(Part(kind="shp", source=bad, split="train"))


def test_hh_rlhf_and_preferences_parts_keep_categories(src, tmp_path):
    rows, skipped = collect(Part(kind="hh_rlhf", source=str(src / "harmless-base.jsonl"), split="test"))
    assert len(rows) == 1 and rows[0]["category"] == "harmless" and sum(skipped.values()) == 1
    assert rows[0]["prompt"][-1]["content"] == "how do I pick a lock"
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "I can't help"}]
    prefs = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r", "category": "own"}])
    named, _ = collect(Part(kind="preferences", source=prefs, split="train", category="ultrafeedback"))
    own, _ = collect(Part(kind="preferences", source=prefs, split="train"))
    assert (named[0]["category"], own[0]["category"]) == ("ultrafeedback", "own")


def test_prepare_data_command_writes_what_the_trainer_reads(src, tmp_path, capsys):
    out = tmp_path / "train.jsonl"
    parts = [{"kind": "hh_rlhf", "source": str(src / "helpful-base.jsonl"), "split": "train"},
             {"kind": "hh_rlhf", "source": str(src / "harmless-base.jsonl"), "split": "train"},
             {"kind": "shp", "source": str(src / "shp.jsonl"), "split": "train", "max_pairs_per_prompt": 1}]
    assert main(["prepare-data", "--out", str(out), *map(json.dumps, parts)]) == 0
    exs, skipped = load_preferences(str(out))
    assert not skipped
    assert [e.category for e in exs] == ["helpful"] * 3 + ["harmless"] + ["shp/askscience", "shp/unknown"]
    stats = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [s["kept"] for s in stats] == [3, 1, 2]
    assert stats[2]["skipped"] == {"over_max_pairs_per_prompt": 6, "score_ratio_below_min": 1}
    assert stats[2]["part"]["min_score_ratio"] == 2.0  # the default, recorded


@pytest.mark.parametrize("part,needle", [
    ('{"kind": "shp", "source": "x.jsonl"}', "missing key 'split'"),
    ('{"kind": "shp", "source": "x.jsonl", "split": "train", "ratio": 2}', "unknown key 'ratio'"),
    ('{"kind": "csv", "source": "x.jsonl", "split": "train"}', "kind 'csv' is not one of hh_rlhf"),
    ("kind=shp", "not JSON"),
])
def test_bad_part_is_a_user_error(tmp_path, capsys, part, needle):
    assert main(["prepare-data", "--out", str(tmp_path / "o.jsonl"), part]) == 2
    assert needle in capsys.readouterr().err


def test_no_pairs_at_all_is_an_error_and_writes_nothing(tmp_path, src):
    out = tmp_path / "o.jsonl"
    with pytest.raises(DataError, match="gave no pairs"):
        prepare([Part(kind="shp", source=str(src / "shp.jsonl"), split="train", min_score_ratio=100)], str(out))
    assert not out.exists()


def test_part_kinds_and_defaults_are_the_workflow_schema():
    schema = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
    props = schema["$defs"]["parts"]["items"]["properties"]
    assert tuple(props["kind"]["enum"]) == PART_KINDS
    assert set(props) == set(Part.__dataclass_fields__)
    assert not any("default" in p for p in props.values())  # the defaults live in Part only
