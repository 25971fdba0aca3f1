"""Write the constraints file of `make install` from a resolved environment: `python scripts/lock.py PYTHON OUT`.

PYTHON is the interpreter of a virtual environment in which fairhpc was installed with `.[dev,bench]` (as
`make lock` does).  Every distribution it holds is pinned with ``==`` (pip, setuptools and wheel included,
fairhpc itself left out); a local version label such as ``+cpu`` is dropped, so that the same file admits the
CUDA build of the same torch release on a cluster.  The file is replaced atomically.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

SKIP = {"fairhpc"}


def pins(python: str) -> list[str]:
    out = subprocess.run([python, "-m", "pip", "freeze", "--all", "--exclude-editable"], check=True,
                         capture_output=True, text=True).stdout
    lines = []
    for line in out.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^+\s;]+)(\+\S+)?", line)
        if m is None:
            raise SystemExit(f"lock.py: cannot pin {line!r} (not NAME==VERSION: a direct URL or local path?)")
        if m.group(1).lower().replace("_", "-") in SKIP:
            continue
        lines.append(f"{m.group(1)}=={m.group(2)}")
    return sorted(lines, key=str.lower)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    python, out = argv
    version = subprocess.run([python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    body = pins(python)
    header = (f"# Constraints of `make install` (make lock, {datetime.now(timezone.utc):%Y-%m-%d}, Python {version}).\n"
              "# Every package of `pip install -e '.[dev,bench]'` at one exact version; torch without its local\n"
              "# label, so a site's CUDA build of the same release satisfies it (README, Set-up).\n")
    path = Path(out)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(header + "".join(p + "\n" for p in body))
    os.replace(tmp, path)
    print(f"{path}: {len(body)} packages pinned")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
