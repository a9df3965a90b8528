#!/usr/bin/env bash
# The accelerator check: one prepared script for a lent GPU machine (see the device tool's
# README: one call, under 10 minutes). Run from the repository root there, with the wheels
# carried in .whl/ (transformers 4.57.x, tokenizers 0.22.x, huggingface_hub 0.36.x: the GPU
# image ships transformers 5, which has no Flax classes). Writes everything under $OUT.
#
#   (here)   pip download --no-deps --only-binary=:all: --python-version 3.12 \
#              --platform manylinux_2_17_x86_64 -d .whl transformers==4.57.6 \
#              tokenizers==0.22.2 huggingface_hub==0.36.0
#   (device) bash benchmarks/gpu_check.sh        # with carry: [".whl"]
set -uo pipefail
OUT="${OUT:-/tmp/jaxattr-gpu-check}"
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || { echo "wheel install failed"; exit 1; }
export PYTHONPATH="/tmp/site:$PWD"
export JAXATTR_CACHE_DIR=/tmp/jaxattr-xla PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
{ nvidia-smi -L; python3 -c "import jax, flax, transformers; print('jax', jax.__version__, 'flax', flax.__version__, 'transformers', transformers.__version__, jax.devices())"; } 2>&1 | tee "$OUT/device.txt"

# 1. the test suite's fast subset on the GPU (float32 matmuls at full precision, so the
#    cross-checks against Inseq keep their 1e-3 tolerance)
JAX_DEFAULT_MATMUL_PRECISION=highest timeout 270 python3 -m pytest -q -p no:cacheprovider \
  tests/test_functional.py tests/test_pipeline.py tests/test_inseq_reference.py \
  tests/test_contrast.py tests/test_separable.py 2>&1 | tail -25 | tee "$OUT/tests.txt"

# 2. the device benchmark: GPT-2-124M-sized, 8 x (16 + 16) tokens, warm/cold/FLOP/s
timeout 170 python3 benchmarks/device_bench.py --json "$OUT/bench.json" 2>&1 \
  | grep -v -i warn | tail -12 | tee "$OUT/bench.txt"
