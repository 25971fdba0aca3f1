"""Preference data: formats, file types, bad rows, tokenization/truncation, collator, run datasets."""

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from fairhpc.data import (
    DataError,
    PreferenceCollator,
    PreferenceDataset,
    PreferenceExample,
    build_datasets,
    load_preferences,
    render_messages,
    synthetic_examples,
    tokenize_example,
)

# CI checks out the repository next to the shared folder
HH_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"

U1 = {"role": "user", "content": "how do i water a garden ?"}
A1 = {"role": "assistant", "content": "in the morning ."}
U2 = {"role": "user", "content": "and in winter ?"}
GOOD = {"role": "assistant", "content": "less often , when the soil is dry ."}
BAD = {"role": "assistant", "content": "never ."}
PROMPT = [U1, A1, U2]

# the same two pairs in the three formats
STANDARD = [{"chosen": [*PROMPT, GOOD], "rejected": [*PROMPT, BAD], "category": "helpful", "id": 1},
            {"chosen": [U1, GOOD], "rejected": [U1, BAD], "category": "harmless", "id": 2}]
TRL = [{"prompt": PROMPT, "chosen": GOOD["content"], "rejected": [BAD], "category": "helpful", "id": 1},
       {"prompt": U1["content"], "chosen": [GOOD], "rejected": BAD["content"], "category": "harmless",
        "id": 2}]


def _hh(messages):
    return "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in messages)


HH = [{"chosen": _hh([*PROMPT, GOOD]), "rejected": _hh([*PROMPT, BAD]), "category": "helpful", "id": 1},
      {"chosen": _hh([U1, GOOD]), "rejected": _hh([U1, BAD]), "category": "harmless", "id": 2}]


def write_jsonl(path, rows, raw_lines=()):
    """JSONL file; ``raw_lines`` = {line number: text} replaces those lines verbatim."""
    lines = [json.dumps(r) for r in rows]
    for k, v in dict(raw_lines).items():
        lines[k - 1] = v
    text = "\n".join(lines) + "\n"
    path = Path(path)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return str(path)


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def _check_two_pairs(exs, path):
    assert len(exs) == 2
    assert exs[0].prompt == PROMPT and exs[0].chosen == [GOOD] and exs[0].rejected == [BAD]
    assert exs[1].prompt == [U1] and exs[1].chosen == [GOOD] and exs[1].rejected == [BAD]
    assert [e.category for e in exs] == ["helpful", "harmless"]
    assert [e.meta for e in exs] == [{"id": 1}, {"id": 2}]
    assert exs[0].source.startswith(str(path))


# ------------------------------------------------------------------------------------------- formats
@pytest.mark.parametrize("rows,fmt", [(STANDARD, "standard"), (TRL, "trl"), (HH, "hh")])
def test_each_format_auto_and_explicit(tmp_path, rows, fmt):
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    for f in ("auto", fmt):
        exs, skipped = load_preferences(path, fmt=f)
        _check_two_pairs(exs, path)
        assert skipped == Counter()
    assert [e.source for e in exs] == [f"{path}:1", f"{path}:2"]


def test_trl_responses_repeating_the_prompt_are_stripped(tmp_path):
    # UltraFeedback-binarized: prompt string, chosen/rejected = [user prompt, assistant reply]
    row = {"prompt": U1["content"], "chosen": [U1, GOOD], "rejected": [U1, BAD], "score_chosen": 8.0}
    exs, _ = load_preferences(write_jsonl(tmp_path / "uf.jsonl", [row]))
    assert exs[0].prompt == [U1] and exs[0].chosen == [GOOD] and exs[0].rejected == [BAD]
    assert exs[0].meta == {"score_chosen": 8.0} and exs[0].category is None


