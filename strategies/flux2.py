"""FLUX.2: ``comfy.ldm.flux.model.Flux`` loaded as ``model_base.Flux2``. Calibrate first (no published curve).

Residual: image tokens before the double blocks -> image tokens after the single blocks.
"""
from __future__ import annotations

from .base import BlockStrategy


class Flux2Strategy(BlockStrategy):
    name = "flux2"
    title = "FLUX.2"
    residual = "image tokens before the double blocks -> image tokens after the single blocks"
    model_classes = ("comfy.ldm.flux.model.Flux",)
    model_bases = ("comfy.model_base.Flux2",)
    single_blocks = "single_blocks"
