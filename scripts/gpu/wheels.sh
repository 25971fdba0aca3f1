#!/usr/bin/env bash
# Fetch or build into .whl/ every wheel the offline GPU run needs beyond the GPU image
# (scripts/gpu/requirements.txt: CPython 3.12, manylinux x86-64), then print them and their total size.
# Run on a machine with the package index, from the repository root:   bash scripts/gpu/wheels.sh
# The total must stay under 60 MiB (the GPU machine takes the working tree plus carried paths up to 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/../.."
REQ=scripts/gpu/requirements.txt
OUT=${WHEELS_DIR:-.whl}
PY=${PYTHON:-.venv/bin/python}      # needs torch (deepspeed's build imports it): `make install` made it
LIMIT_MIB=60
mkdir -p "$OUT"
# binary wheels for the GPU image's interpreter, whatever this machine runs
grep -v '^deepspeed==' "$REQ" | grep -v '^\s*#' | grep -v '^\s*$' > "$OUT/.binary.txt"
"$PY" -m pip download -q --no-deps --only-binary=:all: --implementation cp --python-version 3.12 \
    --abi cp312 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$OUT" -r "$OUT/.binary.txt"
rm -f "$OUT/.binary.txt"
# deepspeed is an sdist: build its pure-Python wheel here (ops are compiled on the GPU machine when used)
DS=$(grep '^deepspeed==' "$REQ")
if ! ls "$OUT"/deepspeed-"${DS#deepspeed==}"-*.whl >/dev/null 2>&1; then
    DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$OUT" "$DS"
fi
# every pinned package has its wheel, and nothing else is there
"$PY" - "$REQ" "$OUT" "$LIMIT_MIB" <<'PYEOF'
import re, sys
from pathlib import Path
req, out, limit = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
norm = lambda s: re.sub(r"[-_.]+", "_", s).lower()
pins = {norm(n): v for n, v in (l.split("==") for l in req.read_text().split("\n") if l.strip() and not l.startswith("#"))}
wheels = sorted(out.glob("*.whl"))
have = {norm(w.name.split("-")[0]): w.name.split("-")[1] for w in wheels}
missing = [f"{n}=={v}" for n, v in pins.items() if have.get(n) != v]
extra = [w.name for w in wheels if norm(w.name.split("-")[0]) not in pins]
total = 0
for w in wheels:
    size = w.stat().st_size
    total += size
    print(f"{size / 2**20:8.2f} MiB  {w.name}")
print(f"{total / 2**20:8.2f} MiB  total in {out}/ ({len(wheels)} wheels; limit {limit:g} MiB)")
if missing:
    sys.exit(f"wheels.sh: no wheel for {', '.join(missing)} in {out}/")
if extra:
    sys.exit(f"wheels.sh: {out}/ holds wheels that {req} does not pin: {', '.join(extra)}; remove them")
if total > limit * 2**20:
    sys.exit(f"wheels.sh: {total / 2**20:.1f} MiB is over the {limit:g} MiB the GPU machine can carry")
PYEOF
