"""The reproducible install: constraints.txt (what `make install` installs with) pins every dependency of
pyproject.toml within its range, envs/fairhpc.yaml has the same versions, the Makefile uses the file, and
scripts/lock.py (`make lock`) writes such a file from a real environment."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def read_pins(path: Path) -> dict[str, str]:
    pins = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.!]+)", line)
        assert m, f"{path.name}: line {n}: {line!r} is not NAME==VERSION"
        key = re.sub(r"[-_.]+", "-", m.group(1)).lower()
        assert key not in pins, f"{path.name}: line {n}: {m.group(1)} pinned twice"
        pins[key] = m.group(2)
    return pins


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_requirements():
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")
    from packaging.requirements import Requirement

    proj = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(d) for d in proj["dependencies"]]
    for extra in ("dev", "bench"):  # what `make install` installs
        reqs += [Requirement(d) for d in proj["optional-dependencies"][extra]]
    return reqs


def test_constraints_pin_every_dependency_within_pyproject_ranges():
    pins = read_pins(REPO / "constraints.txt")
    for req in project_requirements():
        if req.marker is not None and not req.marker.evaluate():
            continue
        assert norm(req.name) in pins, f"{req.name} of pyproject.toml is not pinned in constraints.txt"
        assert req.specifier.contains(pins[norm(req.name)], prereleases=True), (str(req), pins[norm(req.name)])
    assert "fairhpc" not in pins
    assert all("+" not in v for v in pins.values())  # no local label: a CUDA build of the release fits


def test_conda_env_has_the_constraints_versions():
    pins = read_pins(REPO / "constraints.txt")
    env = yaml.safe_load((REPO / "envs" / "fairhpc.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    for line in pip:
        name, version = line.split("==")
        assert pins.get(norm(name)) == version, f"envs/fairhpc.yaml: {line} but constraints.txt has " \
                                                f"{pins.get(norm(name))}"


def test_installed_environment_matches_the_constraints():
    """The interpreter running the suite (`make test`'s .venv) holds the constraints' versions of the packages
    that decide numerics and behaviour; a drift means the suite does not test what the file promises."""
    from importlib.metadata import PackageNotFoundError, version

    pins = read_pins(REPO / "constraints.txt")
    for name in ("torch", "transformers", "tokenizers", "deepspeed", "numpy", "datasets", "snakemake",
                 "triton", "safetensors", "accelerate"):
        try:
            got = version(name)
        except PackageNotFoundError:
            continue
        assert got.split("+")[0] == pins[name], (name, got, pins[name])


def test_make_install_uses_the_constraints_and_lock_exists():
    make = (REPO / "Makefile").read_text()
    assert "CONSTRAINTS ?= constraints.txt" in make and "-c $(abspath $(CONSTRAINTS))" in make
    install = make[make.index("$(VENV)/.installed:"):make.index("install: $(VENV)/.installed")]
    assert install.count("$(PIP)") == 3 and "$(CONSTRAINTS)" in install.splitlines()[0]
    assert re.search(r"^lock:", make, re.MULTILINE) and "scripts/lock.py" in make
    res = subprocess.run(["make", "-n", "lock"], cwd=REPO, check=False, capture_output=True, text=True)
    assert res.returncode == 0 and "scripts/lock.py" in res.stdout, res.stderr


def test_lock_script_pins_a_real_environment(tmp_path):
    out = tmp_path / "c.txt"
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "lock.py"), sys.executable, str(out)],
                         check=False, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    pins = read_pins(out)
    from importlib.metadata import version

    assert pins["pyyaml"] == version("pyyaml") and pins["pytest"] == version("pytest")
    assert "fairhpc" not in pins and pins["torch"] == version("torch").split("+")[0]
    assert out.read_text().startswith("# Constraints of `make install`")
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "lock.py"), sys.executable],
                         check=False, capture_output=True, text=True)
    assert bad.returncode == 2
