"""JoyImage (JD JoyAI-Image): ``comfy.ldm.joyimage.model.JoyImageTransformer3DModel`` (ComfyUI 0.33), a
double-stream MMDiT on the Wan 2.1 latent. Calibrate first (no published curve).

Residual: image stream before the first block -> image stream after the last (text stream dropped;
reference-image tokens of an edit ride in the image stream after the target's).
"""
from __future__ import annotations

from .base import BlockStrategy


class JoyImageStrategy(BlockStrategy):
    name = "joyimage"
    title = "JoyImage"
    residual = "image stream before the first block -> image stream after the last (text stream dropped)"
    model_classes = ("comfy.ldm.joyimage.model.JoyImageTransformer3DModel",)
    double_blocks = "double_blocks"

    def modulated_input(self, dm, args):
        # The block's own modulation table plus vec (B, 6, D): shift, scale, gate (attention), then the MLP's.
        block = dm.double_blocks[0]
        shift, scale = block.img_mod(args["vec"])[:2]
        return block.img_norm1(args["img"]) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
