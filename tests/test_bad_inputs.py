"""Bad inputs to `fairhpc train-rm` (CASES) and to every subcommand of `fairhpc --help` (COMMANDS): each is
refused with exit code 2 and a one-line message naming what is wrong, before any model is built or any step
is taken (no checkpoint, no metrics, nothing in the output directory).

The count of both tables is the README's reliability figure.  The commands run in this process through
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
    assert f"{len(CASES) + len(EVERY)} bad inputs" in readme


# ------------------------------------------------------------------------------------ every subcommand
# For each subcommand of `fairhpc --help`: (label, arguments, text expected in the message).  In the
# arguments "{t}" is the test's directory, holding the files of _inputs, and "{out}" the output path the
# command is given (a directory, or a file in it); nothing may appear under {t}/out.  At least three per
# command: a bad value of its own options or keys, a missing or wrong-kind path, a bad row or file of the
# format it reads.
RUN = ["output_dir={out}"]
PAIRS = ["--data", "{t}/prefs.jsonl", "--out", "{out}"]
EVAL_POLICY = ["--policy", "{t}/policy", "--reference", "{t}/policy", "--reward-model", "{t}/rm", "--out", "{out}"]
BON = ["--policy", "{t}/policy", "--reward-model", "{t}/rm", "--out", "{out}"]
GEN = ["--policy", "{t}/policy", "--iteration", "1", "--iterations", "1", "--out", "{out}/samples.jsonl"]
OEVAL = ["--policy", "{t}/policy", "--reward-model", "{t}/rm", "--out", "{out}"]
RANK = ["--candidates", "{t}/candidates.jsonl", "--personas", "{t}/personas.jsonl", "--out", "{out}/r.jsonl"]
COMMANDS = {
    "config-help": [
        ("unknown option", ["--mardown"], "--mardown"),
        ("value for a flag", ["--markdown=yes"], "--markdown"),
        ("extra argument", ["{t}/prefs.jsonl"], "prefs.jsonl"),
    ],
    "train-rm": [
        ("dup key", ["--config", "{t}/dup.yaml", *RUN], "dup.yaml: key 'seed' appears twice (lines 1 and 3)"),
        ("model missing", [*RUN, "model.name_or_path={t}/nomodel"], "nomodel"),
        ("bad row", [*RUN, "data.train={t}/badrow.jsonl", "data.eval=null"], "badrow.jsonl: line 2"),
        ("data dir", [*RUN, "data.train={t}/emptydir", "data.eval=null"], "emptydir"),
        ("empty data", [*RUN, "data.train={t}/empty.jsonl", "data.eval=null"], "empty.jsonl"),
        ("truncated gz", [*RUN, "data.train={t}/trunc.jsonl.gz", "data.eval=null"], "trunc.jsonl.gz"),
        ("nested dup", ["--config", "{t}/dup_nested.yaml", *RUN], "key 'objective' appears twice (lines 1 and 4)"),
    ],
    "train-dpo": [
        ("mode of rm", [*RUN, "objective.mode=utility"], "objective.mode"),
        ("ref missing", [*RUN, "model.ref_name_or_path={t}/nomodel"], "model.ref_name_or_path"),
        ("bad row", [*RUN, "data.train={t}/badrow.jsonl", "data.eval=null"], "badrow.jsonl: line 2"),
        ("dup key", ["--config", "{t}/dup.yaml", *RUN], "dup.yaml: key 'seed' appears twice (lines 1 and 3)"),
    ],
    "train-sft": [
        ("mode", [*RUN, "objective.mode=fr"], "objective.mode"),
        ("model missing", [*RUN, "model.name_or_path={t}/nomodel"], "model.name_or_path"),
        ("bad row", [*RUN, "data.train={t}/notjson.jsonl", "data.eval=null"], "notjson.jsonl: line 2"),
    ],
    "train-pair-pm": [
        ("lr", [*RUN, "train.lr=-1"], "train.lr"),
        ("model missing", [*RUN, "model.name_or_path={t}/nomodel"], "model.name_or_path"),
        ("bad row", [*RUN, "data.train={t}/badrow.jsonl", "data.eval=null"], "badrow.jsonl: line 2"),
    ],
    "train-pg": [
        ("pg key", [*RUN, "pg.nonsense=1"], "pg.nonsense"),
        ("reward model missing", [*RUN, "pg.reward_model={t}/nomodel"], "pg.reward_model"),
        ("config not a mapping", ["--config", "{t}/list.yaml", *RUN], "list.yaml"),
    ],
    "train-armo": [
        ("armo key", [*RUN, "armo.nonsense=1"], "armo.nonsense"),
        ("embeddings missing", [*RUN, "armo.embeddings={t}/noemb"], "armo.embeddings"),
        ("dup key", ["--config", "{t}/dup.yaml", *RUN], "dup.yaml: key 'seed' appears twice (lines 1 and 3)"),
    ],
    "make-data": [
        ("n zero", ["--out", "{out}", "data.synthetic.n_train=0"], "data.synthetic.n_train"),
        ("config missing", ["--config", "{t}/noconfig.yaml", "--out", "{out}"], "noconfig.yaml"),
        ("dup key", ["--config", "{t}/dup.yaml", "--out", "{out}"], "dup.yaml: key 'seed' appears twice"),
    ],
    "prepare-data": [
        ("part not json", ["--out", "{out}/p.jsonl", "{not json"], "{not json"),
        ("part kind", ["--out", "{out}/p.jsonl", '{"kind": "nope", "source": "{t}/prefs.jsonl"}'], "kind"),
        ("source dir", ["--out", "{out}/p.jsonl", '{"kind": "preferences", "source": "{t}/emptydir", "split": "train"}'],
         "emptydir"),
        ("pairs per prompt", ["--out", "{out}/p.jsonl", json.dumps({"kind": "shp", "source": "{t}/prefs.jsonl",
                                                                     "split": "train", "max_pairs_per_prompt": 0})],
         "max_pairs_per_prompt"),
        ("no usable rows", ["--out", "{out}/p.jsonl", json.dumps({"kind": "preferences", "source": "{t}/allbad.jsonl",
                                                                   "split": "train"})], "gave no pairs"),
    ],
    "eval-rm": [
        ("batch size", ["--model", "{t}/rm", *PAIRS, "--batch-size", "0"], "--batch-size"),
        ("policy as rm", ["--model", "{t}/nomodel", *PAIRS], "nomodel"),
        ("bad row", ["--model", "{t}/rm", "--data", "{t}/badrow.jsonl", "--out", "{out}"], "badrow.jsonl: line 2"),
        ("data dir", ["--model", "{t}/rm", "--data", "{t}/emptydir", "--out", "{out}"], "emptydir"),
    ],
    "eval-benchmark": [
        ("benchmark", ["--model", "{t}/rm", "--benchmark", "nope", *PAIRS], "--benchmark"),
        ("model missing", ["--model", "{t}/nomodel", "--benchmark", "rewardbench", *PAIRS], "nomodel"),
        ("bad row", ["--model", "{t}/rm", "--benchmark", "rewardbench", "--data", "{t}/notjson.jsonl",
                     "--out", "{out}", "--bad-rows", "error"], "notjson.jsonl: line 2"),
    ],
    "eval-policy": [
        ("temperature", [*EVAL_POLICY, "--data", "{t}/prefs.jsonl", "--temperature", "0"], "--temperature"),
        ("policy as rm", ["--policy", "{t}/policy", "--reference", "{t}/policy", "--reward-model", "{t}/policy",
                          "--data", "{t}/prefs.jsonl", "--out", "{out}"], "--reward-model"),
        ("rm as policy", ["--policy", "{t}/rm", "--reference", "{t}/policy", "--reward-model", "{t}/rm",
                          "--data", "{t}/prefs.jsonl", "--out", "{out}"], "--policy"),
        ("bad row", [*EVAL_POLICY, "--data", "{t}/badrow.jsonl"], "badrow.jsonl: line 2"),
    ],
    "best-of-n": [
        ("n max", [*BON, "--data", "{t}/prefs.jsonl", "--n-max", "0"], "--n-max"),
        ("policy as rm", ["--policy", "{t}/policy", "--reward-model", "{t}/policy", "--data", "{t}/prefs.jsonl",
                          "--out", "{out}"], "--reward-model"),
        ("bad row", [*BON, "--data", "{t}/badrow.jsonl"], "badrow.jsonl: line 2"),
    ],
    "alpaca-eval": [
        ("step", ["score", "--out", "{out}"], "score"),
        ("policy missing", ["generate", "--policy", "{t}/nomodel", "--out", "{out}", "--generator", "x"], "nomodel"),
        ("outputs bad", ["judge", "--outputs", "{t}/notjson.jsonl", "--out", "{out}"], "notjson.jsonl"),
    ],
    "mt-bench": [
        ("step", ["score", "--out", "{out}"], "score"),
        ("policy missing", ["generate", "--policy", "{t}/nomodel", "--data-dir", "{t}/emptydir",
                            "--answers", "{out}/a.jsonl"], "nomodel"),
        ("data dir", ["judge", "--data-dir", "{t}/emptydir", "--answers", "{t}/notjson.jsonl", "--out", "{out}"],
         "emptydir"),
    ],
    "lm-eval": [
        ("batch size", ["--model", "{t}/policy", "--out", "{out}", "--batch-size", "0"], "--batch-size"),
        ("rm as policy", ["--model", "{t}/rm", "--out", "{out}"], "--model"),
        ("include path", ["--model", "{t}/policy", "--out", "{out}", "--include-path", "{t}/nodir"], "nodir"),
    ],
    "policy-bench-fetch": [
        ("settings not json", ["--settings", "{not json", "--out", "{out}"], "--settings: invalid JSON"),
        ("settings key", ["--settings", '{"nonsense": 1}', "--out", "{out}"], "policy_benchmarks.nonsense"),
        ("sampling", ["--settings", '{"mt_bench": {"sampling": "hot"}}', "--out", "{out}"],
         "policy_benchmarks.mt_bench.sampling"),
        ("out a file", ["--settings", '{"mt_bench": {}}', "--out", "{t}/prefs.jsonl"], "prefs.jsonl"),
    ],
    "policy-bench-report": [
        ("paper", ["--run", "{t}/emptydir", "--paper", "llama4", "--out", "{out}"], "--paper"),
        ("run not a run", ["--run", "{t}/emptydir", "--out", "{out}"], "emptydir"),
        ("run missing", ["--run", "{t}/norun", "--out", "{out}"], "norun"),
    ],
    "report": [
        ("runs missing", ["--runs", "{t}/norun", "--out", "{out}"], "norun"),
        ("run config dup", ["--runs", "{t}/dup_run", "--out", "{out}"], "appears twice (lines 1 and 3)"),
        ("eval subdir", ["--runs", "{t}/emptydir", "--out", "{out}", "--eval-subdir", "../x"], "emptydir"),
    ],
    "build-ops": [
        ("world size", ["--world-size", "0"], "--world-size"),
        ("config dup", ["--config", "{t}/dup.yaml"], "dup.yaml: key 'seed' appears twice"),
        ("device", ["--device", "tpu"], "--device"),
        ("marker dir", ["--marker", "{t}/emptydir"], "emptydir"),
    ],
    "grid-plan": [
        ("configfile missing", ["--configfile", "{t}/noconfig.yaml"], "noconfig.yaml"),
        ("configfile dup", ["--configfile", "{t}/dup.yaml"], "dup.yaml: key 'seed' appears twice"),
        ("configfile value", ["--configfile", "{t}/grid_bad.yaml"], "grids[0].task: 'nope'"),
    ],
    "fetch-hub": [
        ("items not json", ["--items", "{not json", "--out", "{out}/h.json"], "--items"),
        ("items kind", ["--items", '[{"kind": "nope", "name": "a/b"}]', "--out", "{out}/h.json"], "nope"),
        ("revisions not json", ["--items", "[]", "--revisions", "{x", "--out", "{out}/h.json"], "--revisions"),
    ],
    "personas": [
        ("n zero", ["--n", "0", "--out", "{out}/p.jsonl"], "--n"),
        ("source missing", ["--source", "{t}/nopersonas.jsonl", "--out", "{out}/p.jsonl"], "nopersonas.jsonl"),
        ("bad row", ["--source", "{t}/personas_bad.jsonl", "--out", "{out}/p.jsonl"], "personas_bad.jsonl: line 2"),
        ("generate without model", ["--generate", "2", "--out", "{out}/p.jsonl"], "--model"),
    ],
    "candidates": [
        ("k", ["--synthetic", "3", "--k", "2", "--out", "{out}/c.jsonl"], "--k"),
        ("rm as policy", ["--policy", "{t}/rm", "--data", "{t}/prefs.jsonl", "--out", "{out}/c.jsonl"], "--policy"),
        ("bad row", ["--columns", "chosen,rejected,prompt", "--data", "{t}/notjson.jsonl", "--out", "{out}/c.jsonl"],
         "notjson.jsonl: line 2"),
    ],
    "rank": [
        ("noise", [*RANK, "--noise", "-1"], "--noise"),
        ("judge missing", [*RANK, "--judge", "{t}/nomodel"], "nomodel"),
        ("bad row", ["--candidates", "{t}/candidates_bad.jsonl", "--personas", "{t}/personas.jsonl",
                     "--out", "{out}/r.jsonl"], "candidates_bad.jsonl: line 2"),
    ],
    "aggregate": [
        ("swf", ["--swf", "nope", "--rankings", "{t}/rankings.jsonl", "--out", "{out}/a.jsonl"], "--swf"),
        ("rankings missing", ["--swf", "borda", "--rankings", "{t}/norankings.jsonl", "--out", "{out}/a.jsonl"],
         "norankings.jsonl"),
        ("bad row", ["--swf", "borda", "--rankings", "{t}/notjson.jsonl", "--out", "{out}/a.jsonl"],
         "notjson.jsonl: line 1"),
    ],
    "eval-groups": [
        ("both models", ["--rankings", "{t}/rankings.jsonl", "--policy", "{t}/policy", "--reward-model", "{t}/rm",
                         "--out", "{out}"], "--reward-model"),
        ("policy as rm", ["--rankings", "{t}/rankings.jsonl", "--reward-model", "{t}/policy", "--out", "{out}"],
         "--reward-model"),
        ("bad row", ["--rankings", "{t}/notjson.jsonl", "--reward-model", "{t}/rm", "--out", "{out}"],
         "notjson.jsonl: line 1"),
    ],
    "rlchf-report": [
        ("evals missing", ["--evals", "{t}/noeval", "--out", "{out}"], "noeval"),
        ("evals dir", ["--evals", "{t}/emptydir", "--out", "{out}"], "emptydir"),
        ("eval not json", ["--evals", "{t}/notjson.jsonl", "--out", "{out}"], "notjson.jsonl"),
    ],
    "pg-classifier": [
        ("steps", ["--out", "{out}", "--steps", "0"], "--steps"),
        ("lr", ["--out", "{out}", "--lr", "-1"], "--lr"),
        ("out a file", ["--out", "{t}/prefs.jsonl/x"], "prefs.jsonl"),
    ],
    "pg-report": [
        ("runs missing", ["--runs", "{t}/norun", "--out", "{out}"], "norun"),
        ("run config dup", ["--runs", "{t}/dup_run", "--out", "{out}"], "appears twice (lines 1 and 3)"),
        ("run config not pg", ["--runs", "{t}/rm_run", "--out", "{out}"], "not a train-pg run"),
    ],
    "armo-embed": [
        ("shard", ["--out", "{out}", "--shard", "3", "--num-shards", "2"], "--shard"),
        ("model missing", ["--out", "{out}", "model.name_or_path={t}/nomodel"], "model.name_or_path"),
        ("data dir", ["--out", "{out}", "data.train={t}/emptydir"], "emptydir"),
    ],
    "armo-regress": [
        ("armo key", ["--out", "{out}", "--embeddings", "{t}/emptydir", "armo.nonsense=1"], "armo.nonsense"),
        ("embeddings missing", ["--out", "{out}", "--embeddings", "{t}/noemb"], "noemb"),
        ("embeddings empty", ["--out", "{out}", "--embeddings", "{t}/emptydir"], "emptydir"),
    ],
    "online-generate": [
        ("k one", [*GEN, "--prompts", "{t}/prefs.jsonl", "--k", "1"], "--k 1"),
        ("iteration beyond", [*GEN[:2], "--iteration", "3", "--iterations", "2", "--prompts", "{t}/prefs.jsonl",
                              "--out", "{out}/s.jsonl"], "--iteration 3"),
        ("rm as policy", ["--policy", "{t}/rm", *GEN[2:], "--prompts", "{t}/prefs.jsonl"], "--policy"),
        ("bad row", [*GEN, "--prompts", "{t}/notjson.jsonl"], "notjson.jsonl: line 2"),
        ("too few prompts", [*GEN[:2], "--iteration", "1", "--iterations", "5", "--prompts", "{t}/prefs.jsonl",
                             "--out", "{out}/s.jsonl"], "prefs.jsonl: 1 distinct prompts, but 5 iterations"),
    ],
    "online-score": [
        ("policy as rm", ["--samples", "{t}/samples.jsonl", "--reward-model", "{t}/policy", "--out", "{out}/s.jsonl"],
         "--reward-model"),
        ("samples missing", ["--samples", "{t}/nosamples.jsonl", "--reward-model", "{t}/rm", "--out", "{out}/s.jsonl"],
         "nosamples.jsonl: file not found"),
        ("not samples", ["--samples", "{t}/prefs.jsonl", "--reward-model", "{t}/rm", "--out", "{out}/s.jsonl"],
         "prefs.jsonl: line 1: no 'prompt_id', 'responses'"),
        ("selection", ["--samples", "{t}/samples.jsonl", "--reward-model", "{t}/rm", "--selection", "best",
                       "--out", "{out}/s.jsonl"], "--selection"),
    ],
    "online-pairs": [
        ("margin negative", ["--scores", "{t}/scores.jsonl", "--margin", "-1", "--out", "{out}"], "--margin -1"),
        ("scores missing", ["--scores", "{t}/noscores.jsonl", "--out", "{out}"], "noscores.jsonl: file not found"),
        ("unscored samples", ["--scores", "{t}/samples.jsonl", "--out", "{out}"],
         "samples.jsonl: line 1: no 'rewards or comparisons'"),
        ("bad json", ["--scores", "{t}/allbad.jsonl", "--out", "{out}"], "allbad.jsonl: line 1: invalid JSON"),
        ("all equal", ["--scores", "{t}/scores_equal.jsonl", "--out", "{out}"], "no preference pair left of 1 prompts"),
    ],
    "online-eval": [
        ("samples zero", [*OEVAL, "--prompts", "{t}/prefs.jsonl", "--samples", "0"], "--samples"),
        ("policy as rm", ["--policy", "{t}/policy", "--reward-model", "{t}/policy", "--prompts", "{t}/prefs.jsonl",
                          "--out", "{out}"], "--reward-model"),
        ("rm as policy", ["--policy", "{t}/rm", "--reward-model", "{t}/rm", "--prompts", "{t}/prefs.jsonl",
                          "--out", "{out}"], "--policy"),
        ("baseline not an eval", [*OEVAL, "--prompts", "{t}/prefs.jsonl", "--baseline", "{t}/emptydir"], "--baseline"),
        ("bad row", [*OEVAL, "--prompts", "{t}/notjson.jsonl"], "notjson.jsonl: line 2"),
    ],
    "online-report": [
        ("point missing", ["--points", "{t}/nopoint_seed0", "--initial", "{t}/emptydir", "--out", "{out}"],
         "nopoint_seed0: no iter<i>/"),
        ("not a point", ["--points", "{t}/emptydir", "--initial", "{t}/emptydir", "--out", "{out}"],
         "emptydir: not a point directory"),
        ("eval missing", ["--points", "{t}/pt_seed0", "--initial", "{t}/emptydir", "--out", "{out}"],
         "has the iteration's online-eval run?"),
    ],
    "report-rm-kinds": [
        ("runs missing", ["--runs", "{t}/norun", "--out", "{out}"], "norun"),
        ("run config dup", ["--runs", "{t}/dup_run", "--out", "{out}"], "appears twice (lines 1 and 3)"),
        ("not a run", ["--runs", "{t}/emptydir", "--out", "{out}"], "emptydir"),
    ],
}
EVERY = [(cmd, *case) for cmd, cases in COMMANDS.items() for case in cases]


def _model_dir(d, arch):
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": [arch], "model_type": "llama"}))
    (d / "model.safetensors").write_bytes(b"")
    (d / "tokenizer.json").write_text("{}")


def _inputs(t):
    """The files the cases name: good and bad rows of each format, model directories of both roles."""
    import gzip

    rows = [GOOD, {**GOOD, "chosen": "Hello"}, {**GOOD, "chosen": "Hey"}]
    _file(t, "prefs.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    _file(t, "badrow.jsonl", json.dumps(GOOD) + "\n" + json.dumps({"prompt": "x", "chosen": "y"}) + "\n")
    _file(t, "notjson.jsonl", json.dumps(GOOD) + "\n{not json\n")
    _file(t, "allbad.jsonl", "{not json\n[1]\n")
    _file(t, "empty.jsonl", "")
    whole = gzip.compress(("".join(json.dumps(r) + "\n" for r in rows) * 50).encode())
    _file(t, "trunc.jsonl.gz", whole[: len(whole) // 2])
    _file(t, "dup.yaml", "seed: 1\nobjective: {}\nseed: 2\n")
    _file(t, "dup_nested.yaml", "objective:\n  mode: fr\ntrain: {}\nobjective:\n  mode: fc\n")
    _file(t, "list.yaml", "- seed: 1\n")
    _file(t, "grid_bad.yaml", "grids:\n  - task: nope\n")
    persona = {"id": "a", "persona": "A teacher.", "group": "quality"}
    _file(t, "personas.jsonl", "".join(json.dumps({**persona, "id": i, "group": g}) + "\n"
                                       for i, g in (("a", "quality"), ("b", "length"))))
    _file(t, "personas_bad.jsonl", json.dumps(persona) + "\n" + json.dumps({"id": "b", "group": "length"}) + "\n")
    cand = {"id": "q1", "prompt": "Say hi", "responses": ["a", "b", "c"]}
    _file(t, "candidates.jsonl", json.dumps(cand) + "\n")
    _file(t, "candidates_bad.jsonl", json.dumps(cand) + "\n" + json.dumps({**cand, "responses": ["a"]}) + "\n")
    _file(t, "rankings.jsonl", "")
    (t / "emptydir").mkdir()
    sample = {"prompt_id": 0, "prompt": [{"role": "user", "content": "Say hi"}], "category": "a",
              "responses": ["Hi", "Hello"]}
    _file(t, "samples.jsonl", json.dumps(sample) + "\n")
    _file(t, "scores.jsonl", json.dumps({**sample, "rewards": [1.0, 0.0]}) + "\n")
    _file(t, "scores_equal.jsonl", json.dumps({**sample, "rewards": [0.5, 0.5]}) + "\n")
    (t / "pt_seed0" / "iter1").mkdir(parents=True)
    _model_dir(t / "policy", "LlamaForCausalLM")
    _model_dir(t / "rm", "LlamaForSequenceClassification")
    (t / "dup_run").mkdir()
    _file(t / "dup_run", "config.yaml", "task: rm\nseed: 0\ntask: dpo\n")
    _file(t / "dup_run", "summary.json", "{}")
    (t / "dup_run" / "eval").mkdir()
    _file(t / "dup_run" / "eval", "summary.json", json.dumps({"kind": "reward_model", "metrics": {"accuracy": 0.5}}))
    (t / "rm_run").mkdir()
    _file(t / "rm_run", "config.yaml", "task: rm\nseed: 0\n")
    _file(t / "rm_run", "summary.json", "{}")


@pytest.mark.parametrize("cmd,label,args,needle", EVERY, ids=[f"{c[0]}-{c[1]}" for c in EVERY])
def test_every_command_refuses_bad_input_before_compute(tmp_path, capsys, cmd, label, args, needle):
    _inputs(tmp_path)
    out = tmp_path / "out"

    def fill(s):
        return s.replace("{t}", str(tmp_path)).replace("{out}", str(out))

    try:
        code = main([cmd, *map(fill, args)])
    except SystemExit as e:  # argparse: a bad option or value
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert fill(needle) in err, err
    assert err.startswith("fairhpc") and len(err.splitlines()) == 1, err
    assert not out.exists() or not any(out.iterdir()), sorted(out.rglob("*"))


def test_every_subcommand_has_bad_inputs():
    """A subcommand added to the CLI without entries in COMMANDS fails here."""
    import argparse

    from fairhpc.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    names = [a.dest for a in sub._choices_actions]
    assert names and all(len(COMMANDS.get(n, [])) >= 3 for n in names), \
        [n for n in names if len(COMMANDS.get(n, [])) < 3]
    assert set(COMMANDS) <= set(names), set(COMMANDS) - set(names)


def test_train_rm_refuses_a_key_written_twice(tmp_path):
    """The installed command, as a user runs it: exit 2, one line naming the file, both lines and the key."""
    import subprocess
    import sys

    cfg = _file(tmp_path, "dup.yaml", "seed: 1\ntrain:\n  lr: 0.001\nseed: 2\n")
    out = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "fairhpc.cli", "train-rm", "--config", str(cfg), f"output_dir={out}"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1] == (f"fairhpc: configuration error: {cfg}: key 'seed' appears twice "
                                                   "(lines 1 and 4); keep one")
    assert not out.exists()


@pytest.mark.parametrize("text,key,section,lines", [
    ("a: 1\nb: 2\na: 3\n", "a", "", "lines 1 and 3"),
    ("s:\n  x: 1\n  y: 2\n  x: 3\n", "x", " in s", "lines 2 and 4"),
    ("l:\n  - {k: 1, k: 2}\n", "k", " in l", "lines 2 and 2"),
])
def test_yaml_repeated_keys_at_any_depth(text, key, section, lines):
    """loads (values) names the key and both lines; compose (the config's line map) the section too."""
    from fairhpc.errors import ConfigError
    from fairhpc.yamlio import compose, loads

    with pytest.raises(ConfigError) as e:
        loads(text, "f.yaml")
    assert str(e.value) == f"f.yaml: key {key!r} appears twice ({lines}); keep one"
    with pytest.raises(ConfigError) as e:
        compose(text, "f.yaml")
    assert str(e.value) == f"f.yaml: key {key!r}{section} appears twice ({lines}); keep one"
    assert loads("a: 1\nb: {a: 2}\nc: &x {d: 1}\ne:\n  <<: *x\n  f: 2\n") == \
        {"a": 1, "b": {"a": 2}, "c": {"d": 1}, "e": {"d": 1, "f": 2}}


def test_every_yaml_file_of_the_project_has_unique_keys():
    """Run configs, grids, workflow configs, profiles, schemas: each reads without a repeated key."""
    from pathlib import Path

    from fairhpc.yamlio import load_yaml

    repo = Path(__file__).resolve().parents[1]
    files = [f for d in ("configs", "profiles", "schemas", "slurm") for f in (repo / d).rglob("*.y*ml")]
    files.append(repo / "config.yaml")
    assert len(files) > 5
    for f in files:
        load_yaml(f)


def test_the_workflow_refuses_a_key_written_twice(tmp_path):
    """A --configfile of the Snakemake workflow with a repeated key stops the dry run, naming file and lines."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    cfg = _file(tmp_path, "grid.yaml", "results: a\nseeds: [0]\nresults: b\n")
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "-s", str(repo / "Snakefile"),
                          "-d", str(tmp_path / "wd"), "--configfile", str(cfg)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode != 0
    assert f"{cfg}: key 'results' appears twice (lines 1 and 3); keep one" in res.stdout + res.stderr
