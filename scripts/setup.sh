#!/usr/bin/env bash
# Create .venv with the pinned development environment (idempotent; reinstalls only when
# pyproject.toml changed). torch==2.14.1 and torchvision==0.29.1 come from the pins in the
# `dev` extra.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.fxprune-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing fxprune and its dev environment into .venv (torch takes about a minute)"
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -m pip install -q -e ".[dev]" 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import fxprune, torch, torchvision, onnx, onnxruntime" \
    || { echo "setup: installation failed" >&2; exit 1; }
  touch "$stamp"
fi
