#!/usr/bin/env bash
# The GPU measurements in one go, about 5 minutes on one H100/H200-class GPU (10 at most, the parts' time limits; 11 with compile):
#   bash benchmarks/gpu.sh [OUT_DIR]      (default OUT_DIR: benchmarks/results)
# writes OUT_DIR/gpu_harness.json   hand loop (default and fused SGD) / workbench / cache / torchdistill, 3 pairs
#        OUT_DIR/gpu_step_ab_cnn.json  single steps of cnn -> mlp interleaved: hand loop (default and
#                                   fused SGD) / engine / cache / torchdistill, the steadier comparison
#        OUT_DIR/gpu_profile.json   where one step's time goes (resnet32x4 -> resnet8x4, batch 128)
#        OUT_DIR/gpu_scaling.json   seconds per epoch against batch, student, teacher, data size
#        OUT_DIR/gpu_scaling.svg    the same as a figure
#        OUT_DIR/gpu_compile.json   hand loop / workbench / workbench with compile=True (one pair)
#        OUT_DIR/gpu_log.txt        everything printed; OUT_DIR/gpu_nvidia_smi.csv the card
# It first runs the CUDA tests (tests/test_cuda.py and the GPU-path tests; their output goes to the log).
# Each step has its own time limit, in order of importance, so a slow step cannot take the rest.
# torchdistill is used if installed, else from a wheel in .whl/ (pip download torchdistill --no-deps).
# KDWB_GPU_PARTS names the parts to run (default: tests harness step_ab profile scaling; add compile
# for the torch.compile comparison, about a minute more).
# A dry run of every command on the CPU, small:  KDWB_BENCH_DEVICE=cpu KDWB_BENCH_BATCH=16 \
#     KDWB_BENCH_STEPS=2 bash benchmarks/gpu.sh /tmp/gpu_dry   (the CUDA tests skip there)
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-benchmarks/results}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
DEVICE="${KDWB_BENCH_DEVICE:-cuda}" BATCH="${KDWB_BENCH_BATCH:-128}" STEPS="${KDWB_BENCH_STEPS:-40}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" KDWB_HOME="$(mktemp -d)"
exec > >(tee "$OUT_DIR/gpu_log.txt") 2>&1
if ! "$PY" -c "import torchdistill" 2>/dev/null && ls .whl/torchdistill-*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/kdwb_site .whl/torchdistill-*.whl \
        && export PYTHONPATH="$PYTHONPATH:/tmp/kdwb_site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT_DIR/gpu_nvidia_smi.csv" 2>&1
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__,
    torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"
PARTS="${KDWB_GPU_PARTS:-tests harness step_ab profile scaling}"  # a rerun may name fewer, or add compile
step() {
    case " $PARTS " in *" $1 "*) ;; *) echo "== $1: skipped (not in KDWB_GPU_PARTS)"; return ;; esac
    echo "== $(date +%T) $1"; shift; "$@" || echo "== exit status $? (a time limit is 124)"
}

step tests timeout 120 "$PY" -m pytest -q -o addopts="" -p no:cacheprovider -rs -m "not slow" tests/test_cuda.py \
    tests/test_gpu_path.py

VARIANTS=hand,hand_fused,workbench,cache,torchdistill  # run 3 also timed workbench_fp32 (docs/benchmarks.md)
NO_MEMORY=""; [ "$DEVICE" = cpu ] && NO_MEMORY=--no-memory  # a dry run: the CPU memory probes take minutes
case " $PARTS " in *" harness "*) rm -f "$OUT_DIR/gpu_harness.json" ;; esac  # the cnn part merges into this run's file only
step harness timeout 200 "$PY" benchmarks/harness.py --device "$DEVICE" --pairs resnet,wrn --batch-size "$BATCH" \
    --steps "$STEPS" --epochs 3 --rounds 7 --variants "$VARIANTS" --out "$OUT_DIR/gpu_harness.json" $NO_MEMORY
# digits has 1,347 training images (10 batches of 128): 11 epochs a run, the last 10 timed (100 steps,
# where 3 epochs gave 20 steps of ~3 ms and rounds that moved by 15%)
step harness timeout 60 "$PY" benchmarks/harness.py --device "$DEVICE" --pairs cnn --batch-size "$BATCH" \
    --steps "$STEPS" --epochs 11 --rounds 7 --variants "$VARIANTS" --out "$OUT_DIR/gpu_harness.json" --merge $NO_MEMORY
# the cnn pair's steps are ~3 ms of launching kernels: 1,000 interleaved single steps of each (~20 s)
step step_ab timeout 90 "$PY" benchmarks/step_ab.py --device "$DEVICE" --pair cnn --batch-size "$BATCH" --repeats 1000 \
    --out "$OUT_DIR/gpu_step_ab_cnn.json"
step profile timeout 40 "$PY" benchmarks/profile_step.py --device "$DEVICE" --pair resnet --batch-size "$BATCH" --steps "$((STEPS * 2))" \
    --out "$OUT_DIR/gpu_profile.json"
step scaling timeout 75 "$PY" benchmarks/scaling.py --device "$DEVICE" --repeats 1 --out "$OUT_DIR/gpu_scaling.json" \
    --svg "$OUT_DIR/gpu_scaling.svg"
step compile timeout 75 "$PY" benchmarks/harness.py --device "$DEVICE" --pairs resnet --batch-size "$BATCH" --steps "$STEPS" \
    --epochs 3 --rounds 1 --warmup-rounds 0 --variants hand,workbench,compile --out "$OUT_DIR/gpu_compile.json" $NO_MEMORY
echo "== $(date +%T) done"
