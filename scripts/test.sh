#!/usr/bin/env bash
# Set up, lint, and run the test suite. Extra arguments go to pytest (e.g. -m sweep).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The HTML page is checked in a headless browser: Debian's chromium, where we can install it.
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "test: installing Debian's chromium for the browser test"
  (apt-get install -y -q chromium >/dev/null 2>&1 \
    || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1)) \
    || echo "test: could not install chromium; the browser test will be skipped"
fi
.venv/bin/ruff check fxprune tests benchmarks
.venv/bin/python -m pytest "$@"
