"""Checks shared by the nodes' inputs: every bad value gets an error naming the input."""
from __future__ import annotations

import math

import torch

from ..magcache_core import MagCacheInputError

CACHE_DEVICES = ["main_device", "cpu"]


def number(name, value, lo, hi, integer=False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or not (lo <= value <= hi) or (integer and int(value) != value):
        kind = "a whole number" if integer else "a number"
        raise MagCacheInputError(name, f"got {value!r}; expected {kind} from {lo} to {hi}")
    return int(value) if integer else float(value)


def window(start_percent, end_percent) -> tuple[float, float]:
    start = number("start_percent", start_percent, 0.0, 1.0)
    end = number("end_percent", end_percent, 0.0, 1.0)
    if start >= end:
        raise MagCacheInputError("end_percent", f"must be greater than start_percent ({start} >= {end})")
    return start, end


def listed(names) -> str:
    """Names for a message a person reads (ComfyUI's error dialog): a, b, c - not a Python list."""
    return ", ".join(str(n) for n in names) or "none"


def window_text(start: float, end: float) -> str:
    """The skipping window for a settings line; empty when it is the whole run."""
    return "" if (start, end) == (0.0, 1.0) else f", window {start:g}-{end:g}"


def offload_device(cache_device) -> torch.device | None:
    if cache_device not in CACHE_DEVICES:
        raise MagCacheInputError("cache_device", f"got {cache_device!r}; expected one of {CACHE_DEVICES}")
    return torch.device("cpu") if cache_device == "cpu" else None


def window_and_cache_inputs(start_hint: str = "", end_hint: str = "") -> dict:
    """The start/end percent and cache_device inputs both apply nodes share."""
    return {
        "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                          "Skipping may start at this point of sampling (0 = the first step)." + start_hint}),
        "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                        "Skipping stops at this point of sampling (1 = the last step)." + end_hint}),
        "cache_device": (CACHE_DEVICES, {"default": "main_device", "tooltip":
                         "Where cached residuals live: with the model (fastest) or in CPU memory (saves VRAM)."}),
    }