def test_hh_prompt_is_everything_before_the_last_assistant_turn(tmp_path):
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: goodbye"
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: no"
    exs, _ = load_preferences(write_jsonl(tmp_path / "hh.jsonl", [{"chosen": chosen, "rejected": rejected}]))
    assert exs[0].prompt == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                             {"role": "user", "content": "bye"}]
    assert exs[0].chosen == [{"role": "assistant", "content": "goodbye"}]
    assert exs[0].rejected == [{"role": "assistant", "content": "no"}]


@pytest.mark.parametrize("name", ["p.jsonl.gz", "p.parquet", "p.json", "p.json.gz", "p.parquet.gz"])
def test_file_types(tmp_path, name):
    path = tmp_path / name
    if ".parquet" in name:
        write_parquet(tmp_path / "x.parquet", STANDARD)
        data = (tmp_path / "x.parquet").read_bytes()
        path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
        first = f"{path}:row 0"
    elif ".jsonl" in name:
        write_jsonl(path, TRL)
        first = f"{path}:1"
    else:
        text = json.dumps(HH, indent=1)
        path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
        first = f"{path}:row 0"
    exs, _ = load_preferences(str(path))
    _check_two_pairs(exs, path)
    assert exs[0].source == first


def test_dataset_directory_through_datasets(tmp_path):
    """The hub code path (datasets.load_dataset) on a local dataset directory; and save_to_disk output."""
    import datasets

    d = tmp_path / "hubdata"
    d.mkdir()
    write_jsonl(d / "train.jsonl", STANDARD[:1])  # STANDARD: arrow needs one type per column
    write_jsonl(d / "test.jsonl", STANDARD)
    exs, _ = load_preferences(str(d), split="test")
    _check_two_pairs(exs, d)
    assert exs[1].source == f"{d}[test]:row 1"
    assert len(load_preferences(str(d), split="train")[0]) == 1

    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(STANDARD)}).save_to_disk(str(saved))
    _check_two_pairs(load_preferences(str(saved), split="train")[0], saved)
    with pytest.raises(DataError, match="no split 'test'"):
        load_preferences(str(saved), split="test")


def test_limit(tmp_path):
    exs, _ = load_preferences(write_jsonl(tmp_path / "p.jsonl", TRL * 5), limit=3)
    assert len(exs) == 3


# ------------------------------------------------------------------------------------------ bad input
BAD_CASES = [
    # (rows or raw lines, line, field, words in the message, reason)
    ({2: json.dumps({"prompt": "q", "chosen": "a"})}, 2, "'rejected'", "missing", "missing_field"),
    ({2: json.dumps({"prompt": "q", "chosen": "  ", "rejected": "b"})}, 2, "'chosen'", "empty response",
     "empty_response"),
    ({3: json.dumps({"prompt": "q", "chosen": 5, "rejected": "b"})}, 3, "'chosen'", "got int 5",
     "wrong_type"),
    ({2: json.dumps({"prompt": "q", "chosen": "same", "rejected": "same"})}, 2, "'chosen'", "identical",
     "identical"),
    ({3: '{"prompt": "q", "chosen": "a", "rejected": '}, 3, None, "invalid JSON", "invalid_json"),
    ({2: json.dumps({"prompt": "q", "chosen": [{"role": "assistant"}], "rejected": "b"})}, 2,
     "'chosen[0].content'", "missing", "missing_field"),
    ({2: json.dumps({"prompt": "q", "chosen": "a", "rejected": "b", "category": 3})}, 2, "'category'",
     "expected a string", "wrong_type"),
    ({2: json.dumps(["q", "a", "b"])}, 2, None, "expected an object", "not_an_object"),
]


