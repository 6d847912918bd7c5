"""LongCat-Image: ``comfy.ldm.flux.model.Flux`` loaded as ``model_base.LongCatImage`` (ComfyUI 0.33; FLUX's
blocks and block patches, a Qwen2.5-VL text input, no guidance embedding, no pooled vector). Calibrate
first (no published curve).

Residual: image tokens before the double blocks -> image tokens after the single blocks (FLUX's layout:
the single blocks run on cat(txt, img)).
"""
from __future__ import annotations

from .base import BlockStrategy, flux_style_modulated


class LongCatImageStrategy(BlockStrategy):
    name = "longcat_image"
    title = "LongCat-Image"
    residual = "image tokens before the double blocks -> image tokens after the single blocks"
    model_classes = ("comfy.ldm.flux.model.Flux",)
    model_bases = ("comfy.model_base.LongCatImage",)
    single_blocks = "single_blocks"

    def modulated_input(self, dm, args):
        return flux_style_modulated(dm.double_blocks[0], args)
