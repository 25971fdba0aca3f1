"""A battery of bad inputs to `fairhpc train-rm` / `train-dpo`: each is refused with exit code 2 and a
message naming what is wrong, before any model is built or any step is taken (no checkpoint, no metrics).

The count of this table is the README's reliability figure.  The commands run in this process through
``fairhpc.cli.main``: a refusal returns before torch.distributed starts, so an input that were accepted
would start training here and fail the test (its output directory would appear).
"""

import json

import pytest

from fairhpc.cli import main


def _file(tmp_path, name, text):
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


GOOD = {"prompt": "Say hi", "chosen": "Hi there", "rejected": "Go away"}

# (label, extra arguments, text expected in the message); "{d}" is the data file written by the case
CASES = [
    ("lr inf", ["train.lr=.inf"], "train.lr"),
    ("lr nan", ["train.lr=.nan"], "train.lr"),
    ("lr negative", ["train.lr=-1"], "train.lr"),
    ("epochs nan", ["train.epochs=.nan"], "train.epochs"),
    ("epochs zero", ["train.epochs=0"], "train.epochs"),
    ("max_steps zero", ["train.max_steps=0"], "train.max_steps"),
    ("beta1 one", ["train.adam_beta1=1"], "train.adam_beta1"),
    ("beta2 negative", ["train.adam_beta2=-0.1"], "train.adam_beta2"),
    ("workers negative", ["train.num_workers=-1"], "train.num_workers"),
    ("micro batch zero", ["train.micro_batch_size=0"], "train.micro_batch_size"),
    ("grad accum bool", ["train.grad_accum=true"], "train.grad_accum"),
    ("zero stage 4", ["train.zero_stage=4"], "train.zero_stage"),
    ("precision", ["train.precision=fp8"], "train.precision"),
    ("bf16 on cpu", ["train.precision=bf16"], "train.precision"),
    ("scheduler", ["train.scheduler=step"], "train.scheduler"),
    ("warmup ratio 2", ["train.warmup_ratio=2"], "train.warmup_ratio"),
    ("grad norm inf", ["train.max_grad_norm=.inf"], "train.max_grad_norm"),
    ("unknown key", ["train.learning_rate=1"], "unknown key train.learning_rate"),
    ("unknown section", ["optim.lr=1"], "optim"),
    ("not key=value", ["lr"], "key=value"),
    ("mode of dpo", ["objective.mode=dpo"], "objective.mode"),
    ("mode unknown", ["objective.mode=xx"], "objective.mode"),
    ("tau 1", ["objective.mode=fr", "objective.tau=1"], "objective.tau"),
    ("fc tau 3", ["objective.mode=fc", "objective.tau=3"], "objective.tau"),
    ("tau nan", ["objective.tau=.nan"], "objective.tau"),
    ("alpha negative", ["objective.mode=fr", "objective.alpha=-1"], "objective.alpha"),
    ("gamma zero", ["objective.mode=fc", "objective.gamma=0"], "objective.gamma"),
    ("beta zero", ["objective.beta=0"], "objective.beta"),
    ("scope", ["objective.scope=world"], "objective.scope"),
    ("reduction", ["objective.reduction=max"], "objective.reduction"),
    ("hidden zero", ["model.tiny.hidden_size=0"], "model.tiny.hidden_size"),
    ("heads not dividing", ["model.tiny.num_attention_heads=5"], "model.tiny"),
    ("kv heads", ["model.tiny.num_key_value_heads=3"], "model.tiny"),
    ("dropout 1", ["model.tiny.attention_dropout=1"], "model.tiny.attention_dropout"),
    ("model path missing", ["model.name_or_path=/nonexistent/model"], "/nonexistent/model"),
    ("max length zero", ["data.max_length=0"], "data.max_length"),
    ("truncation side", ["data.truncation_side=middle"], "data.truncation_side"),
    ("data format", ["data.format=csvx"], "data.format"),
    ("data file missing", ["data.train=/nonexistent/prefs.jsonl"], "/nonexistent/prefs.jsonl"),
    ("data suffix", ["data.train={d}"], "{d}"),
    ("bad json line", ["data.train={d}", "data.eval=null"], "line 2"),
    ("missing field", ["data.train={d}", "data.eval=null"], "line 1"),
    ("invalid utf-8", ["data.train={d}", "data.eval=null"], "line 3"),
    ("unknown role", ["data.train={d}", "data.eval=null", "data.format=trl"], "line 1"),
    ("seed negative", ["seed=-1"], "seed"),
]
DATA = {
    "data suffix": ("prefs.txt", "hello"),
    "bad json line": ("bad.jsonl", json.dumps(GOOD) + "\n{not json\n"),
    "missing field": ("missing.jsonl", json.dumps({"prompt": "x", "chosen": "y"}) + "\n"),
    "invalid utf-8": ("utf8.jsonl", (json.dumps(GOOD) + "\n") * 2 + '{"prompt": "\xff"}\n'),
    "unknown role": ("trl.jsonl", json.dumps({"chosen": [{"role": "human", "content": "a"},
                                                         {"role": "gpt", "content": "b"}],
                                              "rejected": [{"role": "human", "content": "a"},
                                                           {"role": "gpt", "content": "c"}]}) + "\n"),
}


@pytest.mark.parametrize("label,args,needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_compute(tmp_path, capsys, label, args, needle):
    if label in DATA:
        name, text = DATA[label]
        data = _file(tmp_path, name, text.encode("latin-1") if label == "invalid utf-8" else text)
        args = [a.replace("{d}", str(data)) for a in args]
        needle = needle.replace("{d}", str(data))
    out = tmp_path / "run"
    code = main(["train-rm", f"output_dir={out}", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err, err
    assert err.startswith("fairhpc: ") and "Traceback" not in err
    assert not (out / "checkpoints").exists() and not (out / "metrics.jsonl").exists()


def test_the_table_is_what_the_readme_counts():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert f"{len(CASES)} bad inputs" in readme