@pytest.mark.parametrize("raw,line,field,words,reason", BAD_CASES)
def test_bad_row_error_names_file_line_field(tmp_path, raw, line, field, words, reason):
    path = write_jsonl(tmp_path / "bad.jsonl", TRL * 2, raw)
    with pytest.raises(DataError) as e:
        load_preferences(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: line {line}:") and words in msg, msg
    if field:
        assert f"field {field}" in msg
    assert e.value.reason == reason
    exs, skipped = load_preferences(path, bad_rows="skip")
    assert skipped == Counter({reason: 1}) and len(exs) == 3


def test_bad_rows_in_standard_and_hh_files(tmp_path):
    rows = [STANDARD[0], {"chosen": [U1, GOOD], "rejected": [U1]}]  # rejected is only the prompt
    with pytest.raises(DataError, match=r"std.jsonl: line 2: field 'rejected': empty response"):
        load_preferences(write_jsonl(tmp_path / "std.jsonl", rows))
    rows = [HH[0], {"chosen": HH[0]["chosen"], "rejected": 17}]
    with pytest.raises(DataError, match=r"hh.jsonl: line 2: field 'rejected': expected an HH-RLHF"):
        load_preferences(write_jsonl(tmp_path / "hh.jsonl", rows))
    rows = [HH[0], {"chosen": "no markers here", "rejected": HH[0]["rejected"]}]
    with pytest.raises(DataError, match=r"hh2.jsonl: line 2: field 'chosen': not an HH-RLHF transcript"):
        load_preferences(write_jsonl(tmp_path / "hh2.jsonl", rows), fmt="hh")


def test_bad_row_in_parquet_names_the_row(tmp_path):
    rows = [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "x", "rejected": "x"}]
    path = write_parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(DataError, match=r"bad\.parquet: row 1: field 'chosen': identical"):
        load_preferences(path)


@pytest.mark.parametrize("kind", ["missing", "missing_dir", "corrupt_gzip", "truncated_gzip", "json_array",
                                  "not_parquet", "empty_dataset_dir", "unknown_suffix"])
def test_unreadable_files(tmp_path, kind):
    if kind == "missing":
        path, words = str(tmp_path / "nope.jsonl"), "no such file"
    elif kind == "corrupt_gzip":
        path, words = str(tmp_path / "c.jsonl.gz"), "corrupt or truncated gzip"
        Path(path).write_bytes(b"this is not gzip data at all")
    elif kind == "truncated_gzip":
        path, words = str(tmp_path / "t.jsonl.gz"), "corrupt or truncated gzip"
        Path(path).write_bytes(gzip.compress(("\n".join(json.dumps(r) for r in TRL * 200)).encode())[:300])
    elif kind == "json_array":
        path, words = str(tmp_path / "a.json"), "line 3: invalid JSON"
        Path(path).write_text('[\n {"prompt": "q",\n  "chosen": }\n]')
    elif kind == "not_parquet":
        path, words = str(tmp_path / "x.parquet"), "cannot read Parquet"
        Path(path).write_text("not parquet")
    elif kind == "missing_dir":
        path, words = str(tmp_path / "no_such_dataset_dir"), "no such file or directory"
    elif kind == "empty_dataset_dir":  # refused before datasets.load_dataset, which finds no data files
        path, words = str(tmp_path / "empty"), "a directory with no data files in it"
        Path(path).mkdir()
    else:
        path, words = str(tmp_path / "rows.txt"), "unknown file type"
        Path(path).write_text("prompt,chosen,rejected\n")
    with pytest.raises(DataError) as e:
        load_preferences(path, bad_rows="skip")  # whole-file problems are never skipped
    assert str(e.value).startswith(path) and words in str(e.value), str(e.value)


@pytest.mark.parametrize("name", ["u.jsonl", "u.jsonl.gz"])
def test_invalid_utf8_at_the_true_line_and_skippable(tmp_path, name):
    """Issue 15.8: a bad byte on line 300 is reported at line 300 (chunked decoding said "after line 247")
    and ``bad_rows: skip`` drops that one row and reads on."""
    lines = [json.dumps(r).encode() for r in TRL * 200]
    lines[299] = lines[299].replace(b'"prompt"', b'"pr\xffompt"')
    data = b"\n".join(lines) + b"\n"
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    with pytest.raises(DataError) as e:
        load_preferences(str(path))
    assert str(e.value).startswith(f"{path}: line 300: not UTF-8 text"), str(e.value)
    assert e.value.reason == "invalid_utf8"
    exs, skipped = load_preferences(str(path), bad_rows="skip")
    assert skipped == Counter(invalid_utf8=1) and len(exs) == 399
    assert exs[-1].source == f"{path}:400"


