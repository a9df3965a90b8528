#!/usr/bin/env bash
# The accelerator check: one prepared script for ONE call on a lent GPU machine (device tool:
# at most 10 minutes a command, 15 minutes of device time per session, start-up included).
# Run from the repository root. Everything it measures is written under $OUT (7 files; at
# most 8 come back). Which issue each part settles, in priority order:
#
#   (a) lens.json          issue 18: logit lens over all 13 rows vs one forward, and tuned-lens
#                          training tokens/s vs the tuned-lens package (PyTorch) on the same GPU,
#                          GPT-2-124M size, batch 4 x 128 (the issue's "done when" shapes)
#   (b) faithfulness.json  issue 21: faithfulness (100 sequences x 16 steps x 5 bins) vs one
#                          saliency attribution of the same sequences
#   (c) native.json        issue 15: saliency and IG time of the native decoder vs transformers'
#                          Flax Llama at GPT-2-124M size (8 x (16 + 16) tokens, the compiled
#                          programs alone, 5 interleaved rounds; equal FLOPs, so the time ratio
#                          is the FLOP/s ratio: the issue asks native >= Flax; the scanned
#                          layers, whose weight slices are copies on CPU)
#   (d) bench.json         the device benchmark (device_bench.py: warm/cold, FLOP/s, % of peak)
#       tests.txt          the fast test subset at float32 'highest' matmul precision
#   summary.txt            versions, GPU, each part's timeout / exit code / seconds, key lines
#   log.txt                everything every part printed
#
# The parts share one deadline (GPU_CHECK_BUDGET seconds from the start, default 530): each
# runs under `timeout min(its cap, time left)`, and a part with under 45 s left is skipped,
# so the caps below never add up past 9 minutes. Compile time is reported apart from device
# time in every JSON (JAX's trace/lower/compile events).
#
# ---- 1. here, once, before the call (needs the network; ~35 MiB travels) ----------------
#   echo /.whl/ >> .git/info/exclude     # (already ignored by .gitignore; harmless)
#   bash benchmarks/gpu_check.sh prepare
# which runs exactly:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     --platform manylinux1_x86_64 -d .whl transformers==4.57.6 tokenizers==0.22.2 \
#     huggingface_hub==0.36.0 tuned-lens==0.2.0
#   (the image has transformers 5, which has no Flax classes, tokenizers 0.23 and
#   huggingface_hub 1.x, which transformers 4.57 refuses; tuned-lens's import path needs only
#   torch, transformers, huggingface_hub and numpy, all there, so its other declared
#   dependencies - datasets, wandb, plotly, ... - are not carried)
# and copies the benchmark tokenizer (tokenizer.json + config, 3.5 MiB) to
# benchmarks/.cache/tokenizer, so the GPU machine builds the 124M checkpoint from a seeded
# config in seconds with the same tokens as here (nothing downloaded there). It ends by
# printing what will travel (must stay under 64 MiB).
#
# ---- 2. the single device call ----------------------------------------------------------
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=570,
#       carry=[".whl", "benchmarks/.cache/tokenizer"])
# then give_back unless rerunning at once. Other modes: `core` (the old check: test subset +
# device benchmark), `lens`, `faithfulness`, `native` (one part alone).
#
# ---- 3. a dry-run here (CPU, tiny sizes, the same code paths; ~2.5 min on 2 busy cores) ---
#   PY=/work/main/.venv/bin/python OUT=/tmp/gpu-smoke bash benchmarks/gpu_check.sh smoke
#   (the torch side then runs in $JAXATTR_SIDE_PYTHON, default /work/inseq-venv/bin/python;
#   tests are only collected)
set -uo pipefail
MODE="${1:-all}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
PY="${PY:-python3}"
WHEELS=(transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.0 tuned-lens==0.2.0)
TOK_DIR=benchmarks/.cache/tokenizer
case "$MODE" in
  all|core|lens|faithfulness|native|smoke|prepare) ;;
  *) echo "usage: gpu_check.sh [all|core|lens|faithfulness|native|smoke|prepare]"; exit 2 ;;
esac

if [ "$MODE" = prepare ]; then
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}" || exit 1
  if [ ! -f "$TOK_DIR/tokenizer.json" ]; then
    # the local 124M checkpoint's tokenizer (built once, ~1 min, with the side venv if absent)
    SRC=$(PYTHONPATH="$ROOT" "$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); \
import _workload as w; print(w.ensure_checkpoint())") || exit 1
    mkdir -p "$TOK_DIR"
    cp "$SRC"/tokenizer.json "$SRC"/tokenizer_config.json "$SRC"/special_tokens_map.json \
      "$TOK_DIR"/ || exit 1
  fi
  ls -la .whl "$TOK_DIR"
  echo "travels: tracked $(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1) B," \
    "untracked-not-ignored $(git ls-files -oz --exclude-standard | du -cb --files0-from=- \
    2>/dev/null | tail -1 | cut -f1) B, .whl $(du -sb .whl | cut -f1) B," \
    "tokenizer $(du -sb "$TOK_DIR" | cut -f1) B (limit 67108864 B)"
  exit 0
fi

# the PyTorch side's interpreter: on the GPU machine the same python3 (torch is there); in a
# dry-run here the side venv
if [ "$MODE" = smoke ]; then
  export JAXATTR_SIDE_PYTHON="${JAXATTR_SIDE_PYTHON:-/work/inseq-venv/bin/python}"
else
  export JAXATTR_SIDE_PYTHON="${JAXATTR_SIDE_PYTHON:-$PY}"
