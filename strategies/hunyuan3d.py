"""Hunyuan3D (shape generation). Calibrate first.

* 2.0 and 2mini: ``comfy.ldm.hunyuan3d.model.Hunyuan3Dv2`` (FLUX-style double + single blocks).
  Residual: shape latent tokens before the double blocks -> after the single blocks (cat(txt, img)).
* 2.1: ``comfy.ldm.hunyuan3dv2_1.hunyuandit.HunYuanDiTPlain``, keys ``("block", i)``; a block patch
  gets ``{"x", "t", "cond", "skip"}`` and returns the stream itself, a tensor. Residual:
  cat(time token, shape latent tokens) before the first block -> after the last; the image features
  enter by cross-attention only, and the U-Net-style long skips stay inside the blocks' span.
  With CFG the model swaps the halves of the image features (ComfyUI 0.33: whenever the batch has
  two or more rows) and swaps its output back, so inside the blocks row i belongs to the other
  cond: residuals stay with their rows, which is consistent while every step is batched alike.
"""
from __future__ import annotations

from .base import BlockStrategy


class Hunyuan3DStrategy(BlockStrategy):
    name = "hunyuan3d"
    title = "Hunyuan3D 2.0"
    residual = "shape latent tokens before the double blocks -> after the single blocks (cat(txt, img))"
    model_classes = ("comfy.ldm.hunyuan3d.model.Hunyuan3Dv2",)
    single_blocks = "single_blocks"

    def detect_variant(self, model_patcher):
        mini = type(getattr(model_patcher.model, "model_config", None)).__name__ == "Hunyuan3Dv2mini"
        return None, None, "Hunyuan3D 2mini" if mini else "Hunyuan3D 2.0"


class Hunyuan3D21Strategy(BlockStrategy):
    name = "hunyuan3d21"
    title = "Hunyuan3D 2.1"
    residual = "cat(time token, shape latent tokens) before the first block -> after the last"
    model_classes = ("comfy.ldm.hunyuan3dv2_1.hunyuandit.HunYuanDiTPlain",)
    double_blocks = "blocks"
    block_kind = "block"
    stream = "x"

    def stream_out(self, key, out, n_tokens):
        return out

    def with_stream(self, key, args, stream):
        return stream

    def passthrough(self, key, args):
        return args["x"]
