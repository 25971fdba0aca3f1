"""Training tasks.  Each task is one module ``fairhpc.tasks.<name>`` whose ``TASK`` is a
:class:`fairhpc.tasks.base.Task` subclass; the names are listed in ``fairhpc.registry.TASKS`` (with the
objective modes each accepts).  Adding a task: write its module, add its name to the registry, document it."""

from __future__ import annotations

import importlib

from fairhpc import registry


def get_task(name: str):
    """The Task class of registered task `name`."""
    if name not in registry.TASKS:
        raise ValueError(f"unknown task {name!r}; registered: {', '.join(registry.TASKS)}")
    return importlib.import_module(f"fairhpc.tasks.{name}").TASK
