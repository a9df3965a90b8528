#!/usr/bin/env bash
# Create a SIDE virtualenv with Inseq 0.7.1 + CPU PyTorch + transformers 4.57.x,
# used only to produce reference numbers for jaxattr (never imported by jaxattr).
#
# Usage: bash benchmarks/inseq_side/setup_side_env.sh VENV_DIR
set -euo pipefail
VENV_DIR="${1:?usage: $0 VENV_DIR}"

python3 -m venv "$VENV_DIR"
PIP="$VENV_DIR/bin/pip"
"$PIP" install --upgrade pip >/dev/null 2>&1 || true

# 1) CPU-only torch. On this workplace a CPU wheel lies in /opt/wheels (pip's
#    find-links): prefer it, it has no nvidia-* dependencies (~190 MB).
#    Elsewhere fall back to PyPI's default torch (pulls the CUDA libraries,
#    which is wasteful but works on CPU).
CPU_WHEEL="$(ls /opt/wheels/torch-*+cpu-cp3*-*.whl 2>/dev/null | head -n1 || true)"
if [[ -n "$CPU_WHEEL" ]]; then
  echo "Installing CPU torch wheel: $CPU_WHEEL"
  "$PIP" install "$CPU_WHEEL"
else
  echo "No local CPU wheel found; installing torch from PyPI (includes CUDA deps)"
  "$PIP" install "torch"
fi

# 2) Inseq + matching transformers (same family as jaxattr's main env: 4.57.x),
#    plus tokenizer-training libs used by make_tiny_checkpoints.py.
#    Keep the already-installed torch (no --upgrade of it).
"$PIP" install "inseq==0.7.1" "transformers>=4.57,<4.58" sentencepiece tokenizers safetensors protobuf

"$VENV_DIR/bin/python" - <<'PY'
import torch, transformers, inseq, captum, tokenizers, sentencepiece
print("torch", torch.__version__, "cuda:", torch.version.cuda)
print("transformers", transformers.__version__)
print("inseq", inseq.__version__ if hasattr(inseq, "__version__") else "?")
print("captum", captum.__version__)
print("tokenizers", tokenizers.__version__, "sentencepiece", sentencepiece.__version__)
PY
