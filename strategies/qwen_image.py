"""Qwen-Image and Qwen-Image-Edit: ``comfy.ldm.qwen_image.model.QwenImageTransformer2DModel``.

Residual: image stream before the first block -> image stream after the last (text stream dropped).
"""
from __future__ import annotations

from ..magcache_core import MagCacheParams, RatioCurves
from .base import BlockStrategy, Preset

# Published by the MagCache authors: github.com/Zehong-Ma/ComfyUI-MagCache nodes.py (the version with
# HunyuanVideo 1.5, after 0675fc15); recommended threshold / retention / K from its README.
# Interleaved per step (cond, uncond), 40 steps.
QWEN_IMAGE_40 = [
    1.0, 1.0, 1.6875, 1.6875, 1.25, 1.25, 1.34375, 1.33594, 1.11719, 1.11719, 1.10938, 1.10938, 1.13281,
    1.13281, 1.14062, 1.13281, 1.10156, 1.10156, 1.14844, 1.14844, 1.07812, 1.07812, 1.09375, 1.09375,
    1.07812, 1.07812, 1.07812, 1.07031, 1.10156, 1.10156, 1.07031, 1.07031, 1.07812, 1.07812, 1.03906,
    1.03906, 1.08594, 1.08594, 1.07031, 1.07031, 1.07031, 1.07031, 1.05469, 1.05469, 1.0625, 1.0625,
    1.03125, 1.03125, 1.03906, 1.03906, 1.04688, 1.04688, 1.02344, 1.02344, 1.03906, 1.03906, 1.03125,
    1.03125, 1.01562, 1.01562, 1.01562, 1.01562, 0.98828, 0.98828, 0.99219, 0.99219, 0.94922, 0.94922,
    0.98047, 0.98047, 0.88672, 0.89062, 0.89062, 0.89062, 0.78125, 0.78125, 0.74219, 0.73828, 0.54688,
    0.54688
]


class QwenImageStrategy(BlockStrategy):
    name = "qwen_image"
    title = "Qwen-Image"
    residual = "image stream before the first block -> image stream after the last (text stream dropped)"
    model_classes = ("comfy.ldm.qwen_image.model.QwenImageTransformer2DModel",)
    double_blocks = "transformer_blocks"
    presets = {"qwen_image": Preset("qwen_image", RatioCurves.interleaved(QWEN_IMAGE_40), MagCacheParams(0.10, 0.20, 2),
                                    "Qwen-Image, 40 steps, CFG")}

    def detect_variant(self, model_patcher):
        return "qwen_image", None, "Qwen-Image (Edit shares the layout)"
