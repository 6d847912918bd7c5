"""LTX-Video: ``comfy.ldm.lightricks.model.LTXVModel``.

Residual: video tokens before the first transformer block -> after the last.
"""
from __future__ import annotations

import comfy.ldm.common_dit

from ..magcache_core import TeaCacheParams
from .base import BlockStrategy, TeaPreset

# github.com/welltop-cn/ComfyUI-TeaCache nodes.py at 91dff8e (threshold from its README).
TEA_LTXV = (21.4700694, -12.8016453, 2.31279151, 0.792487521, 0.00969274326)


class LTXVStrategy(BlockStrategy):
    name = "ltxv"
    title = "LTX-Video"
    residual = "video tokens before the first transformer block -> after the last"
    model_classes = ("comfy.ldm.lightricks.model.LTXVModel",)
    double_blocks = "transformer_blocks"
    tea_presets = {"ltxv": TeaPreset("ltxv", TeaCacheParams(0.06, TEA_LTXV), 0.0, "LTX-Video 0.9.x")}

    def detect_variant(self, model_patcher):
        return None, "ltxv", "LTX-Video"

    def modulated_input(self, dm, args):
        # The first block's attention input: rms_norm(x) * (1 + scale_msa) + shift_msa.
        block, x, t = dm.transformer_blocks[0], args["img"], args["vec"]
        table = block.scale_shift_table
        ada = table[None, None].to(device=x.device, dtype=x.dtype) + t.reshape(x.shape[0], t.shape[1], table.shape[0], -1)
        shift, scale = ada[:, :, 0], ada[:, :, 1]
        return comfy.ldm.common_dit.rms_norm(x) * (1 + scale) + shift
