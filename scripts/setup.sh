#!/usr/bin/env bash
# Set up .venv with openseason and its test dependencies, offline except for the package registries.
# On a machine without an NVIDIA GPU we install torch==2.13.0 first (its CPU wheel is available
# locally here) so that no dependency drags in the multi-GB CUDA build; elsewhere the platform default.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
# (this machine's pip config names local mirrors that may be absent: drop those warnings, keep errors)
quiet() { grep -v '^WARNING: Location' || true; }
python -m pip install -q --upgrade pip 2>&1 | quiet
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    pip install -q torch 2>&1 | quiet
  else
    { pip install -q torch==2.13.0 2>&1 || pip install -q torch 2>&1; } | quiet
  fi
fi
pip install -q -e ".[test]" 2>&1 | quiet
# OpenFlamingo is a test-only peer whose pinned torch and open_clip we do not want: no dependencies
# (the modules we compare against need only torch, einops and einops-exts, from the test extras).
pip install -q --no-deps open_flamingo==2.0.1 2>&1 | quiet
python -c "import openseason, torch; print(f'openseason ready (torch {torch.__version__})')"