@pytest.mark.parametrize("fmt", ["trl", "standard"])
def test_unknown_roles_are_refused_in_every_format(tmp_path, fmt):
    """Issue 15.9: ShareGPT roles (human / gpt) are refused in TRL rows as in standard rows, never rendered
    as "Gpt: ..."."""
    human, gpt = {"role": "human", "content": "hi"}, {"role": "gpt", "content": "hello"}
    bad = ({"prompt": [human], "chosen": [gpt], "rejected": [BAD]} if fmt == "trl"
           else {"chosen": [human, gpt], "rejected": [human, BAD]})
    path = write_jsonl(tmp_path / "roles.jsonl", [*(TRL if fmt == "trl" else STANDARD), bad])
    with pytest.raises(DataError) as e:
        load_preferences(path, fmt=fmt)
    assert str(e.value).startswith(f"{path}: line 3: field ") and "unknown role 'human'" in str(e.value)
    assert "allowed: system, user, assistant" in str(e.value) and e.value.reason == "bad_conversation"
    bad = {"prompt": "hi", "chosen": [{"role": "gpt", "content": "x"}], "rejected": "y"}
    path = write_jsonl(tmp_path / "roles2.jsonl", [*TRL, bad])
    with pytest.raises(DataError, match=r"line 3: field 'chosen\[0\].role': unknown role 'gpt'"):
        load_preferences(path)
    exs, skipped = load_preferences(path, bad_rows="skip")
    assert len(exs) == 2 and skipped == Counter(bad_conversation=1)


def test_csv_file_of_transcripts(tmp_path):
    """CSV cells are strings: HH transcripts (or TRL strings) with a category; lines are 1-based with the
    header on line 1."""
    import csv

    path = tmp_path / "p.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["chosen", "rejected", "category", "id"])
        w.writeheader()
        w.writerows(HH)
    exs, _ = load_preferences(str(path))
    assert [e.prompt for e in exs] == [PROMPT, [U1]] and [e.chosen for e in exs] == [[GOOD], [GOOD]]
    assert [e.category for e in exs] == ["helpful", "harmless"] and [e.meta for e in exs] == [{"id": "1"},
                                                                                              {"id": "2"}]
    first_record_lines = 1 + HH[0]["chosen"].count("\n") + HH[0]["rejected"].count("\n")
    assert [e.source for e in exs] == [f"{path}:2", f"{path}:{2 + first_record_lines}"]


def test_skip_policy_counts_reasons(tmp_path):
    rows = TRL * 4
    raw = {2: "{not json",
           3: json.dumps({"prompt": "q", "chosen": "a"}),
           5: json.dumps({"prompt": "q", "chosen": 1, "rejected": "b"}),
           6: json.dumps({"prompt": "q", "chosen": "c", "rejected": "c"}),
           7: json.dumps({"prompt": "q", "chosen": "", "rejected": "b"})}
    exs, skipped = load_preferences(write_jsonl(tmp_path / "mix.jsonl", rows, raw), bad_rows="skip")
    assert len(exs) == 3 and [e.source.rsplit(":", 1)[1] for e in exs] == ["1", "4", "8"]
    assert skipped == Counter(invalid_json=1, missing_field=1, wrong_type=1, identical=1, empty_response=1)


