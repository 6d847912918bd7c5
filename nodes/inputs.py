"""Checks shared by the nodes' inputs: every bad value gets an error naming the input."""
from __future__ import annotations

import torch

from ..magcache_core import MagCacheInputError
from ..magcache_core.errors import number

CACHE_DEVICES = ["main_device", "cpu"]


def window(start_percent, end_percent) -> tuple[float, float]:
    start = number("start_percent", start_percent, 0.0, 1.0)
    end = number("end_percent", end_percent, 0.0, 1.0)
    if start >= end:
        raise MagCacheInputError("end_percent", f"must be greater than start_percent ({start} >= {end})")
    return start, end


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
