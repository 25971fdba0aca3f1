#!/usr/bin/env bash
# Every GPU claim of the project measured in one offline run on one CUDA GPU (< 9 minutes on an H100).
#
#   bash scripts/gpu/check.sh [--out DIR]         on the GPU machine, from the repository root
#   bash scripts/gpu/check.sh --cpu-smoke --out DIR   here: the same steps on CPU, tiny sizes, interpreter
#
# GPU run: installs the wheels carried in .whl/ (scripts/gpu/wheels.sh made them) into a private --target
# folder (.gpu-site/, --no-deps: the image's torch is never touched), prints the versions and nvidia-smi, then
# runs each step under its own time budget; a step that fails or runs out of time is recorded and the next
# one runs.  Steps (scripts/gpu/README.md says what each figure means):
#   kernels          fused fairness kernel vs float64 reference, every mode/tau/dtype, B 1 ... 1,048,576,
#                    strided inputs, profiler-counted launches          -> kernels.csv
#   bench_fair_loss  torch eager fp32, torch.compile fp32, fused kernel; forward/backward/full; the empty
#                    kernel launch of the same run                       -> fair_loss.csv, fair_loss.png
#   dpo_memory       one fair-DPO step's head at V 128,256, H 4,096, T 1,024, 4 and 8 pairs, bf16: eager,
#                    chunked (Triton on CUDA), Liger's fused linear DPO  -> dpo_memory.csv
#   train            train-rm fr and train-dpo fc, hidden 1,024 x 8 layers, bf16, ZeRO-2, 30 steps, fused vs
#                    torch                                               -> train.csv
# Everything goes to DIR (default $OUT, else results/gpu): at most 8 files: summary.json (device, driver,
# CUDA, versions, git revision, each step's status and wall time), check.log, the CSVs and one PNG.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
SMOKE=0
DEST=${OUT:-results/gpu}
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu-smoke) SMOKE=1 ;;
        --out) DEST="$2"; shift ;;
        --out=*) DEST="${1#--out=}" ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "check.sh: unknown argument $1 (use --cpu-smoke, --out DIR)" >&2; exit 2 ;;
    esac
    shift
done
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fairhpc-gpu.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
exec > >(tee "$DEST/check.log") 2>&1
: > "$WORK/steps.tsv"
START=$(date +%s)

if [ "$SMOKE" = 1 ]; then
    PY=${PYTHON:-$REPO/.venv/bin/python}
    [ -x "$PY" ] || PY=python3
    # what the GPU image lacks must not be imported by any step: refuse it here as the image would
    mkdir -p "$WORK/block"
    cat > "$WORK/block/sitecustomize.py" <<'PYEOF'
import sys
class _NotOnTheGpuImage:
    NAMES = ("datasets", "pyarrow", "snakemake")
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.NAMES:
            raise ModuleNotFoundError(f"No module named {name!r} (not on the GPU image; check.sh --cpu-smoke)")
        return None
sys.meta_path.insert(0, _NotOnTheGpuImage())
PYEOF
    export PYTHONPATH="$WORK/block:$REPO${PYTHONPATH:+:$PYTHONPATH}"
    export CUDA_VISIBLE_DEVICES=""
    B_KERNELS=90 B_BENCH=60 B_DPO=60 B_TRAIN=90
    KERNELS_ARGS=(--smoke)
    BENCH_ARGS=(--sizes 8,64 --device cpu)
    DPO_ARGS=(--cases 32000:128:128:2 --repeats 1 --timeout 50)
    TRAIN_ARGS=(--smoke)
else
    PY=${PYTHON:-python3}
    SITE="$REPO/.gpu-site"
    if ls .whl/*.whl >/dev/null 2>&1; then
        echo "== installing $(ls .whl/*.whl | wc -l) carried wheels into $SITE (--no-deps, --target)"
        "$PY" -m pip install -q --no-index --no-deps --target "$SITE" --upgrade .whl/*.whl \
            || echo "check.sh: installing the wheels failed; steps that need them will fail"
    else
        echo "check.sh: no wheels in .whl/ (run scripts/gpu/wheels.sh where the package index is reachable)"
    fi
    export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
    unset TRITON_INTERPRET
    B_KERNELS=110 B_BENCH=140 B_DPO=110 B_TRAIN=130
    KERNELS_ARGS=()
    BENCH_ARGS=(--sizes 64,512,4096,32768,262144,1048576 --providers torch_fp32,torch_compile_fp32,triton
                --device cuda)
    DPO_ARGS=(--cases 128256:1024:4096:4,128256:1024:4096:8 --dtype bfloat16 --repeats 2 --timeout 50)
    TRAIN_ARGS=()
fi
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
echo "== versions"
"$PY" - <<'PYEOF'
import importlib, platform, sys
print("python", sys.version.split()[0], platform.machine())
for name in ("torch", "triton", "transformers", "deepspeed", "liger_kernel", "flash_attn", "jsonschema"):
    try:
        m = importlib.import_module(name)
        print(f"{name:13s}", getattr(m, "__version__", "?"), getattr(m, "__file__", ""))
    except Exception as e:  # noqa: BLE001
        print(f"{name:13s} not available ({type(e).__name__})")
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PYEOF
command -v nvidia-smi >/dev/null && nvidia-smi || echo "nvidia-smi: not found"

step() {  # step NAME BUDGET_S COMMAND...
    local name=$1 budget=$2; shift 2
    echo "== step $name (budget ${budget} s): $*"
    local t0 rc
    t0=$EPOCHREALTIME
    timeout --kill-after=10 "$budget" "$@"
    rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(awk "BEGIN {printf \"%.1f\", $EPOCHREALTIME - $t0}")" "$budget" >> "$WORK/steps.tsv"
    echo "== step $name: exit $rc"
}

step kernels "$B_KERNELS" "$PY" scripts/gpu/kernel_parity.py --csv "$DEST/kernels.csv" "${KERNELS_ARGS[@]}"
step bench_fair_loss "$B_BENCH" "$PY" benchmarks/bench_fair_loss.py --csv "$DEST/fair_loss.csv" \
    --png "$DEST/fair_loss.png" "${BENCH_ARGS[@]}"
step dpo_memory "$B_DPO" "$PY" benchmarks/bench_dpo_memory.py --csv "$DEST/dpo_memory.csv" \
    --png "$WORK/dpo_memory.png" "${DPO_ARGS[@]}"
step train "$B_TRAIN" "$PY" scripts/gpu/train_compare.py --csv "$DEST/train.csv" --work "$WORK/train" \
    "${TRAIN_ARGS[@]}"

"$PY" scripts/gpu/summary.py --steps "$WORK/steps.tsv" --out "$DEST" --smoke "$SMOKE" \
    --wall "$(( $(date +%s) - START ))"
