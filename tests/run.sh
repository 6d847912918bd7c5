#!/usr/bin/env bash
# The test command: sets up .venv if needed, then runs every test against real ComfyUI on the CPU.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
bash "$ROOT/tests/setup_env.sh"
cd "$ROOT"
exec "${MAGCACHE_VENV:-$ROOT/.venv}/bin/python" -m pytest tests -q -p no:cacheprovider "$@"
