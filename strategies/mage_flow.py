"""MageFlow (Microsoft Mage): ``comfy.ldm.mage_flow.model.MageFlowTransformer2DModel`` (ComfyUI 0.33), a
Qwen-Image-style double-stream MMDiT (Qwen-Image's own block class) at patch 1. Calibrate first (no
published curve).

Residual: image stream before the first block -> image stream after the last (the text stream, kept
apart in every block, is dropped; reference-image tokens of an edit ride in the image stream).
"""
from __future__ import annotations

from .base import BlockStrategy, qwen_style_modulated


class MageFlowStrategy(BlockStrategy):
    name = "mage_flow"
    title = "MageFlow"
    residual = "image stream before the first block -> image stream after the last (text stream dropped)"
    model_classes = ("comfy.ldm.mage_flow.model.MageFlowTransformer2DModel",)
    double_blocks = "transformer_blocks"

    def modulated_input(self, dm, args):
        return qwen_style_modulated(dm.transformer_blocks[0], args)
