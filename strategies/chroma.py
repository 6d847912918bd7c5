"""Chroma and Chroma Radiance: ``comfy.ldm.chroma.model.Chroma`` / ``chroma_radiance.model.ChromaRadiance``.

Residual: image tokens before the double blocks -> image tokens after the single blocks (as FLUX).
"""
from __future__ import annotations

from ..magcache_core import MagCacheParams, RatioCurves
from .base import BlockStrategy, Preset

# Published by the MagCache authors: github.com/Zehong-Ma/ComfyUI-MagCache nodes.py (the version with
# HunyuanVideo 1.5, after 0675fc15); recommended threshold / retention / K from its README.
# Interleaved per step (cond, uncond), 26 steps.
CHROMA_26 = [
    1.0, 1.0, 1.00781, 1.01562, 1.03906, 1.03906, 1.05469, 1.05469, 1.07031, 1.07031, 1.04688, 1.04688,
    1.03906, 1.03906, 1.03906, 1.03906, 1.01562, 1.01562, 1.05469, 1.05469, 0.99609, 0.99609, 1.02344,
    1.02344, 1.01562, 1.01562, 0.99609, 0.99609, 1.0, 1.0, 0.99219, 0.99219, 1.00781, 1.00781, 1.00781,
    1.00781, 0.97656, 0.97656, 0.98828, 0.98828, 0.97266, 0.97266, 1.0, 1.0, 0.93359, 0.93359, 0.94922,
    0.94922, 0.92578, 0.92578, 1.0625, 1.0625
]


class ChromaStrategy(BlockStrategy):
    name = "chroma"
    title = "Chroma"
    residual = "image tokens before the double blocks -> image tokens after the single blocks"
    model_classes = ("comfy.ldm.chroma.model.Chroma",)
    single_blocks = "single_blocks"
    presets = {"chroma": Preset("chroma", RatioCurves.interleaved(CHROMA_26), MagCacheParams(0.10, 0.25, 2),
                                "Chroma, 26 steps, CFG")}

    def detect_variant(self, model_patcher):
        return "chroma", None, "Chroma"


class ChromaRadianceStrategy(ChromaStrategy):
    name = "chroma_radiance"
    title = "Chroma Radiance"
    model_classes = ("comfy.ldm.chroma_radiance.model.ChromaRadiance",)
    presets = {}

    def detect_variant(self, model_patcher):
        return None, None, "Chroma Radiance (pixel space)"
