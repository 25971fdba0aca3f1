"""Run-config loading: overrides, types, unknown keys and ranges, with messages naming key and value."""

import pytest

from fairhpc import registry
from fairhpc.cli import build_parser
from fairhpc.config import ConfigError, fields_help, load_config, parse_overrides


def test_defaults_and_overrides():
    cfg = load_config(None, ["objective.mode=fr", "objective.alpha=0.25", "train.lr=1e-5",
                             "data.max_train_examples=null", "model.gradient_checkpointing=true"])
    assert cfg.objective.mode == "fr" and cfg.objective.alpha == 0.25 and cfg.train.lr == 1e-5
    assert cfg.data.max_train_examples is None and cfg.model.gradient_checkpointing is True
    assert load_config(None, task="dpo").objective.mode == "dpo"


def test_yaml_file_and_override_precedence(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("task: rm\nobjective: {mode: fc, tau: 0.5}\ntrain: {zero_stage: 2}\n")
    cfg = load_config(p, ["objective.tau=-5"])
    assert (cfg.objective.mode, cfg.objective.tau, cfg.train.zero_stage) == ("fc", -5.0, 2)
    with pytest.raises(ConfigError, match="config says 'rm' but the command trains 'dpo'"):
        load_config(p, task="dpo")


@pytest.mark.parametrize("override,message", [
    ("train.micro_batch_size=0", "train.micro_batch_size: must be >= 1, got 0"),
    ("train.micro_batch_size=abc", "train.micro_batch_size: expected an integer, got 'abc'"),
    ("train.lr=-1", "train.lr: must be > 0, got -1.0"),
    ("objective.scope=world", "objective.scope: 'world' is not allowed; allowed: micro, global"),
    ("data.truncation_side=middle", "allowed: left, right"),
    ("data.bad_rows=ignore", "allowed: error, skip"),
    ("train.precision=fp8", "allowed: auto, fp32, bf16, fp16"),
    ("objective.gamma=0", "objective.gamma: must be > 0"),
    ("data.max_prompt_length=999", "data.max_prompt_length: must be < data.max_length"),
    ("nonsense", "expected key=value"),
    ("model.tiny.hidden=8", "unknown key model.tiny.hidden"),
])
def test_bad_values_name_key_value_and_allowed(override, message):
    extra = ["objective.mode=fc"] if "gamma" in override else []
    with pytest.raises(ConfigError) as e:
        load_config(None, [override, *extra])
    assert message in str(e.value)


def test_yaml_syntax_error_names_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("task: rm\nobjective:\n  mode: [fr\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+"):
        load_config(p)


def test_overrides_parse_yaml_scalars():
    assert parse_overrides(["a.b=1", "a.c=0.5", "d=null", "e=text"]) == {"a": {"b": 1, "c": 0.5}, "d": None,
                                                                          "e": "text"}


def test_registry_is_the_source_of_the_cli_help_and_errors():
    helps = {k: h for k, _, _, h in fields_help()}
    assert all(m in helps["objective.mode"] for m in registry.ALL_MODES)
    assert all(s in helps["objective.scope"] for s in registry.SCOPES)
    for task in registry.TASKS:
        with pytest.raises(ConfigError) as e:
            load_config(None, ["objective.mode=zz"], task=task)
        assert ", ".join(registry.ALL_MODES) in str(e.value)
    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"train-rm", "train-dpo", "config-help"} <= set(commands)


def test_readme_configuration_reference_is_current(capsys):
    from pathlib import Path

    from fairhpc.cli import main

    assert main(["config-help", "--markdown"]) == 0
    table = capsys.readouterr().out.strip()
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert table in readme, "README's run-config table is stale: paste `fairhpc config-help --markdown`"


# ------------------------------------------------------------------ one rule per type, from the dataclasses

def _numeric_fields(cls=None, prefix=""):
    """(key, base type, dataclasses.Field) of every int/float leaf of the run config."""
    import dataclasses
    from typing import get_type_hints

    from fairhpc.config import RunConfig

    cls = cls or RunConfig
    hints = get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += _numeric_fields(tp, prefix + f.name + ".")
            continue
        base = next((a for a in getattr(tp, "__args__", (tp,)) if a is not type(None)), tp)
        if base in (int, float):
            out.append((prefix + f.name, base, f))
    return out


NUMERIC = _numeric_fields()


