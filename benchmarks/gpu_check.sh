#!/usr/bin/env bash
# The GPU checks in one command, for a machine with a CUDA GPU and no network.
#
#   bash benchmarks/gpu_check.sh prepare   # here, with the network: wheels the GPU image lacks -> .whl/
#   bash benchmarks/gpu_check.sh run       # there (carry .whl/): tests and benchmarks -> $OUT
#
# `run` installs the carried wheels into /tmp/site (no network, no dependency resolution), puts
# src/ on PYTHONPATH (no install of this package), then runs, each step's output under $OUT
# (default benchmarks/results/gpu):
#   1. nvidia-smi and torch's view of the device (device.txt);
#   2. the CUDA tests, tests/test_cuda.py: training steps, bf16 autocast without host syncs, the
#      Triton sparse decoder, iterative inference and the model forward against the CPU
#      (cuda_tests.log);
#   3. the TopK training step, ours against sparsify on the same GPU, same shapes
#      (topk_training_gpu.json; the JSON records the device name);
#   4. batched FISTA/OMP on the GPU against scikit-learn on the CPU (inference_gpu.json).
# Every step runs even if an earlier one failed; the exit status is the first failure's.
# Sized to end in about 6 minutes on one H200 (most of it the CPU side of step 4).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# packages the GPU image (python 3.12, torch, transformers, safetensors, scikit-learn, pytest,
# ... already there) lacks: ours (tenacity) and sparsify's, pinned to what the CPU tests use
WHEELS=(
    tenacity==9.2.1
    eai-sparsify==1.3.3
    datasets==5.2.0
    natsort==8.4.0
    schedulefree==1.4.1
    simple-parsing==0.1.9
    docstring-parser==0.18.0
    dill==0.4.1
    multiprocess==0.70.19
)

prepare() {
    mkdir -p .whl
    "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    ls -l .whl
}

run() {
    local out=${OUT:-benchmarks/results/gpu} status=0
    mkdir -p "$out"
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl || status=1
        export PYTHONPATH="$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    else
        export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    fi
    export PYTHONUNBUFFERED=1
    {
        nvidia-smi || true
        "$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))"
    } >"$out/device.txt" 2>&1 || status=1
    "$PY" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_cuda.py \
        2>&1 | tee "$out/cuda_tests.log" || status=1
    "$PY" benchmarks/bench_topk_training.py --device cuda --tools sparsecodes,sparsify \
        --encoders none --warmup 5 --steps 50 --out "$out/topk_training_gpu.json" \
        2>&1 | tee "$out/topk_training_gpu.log" || status=1
    "$PY" benchmarks/bench_inference_sklearn.py --device cuda --repeats 3 --sk-repeats 1 \
        --threads 8 --out "$out/inference_gpu.json" 2>&1 | tee "$out/inference_gpu.log" || status=1
    return "$status"
}

case "${1:-}" in
prepare) prepare ;;
run) run ;;
*)
    echo "usage: bash benchmarks/gpu_check.sh prepare|run" >&2
    exit 2
    ;;
esac
