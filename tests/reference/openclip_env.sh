#!/usr/bin/env bash
# Creates the open_clip reference environment used by tests/test_openclip.py: a virtualenv beside the main one
# (default ./.venv-openclip, or the path given as $1) holding open_clip_torch and the PyTorch stack it needs.
#
# It cannot share the main venv: open_clip imports torchvision, and torchvision only imports beside the torch
# release it was built for (torch==2.14.1 + torchvision==0.29.1, a CUDA build of about 4 GB; it runs on the
# CPU), while the main venv pins torch==2.13.0. transformers, tokenizers, safetensors and numpy are pinned to
# the main venv's versions so both sides build the same HF text tower from the same files.
#
#   bash tests/reference/openclip_env.sh            # then: pytest tests/test_openclip.py
#   CLIP_JAX_OPENCLIP_PYTHON=/path/bin/python ...    # tells the tests where an existing env lives
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${1:-$ROOT/.venv-openclip}"
PYTHON="${PYTHON:-python3}"
PINS=(
  "torch==2.14.1"
  "torchvision==0.29.1"
  "open_clip_torch==3.3.0"
  "transformers==5.25.0"
  "tokenizers==0.23.3"
  "safetensors==0.8.0"
  "numpy==2.4.6"
)
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install "${PINS[@]}"
"$VENV/bin/python" -c "import open_clip, torchvision, transformers; print('open_clip', open_clip.__version__, 'torch', __import__('torch').__version__)"
printf '%s\n' "${PINS[@]}" > "$VENV/clip_jax_openclip_pins.txt"
echo "open_clip reference env ready: $VENV/bin/python"
