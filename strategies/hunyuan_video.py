"""HunyuanVideo 1.0 / 1.5 and HunyuanImage 2.1: ``comfy.ldm.hunyuan_video.model.HunyuanVideo``.

Residual: image tokens before the double blocks -> image tokens after the single blocks (the
single blocks run on cat(img, txt), image first).
"""
from __future__ import annotations

from .base import BlockStrategy, flux_style_modulated


class HunyuanVideoStrategy(BlockStrategy):
    name = "hunyuan_video"
    title = "HunyuanVideo"
    residual = "image tokens before the double blocks -> image tokens after the single blocks (cat(img, txt))"
    model_classes = ("comfy.ldm.hunyuan_video.model.HunyuanVideo",)
    single_blocks = "single_blocks"
    single_txt_first = False

    def detect_variant(self, model_patcher):
        base = type(model_patcher.model).__name__
        if base.startswith("HunyuanImage21"):
            return None, None, f"HunyuanImage 2.1 ({base})"
        if base.startswith("HunyuanVideo15"):
            return None, None, f"HunyuanVideo 1.5 ({base})"
        return None, None, f"HunyuanVideo 1.0 ({base})"

    def modulated_input(self, dm, args):
        return flux_style_modulated(dm.double_blocks[0], args)
