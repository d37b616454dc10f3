#!/usr/bin/env bash
# The GPU measurements in one go, under 5 minutes on one H100/H200-class GPU:
#   bash benchmarks/gpu.sh [OUT_DIR]      (default OUT_DIR: benchmarks/results)
# writes OUT_DIR/gpu_harness.json   hand loop / workbench / cache / torchdistill / workbench_fp32, 3 pairs
#        OUT_DIR/gpu_profile.json   where one step's time goes (resnet32x4 -> resnet8x4, batch 128)
#        OUT_DIR/gpu_scaling.json   seconds per epoch against batch, student, teacher, data size
#        OUT_DIR/gpu_scaling.svg    the same as a figure
#        OUT_DIR/gpu_compile.json   hand loop / workbench / workbench with compile=True (one pair)
#        OUT_DIR/gpu_log.txt        everything printed; OUT_DIR/gpu_nvidia_smi.csv the card
# Each step has its own time limit, in order of importance, so a slow step cannot take the rest.
# torchdistill is used if installed, else from a wheel in .whl/ (pip download torchdistill --no-deps).
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-benchmarks/results}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" KDWB_HOME="$(mktemp -d)"
exec > >(tee "$OUT_DIR/gpu_log.txt") 2>&1
if ! "$PY" -c "import torchdistill" 2>/dev/null && ls .whl/torchdistill-*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/kdwb_site .whl/torchdistill-*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/kdwb_site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT_DIR/gpu_nvidia_smi.csv" 2>&1
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name())"
step() { echo "== $(date +%T) $1"; shift; "$@" || echo "== exit status $? (a time limit is 124)"; }

step harness timeout 150 "$PY" benchmarks/harness.py --device cuda --batch-size 128 --steps 20 --epochs 3 \
    --rounds 3 --variants hand,workbench,cache,torchdistill,workbench_fp32 --out "$OUT_DIR/gpu_harness.json"
step profile timeout 40 "$PY" benchmarks/profile_step.py --device cuda --pair resnet --batch-size 128 --steps 40 \
    --out "$OUT_DIR/gpu_profile.json"
step scaling timeout 60 "$PY" benchmarks/scaling.py --device cuda --repeats 1 --out "$OUT_DIR/gpu_scaling.json" \
    --svg "$OUT_DIR/gpu_scaling.svg"
step compile timeout 75 "$PY" benchmarks/harness.py --device cuda --pairs resnet --batch-size 128 --steps 20 \
    --epochs 3 --rounds 1 --warmup-rounds 0 --variants hand,workbench,compile --out "$OUT_DIR/gpu_compile.json"
echo "== $(date +%T) done"
