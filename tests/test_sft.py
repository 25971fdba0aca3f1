"""The SFT task (fairhpc/tasks/sft.py): real DeepSpeed training of a tiny Llama on prompt-completion rows,
its held-out NLL checked against an independent computation, preference rows as targets, bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from learning import curve

from fairhpc.errors import DataError
from tests.test_train import read_metrics, run_cli

REPO = Path(__file__).resolve().parents[1]
FAST = ["data.max_length=96", "data.max_prompt_length=48", "train.micro_batch_size=16", "train.lr=2e-3",
        "train.save_steps=0", "train.log_steps=2", "train.epochs=3", "train.precision=fp32"]


def sft_rows(n: int, seed: int) -> list[dict]:
    """Prompt-completion rows whose target is the best of 4 synthetic candidates by true quality."""
    from fairhpc.rlchf.judges import synthetic_candidates
    from fairhpc.synthetic import word_counts

    out = []
    for r in synthetic_candidates(n, 4, seed):
        q = [word_counts(x)[0] - word_counts(x)[1] for x in r["responses"]]
        best = max(range(4), key=lambda c: (q[c], -c))
        out.append({"prompt": r["prompt"][0]["content"], "completion": r["responses"][best], "category": r["category"]})
    return out


def write(path, rows):
    Path(path).write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("sft")
    train, ev = write(d / "train.jsonl", sft_rows(240, 1)), write(d / "eval.jsonl", sft_rows(60, 2))
    out = d / "run"
    # no objective.mode given: train-sft defaults to the task's own mode
    res = run_cli(["train-sft", "model.name_or_path=tiny", f"data.train={train}", f"data.eval={ev}",
                   f"output_dir={out}", "train.eval_steps=10", *FAST])
    assert res.returncode == 0, res.stderr[-4000:]
    return out, ev


def _nll_per_token(model_dir, rows, run_cfg):
    """Mean target-token NLL from a full log-softmax, token by token (independent of sequence_logps)."""
    from fairhpc.data import tokenize_example
    from fairhpc.formats import PreferenceExample
    from fairhpc.models import load_policy
    from fairhpc.tokenizer import load_tokenizer

    tok = load_tokenizer(run_cfg.model.__class__(name_or_path=str(model_dir)))
    model = load_policy(str(model_dir), tokenizer=tok).eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for r in rows:
            msg = [{"role": "assistant", "content": r["completion"]}]
            ex = PreferenceExample(prompt=[{"role": "user", "content": r["prompt"]}], chosen=msg, rejected=msg)
            t = tokenize_example(ex, tok, run_cfg.data.max_length, run_cfg.data.max_prompt_length)
            ids, labels = t["chosen_input_ids"], t["chosen_labels"]
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
            for pos in range(1, len(ids)):
                if labels[pos] != -100:
                    total -= float(logp[pos - 1, labels[pos]])
                    n += 1
    return total / n


def test_sft_learns_and_reports_true_nll(sft_run):
    from fairhpc.config import load_config

    out, ev = sft_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "sft" and summary["mode"] == "sft"
    evals = [r for r in read_metrics(out) if r["split"] == "eval"]
    trains = [r for r in read_metrics(out) if r["split"] == "train"]
    learned = curve(out, eval_keys=("nll_per_token",))
    assert evals[-1]["nll_per_token"] < evals[0]["nll_per_token"] - 1.0, learned  # learns the synthetic language
    assert trains[-1]["loss"] < trains[0]["loss"] and trains[0]["tokens"] > 0, learned
    cfg = load_config(out / "config.yaml")
    rows = [json.loads(x) for x in Path(ev).read_text().splitlines()]
    assert summary["eval"]["nll_per_token"] == pytest.approx(_nll_per_token(out / "final", rows, cfg), rel=1e-3)
    assert set(summary["eval"]["nll_by_category"]) == {r["category"] for r in rows}
    stats = json.loads((out / "data_stats.json").read_text())
    assert stats["train"]["kept"] == 240 and stats["eval"]["kept"] == 60


def test_sft_on_preference_rows_uses_chosen(tmp_path):
    from fairhpc.config import load_config
    from fairhpc.tasks.sft import SFTTask
    from fairhpc.tokenizer import build_tokenizer

    f = write(tmp_path / "p.jsonl", [{"prompt": "q one", "chosen": "good answer", "rejected": "bad answer"},
                                     {"prompt": "q two", "chosen": "fine", "rejected": "poor"}])
    cfg = load_config(None, ["task=sft", f"data.train={f}", "data.eval=null"], task="sft")
    tok = build_tokenizer()
    train, ev, stats = SFTTask(cfg, tok).build_datasets()
    assert ev is None and len(train) == 2 and stats["train"]["kept"] == 2
    item = train[0]
    target = [t for t, lab in zip(item["input_ids"], item["labels"]) if lab != -100]
    assert tok.decode(target, skip_special_tokens=True).strip() == "good answer"


def test_sft_bad_rows(tmp_path):
    from fairhpc.config import load_config
    from fairhpc.tasks.sft import SFTTask
    from fairhpc.tokenizer import build_tokenizer

    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c"}, "{broken", {"prompt": "d", "completion": ""}]
    f = write(tmp_path / "s.jsonl", rows)
    cfg = load_config(None, ["task=sft", f"data.train={f}", "data.eval=null"], task="sft")
    with pytest.raises(DataError, match=r"s.jsonl: line 2: field 'completion': missing"):
        SFTTask(cfg, build_tokenizer()).build_datasets()
    cfg = load_config(None, ["task=sft", f"data.train={f}", "data.eval=null", "data.bad_rows=skip"], task="sft")
    train, _, stats = SFTTask(cfg, build_tokenizer()).build_datasets()
    assert len(train) == 1
    assert stats["train"]["skipped"] == {"missing_field": 1, "invalid_json": 1, "empty_response": 1}
    res = run_cli(["train-sft", f"data.train={f}", "data.eval=null", f"output_dir={tmp_path / 'r'}"])
    assert res.returncode == 2 and "line 2: field 'completion'" in res.stderr


def test_sft_mode_is_its_own():
    from fairhpc.config import ConfigError, load_config

    assert load_config(None, [], task="sft").objective.mode == "sft"
    with pytest.raises(ConfigError, match="mode 'fr' is not a sft mode; allowed for sft: sft"):
        load_config(None, ["objective.mode=fr"], task="sft")