def test_every_numeric_field_declares_its_allowed_values():
    # a new numeric key must say what it allows (range= or choices=); the rule then checks it for free
    assert len(NUMERIC) >= 30
    missing = [k for k, _, f in NUMERIC if "range" not in f.metadata and "choices" not in f.metadata]
    assert not missing, f"declare range= (config.Range) or choices= for {missing}"


@pytest.mark.parametrize("key", [k for k, tp, _ in NUMERIC if tp is float])
@pytest.mark.parametrize("bad", [".nan", ".inf", "-.inf"])
def test_every_float_key_refuses_non_finite(key, bad):
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{key}={bad}"])
    got = bad.lstrip(".").replace("-.", "-")
    assert f"overrides: {key}: must be a finite number" in str(e.value)
    assert f"got {got}" in str(e.value)


@pytest.mark.parametrize("key", [k for k, tp, _ in NUMERIC if tp is int])
def test_every_int_key_refuses_booleans_and_fractions(key):
    for bad, shown in (("true", "True"), ("2.5", "2.5"), (".inf", "inf")):
        with pytest.raises(ConfigError) as e:
            load_config(None, [f"{key}={bad}"])
        assert f"{key}: expected an integer, got {shown}" in str(e.value)


BOUNDED = [k for k, _, f in NUMERIC if "range" in f.metadata
           and (f.metadata["range"].lo, f.metadata["range"].hi) != (None, None)]


@pytest.mark.parametrize("key", BOUNDED)
def test_every_range_refuses_just_outside_and_accepts_its_ends(key):
    """Values just below ``lo`` / above ``hi`` are refused naming the key, the value and the range; the
    closed ends themselves pass the per-field rule (cross-field checks aside)."""
    from fairhpc.config import RunConfig, check_fields

    rule = next(f for k, _, f in NUMERIC if k == key).metadata["range"]
    tp = next(tp for k, tp, _ in NUMERIC if k == key)
    step = 1 if tp is int else 1e-9
    outside = []
    if rule.lo is not None:
        v = rule.lo if rule.lo_open else rule.lo - step
        while v in rule.special:  # e.g. -1 = "derive it" just below 0
            v -= step
        outside.append(v)
    if rule.hi is not None:
        outside.append(rule.hi if rule.hi_open else rule.hi + step)

    def with_value(v):
        cfg = RunConfig()
        section, _, name = key.rpartition(".")
        node = cfg
        for part in section.split(".") if section else []:
            node = getattr(node, part)
        object.__setattr__(node, name, tp(v))  # FairnessConfig is frozen
        return cfg

    for v in outside:
        with pytest.raises(ConfigError) as e:
            check_fields(with_value(v))
        assert f"{key}: must be {rule.describe()}, got {tp(v)!r}" in str(e.value)
    for v in (rule.lo, rule.hi, *rule.special):
        if v is not None and v in rule:
            check_fields(with_value(v))


@pytest.mark.parametrize("override,message", [
    ("train.lr=.inf", "train.lr: must be a finite number (> 0), got inf"),
    ("train.lr=.nan", "train.lr: must be a finite number (> 0), got nan"),
    ("train.epochs=.nan", "train.epochs: must be a finite number (>= 0), got nan"),
    ("train.epochs=-1", "train.epochs: must be >= 0, got -1.0"),
    ("train.epochs=0", "train.epochs: must be > 0 unless train.max_steps is set, got 0.0"),
    ("train.max_steps=0", "train.max_steps: must be -1 or >= 1, got 0"),
    ("train.max_steps=-2", "train.max_steps: must be -1 or >= 1, got -2"),
    ("train.warmup_steps=-2", "train.warmup_steps: must be -1 or >= 0, got -2"),
    ("train.adam_beta1=1", "train.adam_beta1: must be in [0, 1), got 1.0"),
    ("train.adam_beta2=-0.1", "train.adam_beta2: must be in [0, 1), got -0.1"),
    ("train.adam_beta2=.nan", "train.adam_beta2: must be a finite number (in [0, 1)), got nan"),
    ("train.num_workers=-1", "train.num_workers: must be >= 0, got -1"),
    ("train.max_grad_norm=-1", "train.max_grad_norm: must be >= 0, got -1.0"),
    ("train.weight_decay=.inf", "train.weight_decay: must be a finite number (>= 0), got inf"),
    ("seed=-1", "seed: must be in [0, 4294967295], got -1"),
    ("data.max_eval_examples=0", "data.max_eval_examples: must be >= 1, got 0"),
    ("objective.beta=0", "objective.beta: must be > 0, got 0.0"),
    ("model.tiny.hidden_size=0", "model.tiny.hidden_size: must be >= 1, got 0"),
    ("model.tiny.num_hidden_layers=0", "model.tiny.num_hidden_layers: must be >= 1, got 0"),
    ("model.tiny.num_attention_heads=0", "model.tiny.num_attention_heads: must be >= 1, got 0"),
    ("model.tiny.num_attention_heads=5",
     "model.tiny.hidden_size: must be a multiple of model.tiny.num_attention_heads (5), got 64"),
    ("model.tiny.hidden_size=12", "hidden_size / num_attention_heads = 3 is odd; rotary embeddings need an even"),
    ("model.tiny.num_key_value_heads=3",
     "model.tiny.num_key_value_heads: must divide model.tiny.num_attention_heads (4), got 3"),
    ("model.tiny.num_key_value_heads=8", "must divide model.tiny.num_attention_heads (4), got 8"),
    ("model.gradient_checkpointing=1", "model.gradient_checkpointing: expected true or false, got 1"),
    ("train.lr=true", "train.lr: expected a number, got True"),
    ("train.zero_stage=true", "train.zero_stage: expected an integer, got True"),
    ("output_dir=''", "output_dir: must not be empty"),
])
def test_refused_values_name_key_value_and_allowed(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value).startswith("overrides: ")
    assert message in str(e.value)


