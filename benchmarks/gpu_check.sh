#!/usr/bin/env bash
# The GPU check, in one go on a bare GPU machine (JAX with CUDA, flax, optax, torch; no TensorFlow
# needed): the accelerator test subset, then the Flax-vs-PyTorch table in bf16 and float32.
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # default benchmarks/results/gpu; about 8 minutes on an H100/H200
# Writes OUT_DIR/results_gpu_bf16.{md,json} and results_gpu_float32.{md,json} (bench_models.py's tables).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/gpu}
ACCELERATOR_TESTS="tests/test_parity_resnet3d.py tests/test_train.py tests/test_conv.py"
MODELS=c3d,r3d_18,r2plus1d_18,i3d,i3d_r50,slowfast_r50,x3d_m
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c "import jax; b = jax.default_backend(); assert b == 'gpu', f'JAX backend is {b}, not gpu: {jax.devices()}'"
if python -c "import pytest" 2>/dev/null; then
  # -o addopts= : the project's defaults ask for pytest-xdist, which a bare image may lack
  python -m pytest -q -o addopts= -p no:cacheprovider -m accelerator $ACCELERATOR_TESTS
else
  echo "pytest is not installed: skipping the accelerator tests (pip install pytest)" >&2
fi
for dtype in bf16 float32; do
  python benchmarks/bench_models.py --device gpu --dtype "$dtype" --models "$MODELS" --clips 16x112x112 \
    --batch 32 --rounds 3 --steps 5 --out "$OUT" --suffix "_gpu_$dtype"
done
echo "wrote $OUT/results_gpu_bf16.md and $OUT/results_gpu_float32.md"
