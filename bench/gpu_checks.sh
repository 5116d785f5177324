#!/bin/bash
# The checks that need a CUDA device, in one go (a GPU machine lent for minutes, or your own):
#   1. tests/dataset/test_gpu.py: in-process jobs on the GPU against the CPU, no hook left, GPU
#      memory given back, Ray's GPU actors equal to in-process on the GPU (skipped without CUDA);
#   2. bench/dataset_audit.py --device cuda: the figures, saved as JSON (write them into
#      docs/benchmarks.md with `bench/dataset_audit.py --render FILE`, on any machine);
#   3. the model tests with the shared models (lite0, digits) on the GPU (CONVLENS_TEST_DEVICE).
# Usage: bash bench/gpu_checks.sh OUTDIR   (python3 with this project's requirements; env
# TESTS_S / BENCH_S / SUITE_S bound each part's seconds)
set -u
OUTDIR=${1:?usage: bash bench/gpu_checks.sh OUTDIR}
mkdir -p "$OUTDIR"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi -L 2>/dev/null; echo "cores $(nproc)"
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'NO CUDA')"
echo "=== GPU tests [t=${SECONDS} s]"
timeout "${TESTS_S:-120}" $PY -m pytest -q -p no:cacheprovider -o addopts=-ra tests/dataset/test_gpu.py 2>&1 \
  | tee "$OUTDIR/gpu_tests.log" | tail -40
echo "=== GPU bench [t=${SECONDS} s]"
timeout "${BENCH_S:-270}" $PY bench/dataset_audit.py --device cuda --digits-batch 256 --lite-images 2048 --lite-batch 64 \
  --ray-images 2048 --helper-threads 0 --json "$OUTDIR/gpu_bench.json" --no-write 2>&1 \
  | grep -v -E "INFO|core_worker.cc|object store" | tee "$OUTDIR/gpu_bench.log" | tail -30
echo "=== model tests with the shared models on the GPU [t=${SECONDS} s]"
CONVLENS_TEST_DEVICE=cuda timeout "${SUITE_S:-150}" $PY -m pytest -q -p no:cacheprovider -o addopts=-rfE --timeout 90 \
  tests/saliency tests/relevance tests/inside tests/optimize tests/style tests/compare tests/concepts \
  --ignore tests/saliency/test_render_helpers.py --ignore tests/saliency/test_render_maps.py 2>&1 \
  | tee "$OUTDIR/gpu_suite.log" | tail -60
echo "=== done [t=${SECONDS} s]"
