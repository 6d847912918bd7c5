"""Lens (Microsoft): ``comfy.ldm.lens.model.LensTransformer2DModel`` (ComfyUI 0.33), a double-stream MMDiT
(48 blocks, GPT-OSS text features, FLUX.2 latent). Calibrate first (no published curve).

Residual: image stream before the first block -> image stream after the last (text stream dropped).
"""
from __future__ import annotations

from .base import BlockStrategy, qwen_style_modulated


class LensStrategy(BlockStrategy):
    name = "lens"
    title = "Lens"
    residual = "image stream before the first block -> image stream after the last (text stream dropped)"
    model_classes = ("comfy.ldm.lens.model.LensTransformer2DModel",)
    double_blocks = "transformer_blocks"

    def modulated_input(self, dm, args):
        return qwen_style_modulated(dm.transformer_blocks[0], args)
