#!/usr/bin/env bash
# The demo: sets up .venv if needed (tests/setup_env.sh), then runs bench/demo.py: a real ComfyUI
# server on the CPU, the shipped tiny-Wan workflow uncached / calibrating / with MagCache.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
bash "$ROOT/tests/setup_env.sh"
exec "${MAGCACHE_VENV:-$ROOT/.venv}/bin/python" "$ROOT/bench/demo.py" "$@"