def test_auto_detection_skips_undecidable_first_rows(tmp_path):
    # the first row says nothing about the format (chosen missing); the second row decides: standard
    path = write_jsonl(tmp_path / "p.jsonl", [{"rejected": [U1, BAD]}, *STANDARD])
    with pytest.raises(DataError, match=r"line 1: field 'chosen': missing"):
        load_preferences(path)
    exs, skipped = load_preferences(path, bad_rows="skip")
    assert len(exs) == 2 and skipped == Counter(missing_field=1)
    # no row tells the format
    path = write_jsonl(tmp_path / "q.jsonl", [{"chosen": "plain text", "rejected": "other"}])
    with pytest.raises(DataError, match=r"line 1: cannot tell the row format"):
        load_preferences(path)


@pytest.mark.skipif(not HH_SAMPLE.exists(), reason="shared HH-RLHF sample not present")
def test_real_hh_rlhf_sample():
    """Anthropic HH-RLHF harmless-base test: a few rows end with an empty assistant turn."""
    with gzip.open(HH_SAMPLE, "rt") as f:
        rows = [json.loads(x) for x in f]

    def blank_last_turn(t):
        return not t[t.rfind("\n\nAssistant:") + len("\n\nAssistant:"):].strip()

    bad = [i + 1 for i, r in enumerate(rows)
           if blank_last_turn(r["chosen"]) or blank_last_turn(r["rejected"])]
    assert bad  # the sample does contain such rows
    with pytest.raises(DataError, match=rf"line {bad[0]}: field '(chosen|rejected)': empty response"):
        load_preferences(str(HH_SAMPLE))
    exs, skipped = load_preferences(str(HH_SAMPLE), bad_rows="skip")
    assert skipped == Counter(empty_response=len(bad)) and len(exs) == len(rows) - len(bad)
    normal = [e for e in exs if len(e.chosen) == len(e.rejected) == 1]
    assert len(normal) > 0.99 * len(exs)
    for e in normal[:200]:
        assert e.prompt[0]["role"] == "user" and e.prompt[-1]["role"] == "user"
        assert e.chosen[0]["role"] == e.rejected[0]["role"] == "assistant"


# -------------------------------------------------------------------------------------- tokenization
@pytest.fixture(scope="module")
def tok():
    from fairhpc.tokenizer import build_tokenizer

    return build_tokenizer()


def _ex(prompt_words=5, chosen_words=3, rejected_words=2, category=None):
    words = [f"w{i}" for i in range(prompt_words)]
    chosen, rejected = " ".join(["clear"] * chosen_words), " ".join(["vague"] * rejected_words)
    return PreferenceExample(prompt=[{"role": "user", "content": " ".join(words)}],
                             chosen=[{"role": "assistant", "content": chosen}],
                             rejected=[{"role": "assistant", "content": rejected}],
                             category=category, source="test:1", meta={})


def test_labels_mask_the_prompt(tok):
    ex = _ex()
    t = tokenize_example(ex, tok, max_length=256, max_prompt_length=128)
    prompt_text = render_messages(tok, ex.prompt, add_generation_prompt=True)
    p = tok(prompt_text, add_special_tokens=False).input_ids
    for side, resp in (("chosen", ex.chosen), ("rejected", ex.rejected)):
        ids, labels = t[f"{side}_input_ids"], t[f"{side}_labels"]
        assert ids[:len(p)] == p and labels[:len(p)] == [-100] * len(p)
        assert labels[len(p):] == ids[len(p):] and -100 not in labels[len(p):]
        # the whole conversation is exactly the chat-template rendering
        assert tok.decode(ids) == render_messages(tok, ex.prompt + resp)
        assert tok.decode(ids[len(p):]) == resp[0]["content"] + "<|eot_id|>"


