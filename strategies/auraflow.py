"""AuraFlow: ``comfy.ldm.aura.mmdit.MMDiT``.

Residual: image tokens before the double layers -> image tokens after the single layers (they run
on cat(txt, img)). Calibrate first.
"""
from __future__ import annotations

from .base import BlockStrategy


class AuraFlowStrategy(BlockStrategy):
    name = "auraflow"
    title = "AuraFlow"
    residual = "image tokens before the double layers -> image tokens after the single layers (cat(txt, img))"
    model_classes = ("comfy.ldm.aura.mmdit.MMDiT",)
    double_blocks = "double_layers"
    single_blocks = "single_layers"
