"""The one data-source layer: local path or hub name, file types, rows with exact lines, UTF-8 per line."""

import gzip
import json
from pathlib import Path

import pytest

from fairhpc.errors import DataError
from fairhpc.sources import DATA_SUFFIXES, file_kind, is_local_path, iter_rows, iter_source


def test_local_path_or_hub_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "rows").write_text("x")
    # local: exists, a data suffix, an explicit relative/absolute/home path, more parts than a hub id,
    # or a first part that is a local folder
    for s in ("rows", "missing.jsonl", "gone.csv.gz", "./x", "/abs/x", "~/x", "a/b/c", "runs/final"):
        assert is_local_path(s), s
    # hub: name or owner/name that is not here
    for s in ("imdb", "HuggingFaceH4/ultrafeedback_binarized", "allenai/reward-bench", "Anthropic/hh-rlhf"):
        assert not is_local_path(s), s


def test_file_kinds_and_the_one_suffix_list():
    from fairhpc import config

    assert config.DATA_SUFFIXES is DATA_SUFFIXES  # the config's file check uses this list, not a copy
    assert [file_kind(f"a{s}") for s in DATA_SUFFIXES] == ["jsonl", "json", "parquet", "csv"] * 2
    assert file_kind("a.txt") is None and file_kind("a.gz") is None


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: no such file; accepted: a .jsonl"):
        iter_source(str(tmp_path / "nope.jsonl"))
    (tmp_path / "rows.txt").write_text("a\n")
    with pytest.raises(DataError, match=r"rows.txt: unknown file type; accepted: a .jsonl, .json, .parquet or .csv file"):
        iter_source(str(tmp_path / "rows.txt"))
    with pytest.raises(DataError, match="no such file or directory"):
        iter_source(str(tmp_path / "a" / "b"))


def test_csv_records_start_lines_and_gzip(tmp_path):
    text = 'prompt,chosen,rejected\nq1,a,b\n"multi\nline q",c,d\n\nq3,e\n'
    for name in ("p.csv", "p.csv.gz"):
        path = tmp_path / name
        if name.endswith(".gz"):
            path.write_bytes(gzip.compress(text.encode()))
        else:
            path.write_text(text)
        rows = list(iter_rows(str(path)))
        assert [w for w, _ in rows] == [f"{path}: line 2", f"{path}: line 3", f"{path}: line 6"]
        assert rows[1][1] == {"prompt": "multi\nline q", "chosen": "c", "rejected": "d"}
        assert rows[2][1] == {"prompt": "q3", "chosen": "e", "rejected": None}  # a short record: None
    (tmp_path / "wide.csv").write_text("a,b\n1,2\n1,2,3\n")
    with pytest.raises(DataError, match=r"wide.csv: line 3: more fields than the header's 2"):
        list(iter_rows(str(tmp_path / "wide.csv")))


@pytest.mark.parametrize("name", ["r.jsonl", "r.jsonl.gz", "r.csv"])
def test_invalid_utf8_is_reported_at_its_line_and_the_rest_is_read(tmp_path, name):
    """Decoding line by line: the bad byte on line 300 of 400 is reported at line 300 (decoding in chunks
    reported the line before the chunk), and the lines after it are still read."""
    if name.endswith(".csv"):
        lines = [b"prompt,chosen,rejected"] + [f"q{i},a{i},b{i}".encode() for i in range(2, 401)]
    else:
        lines = [json.dumps({"i": i, "text": "x" * 40}).encode() for i in range(1, 401)]
    lines[299] = lines[299].replace(b"x", b"\xff", 1) if b"x" in lines[299] else b"q300,\xff,b"
    data = b"\n".join(lines) + b"\n"
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    rows = list(iter_source(str(path)))
    bad = [r for r in rows if r.error is not None]
    assert len(bad) == 1 and bad[0].error.reason == "invalid_utf8"
    assert str(bad[0].error).startswith(f"{path}: line 300: not UTF-8 text"), str(bad[0].error)
    assert len(rows) == (399 if name.endswith(".csv") else 400)
    assert rows[-1].where == f"{path}: line 400" and rows[-1].error is None
    with pytest.raises(DataError, match=rf"{path}: line 300: not UTF-8"):
        list(iter_rows(str(path)))


def test_json_array_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(b'[\n {"a": 1},\n {"a": "\xff"}\n]')
    with pytest.raises(DataError, match=rf"{path}: line 3: not UTF-8 text"):
        list(iter_source(str(path)))


def test_rows_must_be_objects(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=rf"{path}: line 2: expected an object, got list"):
        list(iter_rows(str(path)))
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(DataError, match=rf"{path}: line 2: invalid JSON"):
        list(iter_rows(str(path)))


def test_dataset_directory_all_splits_and_class_labels(tmp_path):
    import datasets

    feats = datasets.Features({"text": datasets.Value("string"),
                               "kind": datasets.ClassLabel(names=["stereo", "antistereo"])})
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a"], "kind": [1]}, features=feats),
                               "test": datasets.Dataset.from_dict({"text": ["b", "c"], "kind": [0, 1]},
                                                                  features=feats)})
    d = tmp_path / "ds"
    dd.save_to_disk(str(d))
    rows = [(r.where, r.value) for r in iter_source(str(d), None)]
    assert rows == [(f"{d}[train]: row 0", {"text": "a", "kind": "antistereo", "_split": "train"}),
                    (f"{d}[test]: row 0", {"text": "b", "kind": "stereo", "_split": "test"}),
                    (f"{d}[test]: row 1", {"text": "c", "kind": "antistereo", "_split": "test"})]
    assert [w for w, _ in iter_rows(str(d))] == [f"{d}[test]: row 0", f"{d}[test]: row 1"]  # default: test
    with pytest.raises(DataError, match="no split 'dev'; splits: train, test"):
        list(iter_source(str(d), "dev"))
    assert Path(d).is_dir()


def test_a_byte_order_mark_is_read_as_text(tmp_path):
    row = {"prompt": "a", "chosen": "b", "rejected": "c"}
    bom = b"\xef\xbb\xbf"
    (tmp_path / "r.jsonl").write_bytes(bom + (json.dumps(row) + "\n").encode())
    (tmp_path / "r.json").write_bytes(bom + json.dumps([row]).encode())
    (tmp_path / "r.csv").write_bytes(bom + b"prompt,chosen,rejected\na,b,c\n")
    for name in ("r.jsonl", "r.json", "r.csv"):
        rows = [r.value for r in iter_source(str(tmp_path / name))]
        assert rows == [row], name


@pytest.mark.parametrize("what", ["directory", "directory.jsonl", "empty", "truncated gz"])
def test_unusable_local_paths_name_the_path_and_what_is_accepted(tmp_path, what):
    if what == "directory":
        path = tmp_path / "rows"
        path.mkdir()
    elif what == "directory.jsonl":
        path = tmp_path / "rows.jsonl"
        path.mkdir()
    elif what == "empty":
        path = tmp_path / "rows.jsonl"
        path.write_bytes(b"")
    else:
        import gzip

        whole = gzip.compress(b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n' * 50)
        path = tmp_path / "rows.jsonl.gz"
        path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError) as e:
        list(iter_source(str(path)))
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    assert "accepted: a .jsonl, .json, .parquet or .csv file" in msg
