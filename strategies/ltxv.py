"""LTX-Video: ``comfy.ldm.lightricks.model.LTXVModel``.

Residual: video tokens before the first transformer block -> after the last.
"""
from __future__ import annotations

import comfy.ldm.common_dit

from .base import BlockStrategy


class LTXVStrategy(BlockStrategy):
    name = "ltxv"
    title = "LTX-Video"
    residual = "video tokens before the first transformer block -> after the last"
    model_classes = ("comfy.ldm.lightricks.model.LTXVModel",)
    double_blocks = "transformer_blocks"

    def modulated_input(self, dm, args):
        # The first block's attention input: rms_norm(x) * (1 + scale_msa) + shift_msa.
        block, x, t = dm.transformer_blocks[0], args["img"], args["vec"]
        table = block.scale_shift_table
        ada = table[None, None].to(device=x.device, dtype=x.dtype) + t.reshape(x.shape[0], t.shape[1], table.shape[0], -1)
        shift, scale = ada[:, :, 0], ada[:, :, 1]
        return comfy.ldm.common_dit.rms_norm(x) * (1 + scale) + shift
