#!/usr/bin/env bash
# The main job on its embedded default: prune a residual CNN on scikit-learn's digits with
# Catalyst (CPU, nothing downloaded, a few minutes) and write out/prune/ (report, ONNX, plots).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/fxprune prune "$@"
