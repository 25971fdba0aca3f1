"""Every repository path that README.md, docs/ or the code's comments mention exists."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOP = ("fairhpc", "kernels", "rules", "configs", "tests", "docs", "benchmarks", "scripts", "schemas",
       "profiles", "envs", "slurm")
# a repository path: starts at a top-level folder (or is a top-level file), no placeholders
PATH = re.compile(rf"(?<![\w./-])((?:{'|'.join(TOP)})/[\w./-]*[\w/]|Snakefile|Makefile|config\.yaml|pyproject\.toml)")


def mentioned(text: str) -> set[str]:
    out = set()
    for m in PATH.finditer(text):
        p = m.group(1).rstrip("/.")
        rest = text[m.end():m.end() + 1]
        if rest in "<{*" and rest:  # a pattern such as configs/runs/<name>.yaml or rules/*.smk
            continue
        out.add(p)
    return out


def test_paths_in_readme_and_docs_exist():
    sources = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    missing = {f"{src.relative_to(REPO)}: {p}" for src in sources for p in mentioned(src.read_text())
               if not (REPO / p).exists()}
    assert not missing, sorted(missing)


def test_paths_cited_in_code_exist():
    files = [*REPO.glob("fairhpc/**/*.py"), *REPO.glob("kernels/*.py"), *REPO.glob("rules/*.smk"),
             *REPO.glob("benchmarks/*.py"), REPO / "Snakefile"]
    missing = set()
    for f in files:
        for p in mentioned(f.read_text()):
            if p.split("/")[0] in ("docs", "tests", "configs", "benchmarks", "schemas", "kernels", "rules") \
                    and "." in p.rsplit("/", 1)[-1] and not (REPO / p).exists():
                missing.add(f"{f.relative_to(REPO)}: {p}")
    assert not missing, sorted(missing)


def test_the_path_check_finds_a_missing_file():
    assert mentioned("see `configs/paper/rm_llama3.yaml` and docs/method.md, not configs/runs/<name>.yaml") == \
        {"configs/paper/rm_llama3.yaml", "docs/method.md"}
    assert not (REPO / "configs/paper/rm_llama3.yaml").exists()
