"""HiDream-O1-Image: ``comfy.ldm.hidream_o1.model.HiDreamO1Transformer`` (ComfyUI 0.33), a pixel-space DiT
made of the Qwen3-VL-8B decoder run over one sequence [prompt | timestep token | target patches | reference
patches]. Calibrate first (no published curve).

Cached as a whole model, although it offers block patches (("double_block", i) over
``language_model.layers``, stream ``x``):

* Any ``patches_replace["dit"]`` entry turns off the model's own prompt K/V cache (``can_cache = not
  blocks_replace``): with block patches every computed step would run the prompt through all layers again,
  which the unpatched model does once per prompt.
* The block stream is the whole sequence, and its prompt part attends causally to itself only, so it
  leaves the blocks the same on every step: a block residual would mix that constant part into the
  magnitude ratios. The whole-model residual is the target image's velocity alone.

So the APPLY_MODEL wrapper caches ``(denoised - x) / sigma`` and the K/V cache stays on. TeaCache's
indicator is the timestep embedding the model puts at its timestep token, ``t_embedder1(1000 (1 - sigma))``.
"""
from __future__ import annotations

from .base import ModelStrategy


class HiDreamO1Strategy(ModelStrategy):
    name = "hidream_o1"
    title = "HiDream-O1"
    model_classes = ("comfy.ldm.hidream_o1.model.HiDreamO1Transformer",)

    def model_indicator(self, dm, x, timestep):
        return dm.t_embedder1(1000.0 - timestep, x.dtype)
