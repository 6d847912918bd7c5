"""Chroma and Chroma Radiance: ``comfy.ldm.chroma.model.Chroma`` / ``chroma_radiance.model.ChromaRadiance``.

Residual: image tokens before the double blocks -> image tokens after the single blocks (as FLUX).
"""
from __future__ import annotations

from .base import BlockStrategy


class ChromaStrategy(BlockStrategy):
    name = "chroma"
    title = "Chroma"
    residual = "image tokens before the double blocks -> image tokens after the single blocks"
    model_classes = ("comfy.ldm.chroma.model.Chroma",)
    single_blocks = "single_blocks"


class ChromaRadianceStrategy(ChromaStrategy):
    name = "chroma_radiance"
    title = "Chroma Radiance"
    model_classes = ("comfy.ldm.chroma_radiance.model.ChromaRadiance",)
