"""Stable Audio Open 1.0 and Stable Audio 3: ``comfy.ldm.audio.dit.AudioDiffusionTransformer``
(its ``transformer.layers`` ask ``("double_block", i)``). Calibrate first.

Residual: the transformer's token sequence (memory tokens, prepended conditioning, audio latents)
before the first layer -> after the last; the text enters by cross-attention only.

Not for weights with local (inpainting) conditioning, ``to_local_embed`` (Stable Audio 3 as
ComfyUI 0.33 loads it may have it): ComfyUI's block-patch path calls the layer without
``local_add_cond``, so any block patch would change the model's output. Those models go to the
whole-model cache.
"""
from __future__ import annotations

from .base import BlockStrategy, diffusion_model


class StableAudioStrategy(BlockStrategy):
    name = "stable_audio"
    title = "Stable Audio"
    residual = "audio tokens (with the prepended conditioning and memory tokens) before the first layer -> after the last"
    model_classes = ("comfy.ldm.audio.dit.AudioDiffusionTransformer",)
    double_blocks = "transformer.layers"

    @classmethod
    def matches(cls, model_patcher) -> bool:
        if not super().matches(model_patcher):
            return False
        layers = getattr(getattr(diffusion_model(model_patcher), "transformer", None), "layers", None) or []
        return not any(getattr(layer, "to_local_embed", None) is not None for layer in layers)

    def detect_variant(self, model_patcher):
        what = "Stable Audio 3" if type(model_patcher.model).__name__ == "StableAudio3" else "Stable Audio Open 1.0"
        return None, None, what
