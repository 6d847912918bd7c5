"""Hunyuan3D 2.0 (shape generation): ``comfy.ldm.hunyuan3d.model.Hunyuan3Dv2``. Calibrate first.

Residual: shape latent tokens before the double blocks -> after the single blocks (cat(txt, img)).
"""
from __future__ import annotations

from .base import BlockStrategy


class Hunyuan3DStrategy(BlockStrategy):
    name = "hunyuan3d"
    title = "Hunyuan3D 2.0"
    residual = "shape latent tokens before the double blocks -> after the single blocks (cat(txt, img))"
    model_classes = ("comfy.ldm.hunyuan3d.model.Hunyuan3Dv2",)
    single_blocks = "single_blocks"
