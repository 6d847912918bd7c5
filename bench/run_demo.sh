#!/usr/bin/env bash
# The demo: sets up the venv if needed (tests/setup_env.sh; COMFYUI_PATH picks another ComfyUI), then runs
# bench/demo.py: a real ComfyUI server on the CPU, the reference model uncached / MagCache / TeaCache.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=$(bash "$ROOT/tests/setup_env.sh" | tail -n 1)
exec "$VENV/bin/python" "$ROOT/bench/demo.py" "$@"