def test_max_steps_zero_message_says_use_minus_one():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.max_steps=0"])
    assert "0 is refused, use -1" in str(e.value)
    assert load_config(None, ["train.max_steps=5", "train.epochs=0"]).train.max_steps == 5


def test_valid_edges_are_accepted():
    cfg = load_config(None, ["train.adam_beta1=0", "train.adam_beta2=0.999", "train.num_workers=2",
                             "train.max_grad_norm=0", "train.warmup_steps=0", "data.synthetic.n_eval=0",
                             "model.tiny.hidden_size=16", "model.tiny.num_attention_heads=2",
                             "model.tiny.num_key_value_heads=1", "train.max_steps=1", "train.epochs=1e-3"])
    assert (cfg.train.adam_beta1, cfg.model.tiny.hidden_size, cfg.train.max_steps) == (0.0, 16, 1)


def test_yaml_errors_name_the_file_and_line(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("task: rm\ntrain:\n  epochs: 1\n  lr: .inf\nmodel:\n  tiny: {hidden_size: 30}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}: line 4: train.lr: must be a finite number (> 0), got inf")
    # the file's key is located even when another key comes from the command line
    with pytest.raises(ConfigError) as e:
        load_config(p, ["train.lr=1e-3"])
    assert str(e.value).startswith(f"{p}: line 6: model.tiny.hidden_size: must be a multiple")
    # a bad value given as an override is attributed to the overrides, not to the file
    with pytest.raises(ConfigError) as e:
        load_config(p, ["train.lr=-1"])
    assert str(e.value).startswith("overrides: train.lr: must be > 0, got -1.0")
    # type errors and unknown keys are located too
    p.write_text("task: rm\n\ntrain:\n  micro_batch_size: many\n")
    with pytest.raises(ConfigError, match=rf"^{p}: line 4: train.micro_batch_size: expected an integer"):
        load_config(p)
    p.write_text("task: rm\nmodel: {tiny: {hidden: 8}}\n")
    with pytest.raises(ConfigError, match=rf"^{p}: line 2: unknown key model.tiny.hidden"):
        load_config(p)
    p.write_text("task: rm\nobjective:\n  mode: fc\n  tau: 2\n")
    with pytest.raises(ConfigError, match=rf"^{p}: line 4: objective.tau: mode fc needs tau < 1"):
        load_config(p)


def test_validate_applies_the_rule_to_a_config_built_in_code():
    from fairhpc.config import RunConfig, TrainConfig, validate

    validate(RunConfig())
    with pytest.raises(ConfigError, match=r"^<config>: train.lr: must be a finite number \(> 0\), got nan"):
        validate(RunConfig(train=TrainConfig(lr=float("nan"))))
    with pytest.raises(ConfigError, match=r"train.num_workers: expected an integer, got True"):
        validate(RunConfig(train=TrainConfig(num_workers=True)))


def _run_configs():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    # configs/runs (or configs/base before the rename) hold run configs; configs/grids|paper are workflow grids
    return sorted(p for d in ("runs", "base") for p in (root / d).glob("*.yaml"))


def test_defaults_and_every_run_config_still_load():
    from fairhpc.config import RunConfig, check_fields

    check_fields(RunConfig())
    for task in ("rm", "dpo"):
        load_config(None, task=task)
    paths = _run_configs()
    assert len(paths) >= 4, paths
    for p in paths:
        cfg = load_config(p)
        assert cfg.task in registry.TASKS, p
        assert p.stem.startswith(cfg.task) or cfg.task in p.stem.split("_"), p  # the name says what it trains


# --------------------------------------------------------------------------------- check_environment

def _env(overrides):
    from fairhpc.config import check_environment

    return check_environment(load_config(None, overrides))


def test_check_environment_accepts_the_defaults(tmp_path):
    _env([f"output_dir={tmp_path / 'new' / 'run'}", "model.name_or_path=owner/some-model",
          "model.ref_name_or_path=gpt2"])
    assert not (tmp_path / "new").exists()  # a check only: it creates nothing


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_without_cuda_is_a_config_error(precision, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=rf"train.precision: '{precision}' needs a CUDA GPU.*use fp32 or auto"):
        _env([f"train.precision={precision}"])
    _env(["train.precision=fp32"])
    _env(["train.precision=auto"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    _env([f"train.precision={precision}"])


def test_output_dir_that_is_or_lies_under_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(ConfigError, match=rf"output_dir: '{f}' is a file, not a directory"):
        _env([f"output_dir={f}"])
    with pytest.raises(ConfigError, match=rf"output_dir: '{f}/run/x' lies under '{f}', which is a file"):
        _env([f"output_dir={f}/run/x"])


def test_output_dir_not_writable(tmp_path, monkeypatch):
    import os

    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(ro) else real_access(p, mode))
    with pytest.raises(ConfigError, match=rf"output_dir: '{ro}/run' would be created in '{ro}', which is not "
                                          r"writable"):
        _env([f"output_dir={ro}/run"])
    with pytest.raises(ConfigError, match=rf"output_dir: '{ro}' is not writable"):
        _env([f"output_dir={ro}"])


def test_output_dir_not_writable_for_real(tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root may write anywhere (the check uses os.access; covered with a stub above)")
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match="not writable"):
        _env([f"output_dir={ro}/run"])


def test_model_paths(tmp_path, monkeypatch):
    from fairhpc.errors import ModelPathError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "empty").mkdir(parents=True)
    good = tmp_path / "runs" / "final"
    good.mkdir()
    (good / "config.json").write_text("{}")
    out = f"output_dir={tmp_path / 'out'}"
    for path in ("./missing", "../missing", str(tmp_path / "missing"), "runs/missing", "a/b/c"):
        with pytest.raises(ModelPathError) as e:
            _env([out, f"model.name_or_path={path}"])
        assert str(e.value).startswith(f"model.name_or_path: '{path}' does not exist"), str(e.value)
    with pytest.raises(ModelPathError, match=r"model.ref_name_or_path: 'runs/empty' is a directory without "
                                             r"config.json"):
        _env([out, "task=dpo", "model.ref_name_or_path=runs/empty"])
    with pytest.raises(ModelPathError, match=r"model.name_or_path: 'runs/final/config.json' is a file"):
        _env([out, "model.name_or_path=runs/final/config.json"])
    with pytest.raises(ModelPathError, match=r"model.tokenizer: './tok' does not exist"):
        _env([out, "model.tokenizer=./tok"])
    # accepted: an existing model directory (relative or absolute), hub-looking names, a tokenizer directory
    _env([out, "model.name_or_path=runs/final", f"model.ref_name_or_path={good}", "model.tokenizer=runs/empty"])
    _env([out, "model.name_or_path=RLHFlow/LLaMA3-SFT", "model.ref_name_or_path=gpt2"])
    assert issubclass(ModelPathError, ConfigError)


def test_environment_errors_exit_2_through_the_cli(tmp_path, capsys, monkeypatch):
    """The engine calls check_environment before reading data; its errors are user errors (exit 2, no
    traceback) through ``fairhpc``.  Exercised with a stand-in command, as the engine is tested elsewhere."""
    import argparse

    from fairhpc import cli
    from fairhpc.config import check_environment

    f = tmp_path / "afile"
    f.write_text("x")
    command = argparse.Namespace(func=lambda a: check_environment(load_config(None, [f"output_dir={f}/run"])))
    parser = cli.build_parser()
    monkeypatch.setattr(parser, "parse_args", lambda argv=None: command)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert cli.main([]) == 2
    assert f"configuration error: output_dir: '{f}/run' lies under '{f}', which is a file" in capsys.readouterr().err
