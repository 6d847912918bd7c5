"""Qwen-Image and Qwen-Image-Edit: ``comfy.ldm.qwen_image.model.QwenImageTransformer2DModel``.

Residual: image stream before the first block -> image stream after the last (text stream dropped).
"""
from __future__ import annotations

from .base import BlockStrategy


class QwenImageStrategy(BlockStrategy):
    name = "qwen_image"
    title = "Qwen-Image"
    residual = "image stream before the first block -> image stream after the last (text stream dropped)"
    model_classes = ("comfy.ldm.qwen_image.model.QwenImageTransformer2DModel",)
    double_blocks = "transformer_blocks"
