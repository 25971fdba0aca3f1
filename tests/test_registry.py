"""fairhpc/registry.py is the one source of every enumerated choice.  How each consumer gets it:

* the run config (fairhpc/config.py): fields declare ``choices=registry.X``; loading refuses other values
  naming the key and ``registry.X``; ``fairhpc config-help`` (the README table) prints them; the modes
  allowed per task come from ``registry.MODES``;
* the CLI: ``train-<task>`` for every ``registry.TASKS``; the evaluation commands' ``--format`` and
  ``--bad-rows`` take ``registry.DATA_FORMATS`` / ``registry.BAD_ROW_POLICIES``;
* the workflow schema (schemas/config.schema.yaml) writes the enums out as YAML, so this test is what keeps
  them equal.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
import yaml

from fairhpc import registry
from fairhpc.cli import build_parser
from fairhpc.config import ConfigError, RunConfig, fields_help, load_config

REPO = Path(__file__).resolve().parents[1]
REGISTRY_TUPLES = {name: v for name, v in vars(registry).items() if name.isupper() and isinstance(v, tuple)}


def choice_fields(cls=RunConfig, prefix: str = ""):
    """(dotted key, choices) of every run-config field that has a closed set of values."""
    for f in dataclasses.fields(cls):
        tp = f.type if isinstance(f.type, type) else None
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default) and tp is not str:
            yield from choice_fields(type(default), f"{prefix}{f.name}.")
        elif f.metadata.get("choices") is not None:
            yield prefix + f.name, f.metadata["choices"]


CHOICES = dict(choice_fields())


def test_every_closed_config_field_takes_a_registry_tuple():
    assert {"task", "objective.mode", "objective.scope", "objective.reduction", "objective.loss_impl",
            "data.format", "train.precision"} <= set(CHOICES)
    for key, choices in CHOICES.items():
        owners = [name for name, t in REGISTRY_TUPLES.items() if t is choices]
        assert owners, f"{key}: choices {choices} are not a tuple of fairhpc/registry.py"
    assert CHOICES["objective.mode"] is registry.ALL_MODES and CHOICES["task"] is registry.TASKS
    assert set(registry.ALL_MODES) == {m for modes in registry.MODES.values() for m in modes}
    assert set(registry.MODES) == set(registry.TASKS)
    assert set(registry.UTILITY_MODES) < set(registry.ALL_MODES)


def test_config_help_prints_exactly_the_registry_choices():
    helps = {key: text for key, _, _, text in fields_help()}
    for key, choices in CHOICES.items():
        assert helps[key].endswith(f"(one of: {', '.join(map(str, choices))})"), (key, helps[key])


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_config_validation_refuses_other_values_naming_the_registry(key):
    choices = CHOICES[key]
    bad = max(choices) + 7 if all(isinstance(c, int) for c in choices) else "no-such-choice"
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"{key}={bad}"])
    msg = str(e.value)
    assert key in msg and str(bad) in msg and ", ".join(map(str, choices)) in msg, msg
    for value in choices:  # every registry value passes the choice check (it may fail a later one)
        try:
            load_config(None, [f"{key}={value}"])
        except ConfigError as err:
            assert "not allowed" not in str(err), (key, value, err)


@pytest.mark.parametrize("task", registry.TASKS)
def test_modes_per_task(task):
    for mode in registry.MODES[task]:
        cfg = load_config(None, [f"task={task}", f"objective.mode={mode}"], task=task)
        assert cfg.objective.mode == mode
    for mode in set(registry.ALL_MODES) - set(registry.MODES[task]):
        with pytest.raises(ConfigError, match=rf"objective.mode.*{', '.join(registry.MODES[task])}"):
            load_config(None, [f"task={task}", f"objective.mode={mode}"], task=task)


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_cli_choices_are_the_registry():
    commands = _subcommands()
    assert {f"train-{t}" for t in registry.TASKS} <= set(commands)
    seen = {}
    for name, parser in commands.items():
        for action in parser._actions:
            for option, tup in (("--format", registry.DATA_FORMATS), ("--bad-rows", registry.BAD_ROW_POLICIES)):
                if option in action.option_strings:
                    assert tuple(action.choices) == tup, (name, option, action.choices)
                    seen[option] = name
    assert set(seen) == {"--format", "--bad-rows"}, seen  # the test looked at the commands that take them


def test_workflow_schema_enums_are_the_registry():
    from fairhpc.workflow import load_schema

    raw = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
    assert "enum" not in raw["$defs"]["grid"]["properties"]["task"]  # the file never lists the tasks
    schema = load_schema(REPO)
    grid = schema["$defs"]["grid"]
    assert tuple(grid["properties"]["task"]["enum"]) == registry.TASKS
    modes = grid["properties"]["modes"]["properties"]
    assert tuple(modes) == registry.ALL_MODES
    assert {m for m, s in modes.items() if s["$ref"].endswith("/mode_utility")} == set(registry.UTILITY_MODES)
    per_task = {rule["if"]["properties"]["task"]["const"]: tuple(rule["then"]["properties"]["modes"]
                                                               ["propertyNames"]["enum"])
                for rule in grid["allOf"]}
    assert per_task == registry.MODES
    part = schema["$defs"]["parts"]["items"]["properties"]
    assert tuple(part["format"]["enum"]) == registry.DATA_FORMATS
