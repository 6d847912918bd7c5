"""Hunyuan-DiT (1.0, 1.1, 1.2): ``comfy.ldm.hydit.models.HunYuanDiT``. Calibrate first.

Residual: image tokens before the first block -> after the last. The text never joins the image
stream (it enters through cross-attention), and the long skip connections (U-Net style: the first
half's outputs feed the second half) stay inside the blocks' span, so a skipped step needs none of
them. A ControlNet's residuals are added to those skips: on a skipped step they are not used.

TeaCache's indicator is the first block's self-attention input ``norm1(img) + shift(vec)`` (the
first block has no skip input); no published coefficients, MagCacheCalibrate fits them.
"""
from __future__ import annotations

from .base import BlockStrategy


class HunyuanDiTStrategy(BlockStrategy):
    name = "hunyuan_dit"
    title = "Hunyuan-DiT"
    residual = "image tokens before the first block -> after the last (text enters by cross-attention)"
    model_classes = ("comfy.ldm.hydit.models.HunYuanDiT",)
    double_blocks = "blocks"

    def modulated_input(self, dm, args):
        block = dm.blocks[0]
        return block.norm1(args["img"]) + block.default_modulation(args["vec"]).unsqueeze(1)
