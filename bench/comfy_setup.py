"""What the GPU and cost benches share: real ComfyUI from a given tree on sys.path (CPU mode where there is no
CUDA), calibrations in a temp folder, the pack loaded as ComfyUI loads a custom node package, and a handler
that keeps the pack's log lines (its per-run summary says which steps were computed)."""
from __future__ import annotations

import importlib.util
import logging
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def load(comfy_root) -> tuple[bool, object]:
    """Import ComfyUI from ``comfy_root`` and the pack; returns (CUDA available, the pack module)."""
    comfy_root = str(Path(comfy_root).resolve())
    if comfy_root not in sys.path:
        sys.path.insert(0, comfy_root)
    import torch
    import comfy.cli_args
    cuda = torch.cuda.is_available()
    if not cuda:
        comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401
    import folder_paths
    folder_paths.set_user_directory(tempfile.mkdtemp(prefix="magcache-bench-user-"))
    spec = importlib.util.spec_from_file_location("comfyui_magcache", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_magcache"] = pack
    spec.loader.exec_module(pack)
    return cuda, pack
