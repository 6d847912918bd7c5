"""Kandinsky 5 (video Lite/Pro and Image): ``comfy.ldm.kandinsky5.model.Kandinsky5`` under
``model_base.Kandinsky5`` / ``Kandinsky5Image`` (ComfyUI 0.33). Calibrate first (no published curve).

Block patches: the model asks ``patches_replace["dit"]`` for ("double_block", i) over its visual blocks,
with args ``x`` (the visual tokens), ``context`` (the text, already through the text blocks),
``time_embed``, ``freqs`` and ``transformer_options``, and takes ``["x"]`` of what the patch returns. But
the ``original_block`` it hands the patch calls ``block(x=..., context=..., ...)`` while the block's
forward takes ``(visual_embed, text_embed, time_embed, freqs, transformer_options)``: it raises
TypeError, so no patch can run the block through it (ComfyUI 0.33's own bug; without patches the model
calls the block positionally and runs). The patch args carry every input the block needs, and the key
names the block, so ``original_block`` here runs ``visual_transformer_blocks[i]`` with them as the model
itself does; threshold 0 is bit-identical to the unpatched model (tests/test_architectures.py).

Residual: visual tokens before the first visual block -> after the last (the text is not in the stream).
"""
from __future__ import annotations

import torch

from .base import BlockStrategy


class Kandinsky5Strategy(BlockStrategy):
    name = "kandinsky5"
    title = "Kandinsky 5"
    residual = "visual tokens before the first visual block -> after the last (text kept apart)"
    model_classes = ("comfy.ldm.kandinsky5.model.Kandinsky5",)
    double_blocks = "visual_transformer_blocks"
    stream = "x"

    def detect_variant(self, model_patcher):
        kind = "Image" if type(model_patcher.model).__name__ == "Kandinsky5Image" else "video"
        return None, None, f"Kandinsky 5 {kind} (width {model_patcher.model.diffusion_model.model_dim})"

    def original_block(self, dm, key):
        block = getattr(dm, self.double_blocks)[key[1]]

        def run(args):
            return {"x": block(args["x"], args["context"], args["time_embed"], args["freqs"],
                               transformer_options=args.get("transformer_options", {}))}
        return run

    def modulated_input(self, dm, args):
        # The first visual block's self-attention input: norm(x) * (1 + scale) + shift.
        block = dm.visual_transformer_blocks[0]
        shift, scale, _ = torch.chunk(block.visual_modulation(args["time_embed"]), 9, dim=-1)[:3]
        return block.self_attention_norm(args["x"]) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
