"""SeedVR2 (video restoration, 3B and 7B): ``comfy.ldm.seedvr.model.NaDiT``, keys ``("block", i)``.
Calibrate first.

A block patch gets and returns ``{"vid", "txt", "vid_shape", "txt_shape"}`` (plus ``emb``, ``cache``
in its args). The streams are packed NaViT-style: ``vid`` is every sample's video tokens one after
another, (tokens, width) with no batch axis, so a batch's samples are equal slices of it.
Residual: the packed video tokens after the first block -> after the last (the text stream is
dropped). The first block always runs: the blocks share a per-call memo (``cache``) with the output
layer, whose adaLN reads the timestep table block 0's adaLN leaves there (both are keyed
``emb_repeat_0_vid``); a call whose blocks all passed through would leave it unset and fail (3B). When cond and uncond share a batch the model gives row i the other row's text and swaps
its output back, so inside the blocks row i belongs to the other cond: residuals stay with their
rows, which is consistent while every step is batched alike. (With its own positive and negative
embeddings, 58 and 64 tokens, ComfyUI runs cond and uncond in separate calls.)
"""
from __future__ import annotations

from .base import BlockStrategy


class SeedVR2Strategy(BlockStrategy):
    name = "seedvr2"
    title = "SeedVR2"
    residual = "packed video tokens after the first block -> after the last (text stream dropped)"
    model_classes = ("comfy.ldm.seedvr.model.NaDiT",)
    double_blocks = "blocks"
    block_kind = "block"
    stream = "vid"
    carried = ("vid", "txt", "vid_shape", "txt_shape")

    @classmethod
    def find_blocks(cls, dm):
        return super().find_blocks(dm)[1:]
