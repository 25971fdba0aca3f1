"""The import picture of the fairhpc package has no circle.

The graph is built with ``ast`` from the source files, without importing anything.  Each module of
``fairhpc`` (and of ``fairhpc_kernels``, the ``kernels/`` folder) is a node; an arrow goes from a module to
every fairhpc module it imports, counting **every** ``import``/``from ... import`` statement in the file:
module level, inside functions and methods, and under ``if TYPE_CHECKING:``, since a lazy import closes a
circle as surely as a top-level one.  ``from fairhpc.a import b`` points at ``fairhpc.a.b`` when that is a
module, else at ``fairhpc.a``.  Importing a package's submodule also runs the package's ``__init__``, but
that edge is not counted: a package importing its own submodules is the usual layout, not a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"fairhpc": ROOT / "fairhpc", "fairhpc_kernels": ROOT / "kernels"}


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for name, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([name, *parts])] = path
    return mods


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def import_graph(mods: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """Every fairhpc module -> the fairhpc modules it imports anywhere in its file."""
    mods = _modules() if mods is None else mods
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_package, node.level, node.module)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    names.append(sub if sub in mods else base)
            for name in names:
                while name and name not in mods:  # `import fairhpc.a.b` of a missing b -> fairhpc.a
                    name = name.rpartition(".")[0]
                if name and name != mod and not mod.startswith(name + "."):
                    graph[mod].add(name)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module, each as one closed path through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_closed_path(graph, set(c)) for c in comps]


def _closed_path(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest circle through the component's first module, as a list that starts and ends with it."""
    start = min(comp)
    prev = {start: ""}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & comp):
            if w == start:
                path = [v]
                while prev[path[-1]]:
                    path.append(prev[path[-1]])
                return [*reversed(path), start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return sorted(comp)


def test_the_graph_sees_module_and_function_level_imports(tmp_path):
    pkg = tmp_path / "fairhpc"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from fairhpc.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import x\n    return x\n")
    (pkg / "c.py").write_text("import fairhpc.a\n")
    mods = {
        "fairhpc": pkg / "__init__.py",
        "fairhpc.sub": pkg / "sub" / "__init__.py",
        "fairhpc.a": pkg / "a.py",
        "fairhpc.sub.b": pkg / "sub" / "b.py",
        "fairhpc.c": pkg / "c.py",
    }
    graph = import_graph(mods)
    assert graph["fairhpc.a"] == {"fairhpc.sub.b"}
    assert graph["fairhpc.sub.b"] == {"fairhpc.a"}
    assert graph["fairhpc.c"] == {"fairhpc.a"}
    assert find_cycles(graph) == [["fairhpc.a", "fairhpc.sub.b", "fairhpc.a"]]


def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert len(graph) > 30 and "fairhpc.engine" in graph and "fairhpc_kernels.fair_loss" in graph
    cycles = find_cycles(graph)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("banned", ["fairhpc.evaluation", "fairhpc.tasks"])
def test_rewards_reaches_neither_evaluation_nor_tasks(banned):
    """Neither directly nor through another module: what a reward model is stands below its consumers."""
    graph = import_graph()
    rewards = sorted(m for m in graph if m == "fairhpc.rewards" or m.startswith("fairhpc.rewards."))
    assert {"fairhpc.rewards", "fairhpc.rewards.base", "fairhpc.rewards.pair_pm"} <= set(rewards)
    via = {m: [m] for m in rewards}  # module -> a path of imports from fairhpc/rewards/ to it
    stack = list(rewards)
    while stack:
        v = stack.pop()
        for w in sorted(graph[v]):
            if w not in via:
                via[w] = [*via[v], w]
                stack.append(w)
    bad = [" -> ".join(path) for m, path in sorted(via.items()) if m == banned or m.startswith(banned + ".")]
    assert not bad, "fairhpc/rewards/ reaches " + banned + ":\n" + "\n".join(bad)