fi
OUT="${OUT:-/tmp/jaxattr-gpu-check}"
mkdir -p "$OUT"
BUDGET="${GPU_CHECK_BUDGET:-530}"
START=$SECONDS
SUMMARY="$OUT/summary.txt"
LOG="$OUT/log.txt"
: >"$SUMMARY"
: >"$LOG"
say() { echo "$*" | tee -a "$SUMMARY"; }

# part NAME CAP_S CMD... : run CMD under `timeout min(CAP, time left)`, output to log.txt
part() {
  local name=$1 cap=$2; shift 2
  local left=$((BUDGET - (SECONDS - START) - 5))
  local t=$((cap < left ? cap : left))
  if [ "$t" -lt 45 ]; then
    say "== $name: skipped (${left} s left of the ${BUDGET} s budget)"
    return 0
  fi
  say "== $name: timeout ${t} s (cap ${cap} s), at $((SECONDS - START)) s"
  local t0=$SECONDS
  echo "===== $name: $*" >>"$LOG"
  timeout -k 10 "$t" "$@" >>"$LOG" 2>&1
  local rc=$?
  say "== $name: exit ${rc}$([ $rc = 124 ] && echo ' (timed out)') after $((SECONDS - t0)) s"
}

if [ "$MODE" = smoke ]; then
  SMOKE=1; LENS_ARGS=(--smoke --layer-chunks 4,3); FAITH_ARGS=(--smoke --profile); BENCH_ARGS=(--smoke)
  NATIVE_ARGS=(speed --rounds 1 --ig-steps 2 --batch 1 --no-flop-count --program-only 1
              --layer-loops scan)
  TEST_ARGS=(--co -q)   # collect only: checks the path and imports, not the 5 min of tests
else
  SMOKE=0; LENS_ARGS=(--steps 20 --repeats 20 --layer-chunks 4,13); FAITH_ARGS=(--n 100 --profile)
  BENCH_ARGS=(); TEST_ARGS=(-q)
  NATIVE_ARGS=(speed --rounds 5 --ig-steps 4 --batch 8 --no-flop-count --program-only 10
              --layer-loops scan)
fi

if [ "$SMOKE" = 0 ] && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl >>"$LOG" 2>&1 || { say "wheel install failed"; exit 1; }
  export PYTHONPATH="/tmp/site:$ROOT"
else
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
export JAXATTR_CACHE_DIR="${JAXATTR_CACHE_DIR:-/tmp/jaxattr-xla}" PYTHONUNBUFFERED=1 \
  TOKENIZERS_PARALLELISM=false TF_CPP_MIN_LOG_LEVEL=2

say "mode $MODE, budget $BUDGET s, $(date -u +%FT%TZ), $(uptime)"
{ nvidia-smi -L 2>/dev/null || echo "no nvidia-smi"; } | tee -a "$SUMMARY"
"$PY" -c "import jax, flax, optax, transformers, numpy; print('jax', jax.__version__, 'flax', \
flax.__version__, 'optax', optax.__version__, 'transformers', transformers.__version__, \
'numpy', numpy.__version__, jax.devices())" 2>&1 | grep -v -i warn | tee -a "$SUMMARY"
"$JAXATTR_SIDE_PYTHON" -c "import torch, transformers, tuned_lens; print('side: torch', \
torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, \
'tuned_lens ok')" 2>&1 | tail -1 | tee -a "$SUMMARY"

lens() {
  part lens 200 "$PY" benchmarks/lens.py "${LENS_ARGS[@]}" --json "$OUT/lens.json"
  sed -n '/^tuned-lens training/,$p' "$LOG" | grep -v -i warn | tail -12 >>"$SUMMARY"
}
faithfulness() {
  part faithfulness 220 "$PY" benchmarks/faithfulness.py "${FAITH_ARGS[@]}" \
    --json "$OUT/faithfulness.json"
  grep -E "ratio|^(wall|CPU) |perturbed inputs|compile \(trace|under cProfile" "$LOG" | tail -15 >>"$SUMMARY"
}
native() {
  part native 150 "$PY" benchmarks/native_vs_flax.py "${NATIVE_ARGS[@]}" --json "$OUT/native.json"
  grep -E "FLOP/s native / flax|max\|diff" "$LOG" | tail -6 >>"$SUMMARY"
}
bench() {
  part bench 170 "$PY" benchmarks/device_bench.py "${BENCH_ARGS[@]}" --json "$OUT/bench.json"
  grep -A6 "^matmul peak" "$LOG" | tail -7 >>"$SUMMARY"
}
tests() {
  # float32 matmuls at full precision, so the cross-checks against Inseq keep their 1e-3
  # tolerance (the GPU default is TF32)
  JAX_DEFAULT_MATMUL_PRECISION=highest part tests 270 "$PY" -m pytest -p no:cacheprovider \
    "${TEST_ARGS[@]}" tests/test_functional.py tests/test_pipeline.py \
    tests/test_inseq_reference.py tests/test_contrast.py tests/test_separable.py
  if grep -q "^===== tests" "$LOG"; then
    sed -n '/^===== tests/,$p' "$LOG" | tail -25 >"$OUT/tests.txt"
    tail -1 "$OUT/tests.txt" >>"$SUMMARY"
  fi
}
checkpoint() {
  # the shared checkpoint, built by the side python from a seeded config and the carried
  # tokenizer (no download); smoke: the tiny one
  part checkpoint 120 "$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); \
import _workload as w; print(w.ensure_checkpoint(tiny=bool($SMOKE)))"
}

case "$MODE" in
  all|smoke) checkpoint; lens; faithfulness; native; bench; tests ;;
  core) tests; bench ;;
  lens) checkpoint; lens ;;
  faithfulness) checkpoint; faithfulness ;;
  native) native ;;
esac
say "done after $((SECONDS - START)) s; files: $(ls "$OUT" | tr '\n' ' ')"
