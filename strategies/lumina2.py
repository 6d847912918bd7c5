"""Lumina 2 and Z-Image: ``comfy.ldm.lumina.model.NextDiT`` (ComfyUI 0.3.75 gives it no block
patches, so the whole model is cached).

TeaCache's indicator is the timestep embedding ``t_embedder(1 - t)``, as in the TeaCache
authors' Lumina 2 code; with the whole model cached the coefficients are used as published.
"""
from __future__ import annotations

from ..magcache_core import TeaCacheParams
from .base import ModelStrategy, TeaPreset

# github.com/welltop-cn/ComfyUI-TeaCache nodes.py at 91dff8e (threshold and start from its README).
TEA_LUMINA2 = (-874.643948, 466.059906, -75.1559762, 5.32836175, -0.0327258296)


class Lumina2Strategy(ModelStrategy):
    name = "lumina2"
    title = "Lumina 2 / Z-Image"
    model_classes = ("comfy.ldm.lumina.model.NextDiT",)
    tea_presets = {"lumina_2": TeaPreset("lumina_2", TeaCacheParams(0.38, TEA_LUMINA2), 0.2, "Lumina Image 2.0")}

    def detect_variant(self, model_patcher):
        base = type(getattr(model_patcher.model, "model_config", None)).__name__
        if base == "ZImage":
            return None, None, "Z-Image"
        return None, "lumina_2", "Lumina Image 2.0"

    def model_indicator(self, dm, x, timestep):
        return dm.t_embedder((1.0 - timestep) * dm.time_scale, dtype=x.dtype)
