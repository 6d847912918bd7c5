"""Stable Diffusion 3 / 3.5 (MMDiT): ``comfy.ldm.modules.diffusionmodules.mmdit.OpenAISignatureMMDITWrapper``.

Residual: image tokens before the first joint block -> after the last. Calibrate first.
"""
from __future__ import annotations

from .base import BlockStrategy


class SD3Strategy(BlockStrategy):
    name = "sd3"
    title = "SD3 / SD3.5"
    residual = "image tokens before the first joint block -> after the last"
    model_classes = ("comfy.ldm.modules.diffusionmodules.mmdit.OpenAISignatureMMDITWrapper",)
    double_blocks = "joint_blocks"
