"""Reading YAML: every YAML file the project reads (run configs, workflow configs, profiles, schemas, run
directories' config.yaml) goes through :func:`load_yaml` / :func:`loads`, which refuse a mapping that
repeats a key (PyYAML keeps the last value and drops the first without a word).

The error is one line, a :class:`~fairhpc.errors.ConfigError` (exit 2 from the ``fairhpc`` command)::

    dup.yaml: key 'seed' appears twice (lines 1 and 3); keep one
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from fairhpc.errors import ConfigError


class DuplicateKeyError(ConfigError):
    """A YAML mapping repeats a key; ``key``, ``lines`` (first, second; 1-based) and ``source`` say where."""

    def __init__(self, source: str, key, first: int, second: int, section: str = ""):
        where = f" in {section}" if section else ""
        super().__init__(f"{source}: key {key!r}{where} appears twice (lines {first} and {second}); keep one")
        self.source, self.key, self.lines = source, key, (first, second)


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader that refuses a repeated key in any mapping, nested ones included."""

    source = "<yaml>"

    def construct_mapping(self, node, deep=False):
        check_unique_keys(node, self.source)
        return super().construct_mapping(node, deep=deep)


def check_unique_keys(node: yaml.MappingNode, source: str, section: str = "") -> None:
    """Raise :class:`DuplicateKeyError` if the mapping ``node`` repeats a scalar key."""
    seen: dict = {}
    for k, _ in node.value:
        if not isinstance(k, yaml.ScalarNode) or k.tag == "tag:yaml.org,2002:merge":
            continue
        key = k.value
        if key in seen:
            raise DuplicateKeyError(source, key, seen[key], k.start_mark.line + 1, section)
        seen[key] = k.start_mark.line + 1


def _loader(source: str):
    return type("UniqueKeyLoader", (UniqueKeyLoader,), {"source": source})


def loads(text: str, source: str = "<yaml>"):
    """The YAML document ``text`` (``source`` names it in errors); a repeated key raises DuplicateKeyError.
    Syntax errors stay :class:`yaml.YAMLError` for the caller to report."""
    return yaml.load(text, Loader=_loader(source))


def compose(text: str, source: str = "<yaml>"):
    """The node tree of ``text`` (for line numbers), with every mapping checked for repeated keys."""
    root = yaml.compose(text, Loader=_loader(source))

    def walk(node, section):
        if isinstance(node, yaml.MappingNode):
            check_unique_keys(node, source, section)
            for k, v in node.value:
                name = f"{section}.{k.value}" if section else str(getattr(k, "value", ""))
                walk(v, name)
        elif isinstance(node, yaml.SequenceNode):
            for v in node.value:
                walk(v, section)

    walk(root, "")
    return root


def read_text(path: str | os.PathLike) -> str:
    """The text of a YAML file (a UTF-8 byte-order mark is dropped)."""
    return Path(path).read_text(encoding="utf-8-sig")


def load_yaml(path: str | os.PathLike):
    """The YAML file ``path``; a repeated key raises DuplicateKeyError naming the file, both lines and
    the key.  OSError and yaml.YAMLError reach the caller, which knows what the file is for."""
    return loads(read_text(path), str(path))