def test_truncation_left_keeps_bos_response_and_latest_prompt(tok):
    ex = _ex(prompt_words=60, chosen_words=30, rejected_words=10)
    full = tokenize_example(ex, tok, max_length=1000, max_prompt_length=999)
    n_prompt = full["chosen_labels"].count(-100)
    p_full, c_full = full["chosen_input_ids"][:n_prompt], full["chosen_input_ids"][n_prompt:]
    r_full = full["rejected_input_ids"][n_prompt:]
    assert n_prompt > 60 and len(c_full) == 31  # 30 words + <|eot_id|>

    t = tokenize_example(ex, tok, max_length=64, max_prompt_length=20, truncation_side="left")
    for side, resp in (("chosen", c_full), ("rejected", r_full)):
        ids, labels = t[f"{side}_input_ids"], t[f"{side}_labels"]
        assert len(ids) <= 64
        k = labels.count(-100)
        # the prompt is cut only as far as the longer response needs: 64 - 31 = 33 tokens (> 20)
        assert k == 64 - len(c_full)
        assert ids[0] == tok.bos_token_id and ids[1:k] == p_full[-(k - 1):]  # oldest tokens dropped
        assert ids[k:] == resp  # the response is kept whole
    assert t["chosen_input_ids"][:33] == t["rejected_input_ids"][:33]  # one prompt for both

    # a response longer than max_length - max_prompt_length: prompt at max_prompt_length, response cut
    t = tokenize_example(ex, tok, max_length=40, max_prompt_length=20, truncation_side="left")
    assert t["chosen_labels"].count(-100) == 20 and len(t["chosen_input_ids"]) == 40
    assert t["chosen_input_ids"][20:] == c_full[:20]
    assert t["rejected_input_ids"][20:] == r_full  # 11 tokens fit


def test_truncation_right_keeps_the_start_of_the_prompt(tok):
    ex = _ex(prompt_words=60, chosen_words=30, rejected_words=10)
    full = tokenize_example(ex, tok, max_length=1000, max_prompt_length=999)
    n_prompt = full["chosen_labels"].count(-100)
    t = tokenize_example(ex, tok, max_length=64, max_prompt_length=20, truncation_side="right")
    k = t["chosen_labels"].count(-100)
    assert k == 33 and t["chosen_input_ids"][:k] == full["chosen_input_ids"][:k]
    assert t["chosen_input_ids"][k:] == full["chosen_input_ids"][n_prompt:]
    # nothing is cut when everything fits
    assert tokenize_example(ex, tok, max_length=n_prompt + 31, max_prompt_length=20) == full


def test_tokenize_with_plain_template_and_auto_bos():
    """A tokenizer without chat template: HH-style rendering, bos prepended because plain encoding adds it."""
    from fairhpc.tokenizer import build_tokenizer

    plain = build_tokenizer()
    plain.chat_template = None
    ex = _ex(prompt_words=2)
    t = tokenize_example(ex, plain, 128, 64)
    assert t["chosen_input_ids"][0] == plain.bos_token_id
    assert plain.decode(t["chosen_input_ids"]) == \
        "<|begin_of_text|>\n\nHuman: w0 w1\n\nAssistant: clear clear clear<|eot_id|>"
    k = t["chosen_labels"].count(-100)
    assert plain.decode(t["chosen_input_ids"][k:]) == " clear clear clear<|eot_id|>"


