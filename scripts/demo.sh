#!/usr/bin/env bash
# The main job on its embedded default: trace ResNet-50 (random weights, nothing downloaded,
# CPU), find its coupled channel groups, and write the table, JSON, dot and an HTML picture.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/fxprune inspect torchvision:resnet50 \
  --json out/resnet50_groups.json --dot out/resnet50_groups.dot --html out/resnet50_groups.html "$@"
