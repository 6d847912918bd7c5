"""MiniMax H3 (joint audio + video): ``comfy.ldm.minimax.model.MiniMaxH3Model``. Calibrate first.

One packed single-stream sequence, (tokens, width) with no batch axis (the model runs batch size 1,
so cond and uncond are separate calls): [text | condition or reference rows | audio | video].
Residual: that whole sequence before the first block -> after the last. The blocks update their
input in place; the pack copies the stream it keeps.
"""
from __future__ import annotations

from .base import BlockStrategy


class MiniMaxH3Strategy(BlockStrategy):
    name = "minimax_h3"
    title = "MiniMax H3"
    residual = "the packed [text | conditions | audio | video] sequence before the first block -> after the last"
    model_classes = ("comfy.ldm.minimax.model.MiniMaxH3Model",)
    double_blocks = "blocks"