def test_dataset_and_collator(tok):
    from fairhpc.config import DataConfig

    exs = [_ex(3, 2, 5, "b"), _ex(8, 4, 1, "a"), _ex(1, 1, 1, None)]
    ds = PreferenceDataset(exs, tok, DataConfig(max_length=64, max_prompt_length=32))
    assert ds.categories == ["a", "b"] and [ds[i]["category_id"] for i in range(3)] == [1, 0, -1]
    assert [ds[i]["index"] for i in range(3)] == [0, 1, 2]
    batch = PreferenceCollator(tok.pad_token_id)([ds[2], ds[0], ds[1]])
    lc = [len(ds[i]["chosen_input_ids"]) for i in (2, 0, 1)]
    lr = [len(ds[i]["rejected_input_ids"]) for i in (2, 0, 1)]
    assert batch["chosen_input_ids"].shape == batch["chosen_labels"].shape == (3, max(lc))
    assert batch["rejected_attention_mask"].shape == (3, max(lr)) and max(lr) != max(lc)
    assert batch["chosen_attention_mask"].sum(1).tolist() == lc
    assert batch["rejected_attention_mask"].sum(1).tolist() == lr
    assert batch["index"].tolist() == [2, 0, 1] and batch["category_id"].tolist() == [-1, 1, 0]
    row = 0  # the shortest: right padding with pad id, labels -100, mask 0
    assert batch["chosen_input_ids"][row, :lc[0]].tolist() == ds[2]["chosen_input_ids"]
    assert (batch["chosen_input_ids"][row, lc[0]:] == tok.pad_token_id).all()
    assert (batch["chosen_labels"][row, lc[0]:] == -100).all()
    assert (batch["chosen_attention_mask"][row, lc[0]:] == 0).all()
    assert str(batch["chosen_input_ids"].dtype) == "torch.int64"
    with pytest.raises(ValueError, match="pad token"):
        PreferenceCollator(None)


# ---------------------------------------------------------------------------------------- run datasets
def test_build_datasets_synthetic(tok):
    from fairhpc.config import load_config
    from fairhpc.synthetic import generate_pairs, oracle_accuracy

    cfg = load_config(None, ["data.synthetic.n_train=60", "data.synthetic.n_eval=20",
                             "data.max_train_examples=50"])
    train, ev, stats = build_datasets(cfg, tok)
    assert (len(train), len(ev)) == (50, 20) and train.categories == ["harmless", "helpful", "honest"]
    assert stats["train"]["kept"] == 50 and stats["eval"]["rows_read"] == 20
    assert stats["eval"]["synthetic"]["oracle_accuracy"] == pytest.approx(
        oracle_accuracy(generate_pairs(20, cfg.data.synthetic.seed + 1, 1.0)))
    assert sum(stats["train"]["categories"].values()) == 50
    assert stats["train"]["tokens"]["prompt_truncated"] == 0
    json.dumps(stats)  # goes to data_stats.json
    # the ground truth travels in meta
    assert train.examples[0].meta["p_chosen"] == generate_pairs(1, cfg.data.synthetic.seed)[0]["p_chosen"]


def test_synthetic_examples_equal_written_files(tmp_path):
    from fairhpc.config import load_config
    from fairhpc.synthetic import write_synthetic

    cfg = load_config(None, ["data.synthetic.n_train=30", "data.synthetic.n_eval=10"])
    paths = write_synthetic(tmp_path, cfg.data)
    for split in ("train", "eval"):
        mem = synthetic_examples(cfg.data, split)
        disk, _ = load_preferences(paths[split])
        strip = [(e.prompt, e.chosen, e.rejected, e.category, e.meta) for e in mem]
        assert strip == [(e.prompt, e.chosen, e.rejected, e.category, e.meta) for e in disk]


def test_build_datasets_from_files_records_skips(tok, tmp_path):
    from fairhpc.config import load_config

    train = write_jsonl(tmp_path / "train.jsonl", TRL * 3, {2: json.dumps({"prompt": "q", "chosen": "a"})})
    cfg = load_config(None, [f"data.train={train}", "data.eval=null", "data.bad_rows=skip"])
    tr, ev, stats = build_datasets(cfg, tok)
    assert ev is None and len(tr) == 5
    assert stats["train"]["rows_read"] == 6 and stats["train"]["skipped"] == {"missing_field": 1}
    cfg = load_config(None, [f"data.train={train}", "data.eval=null"])
    with pytest.raises(DataError, match="train.jsonl: line 2: field 'rejected': missing"):
        build_datasets(cfg, tok)
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"prompt": "q", "chosen": "a"}])
    cfg = load_config(None, [f"data.train={empty}", "data.eval=null", "data.bad_rows=skip"])
    with pytest.raises(DataError, match="no usable preference pairs"):
        build_datasets(cfg, tok)
