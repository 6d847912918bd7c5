"""HiDream-I1: ``comfy.ldm.hidream.model.HiDreamImageTransformer2DModel`` (ComfyUI 0.3.75 gives it
no block patches, so the whole model is cached).

TeaCache's indicator is the timestep embedding ``t_embedder(t)``, as in the TeaCache authors'
HiDream-I1-Full code. Full, Dev and Fast share one layout: 'auto' picks Full (the one run with
CFG); pick the dev/fast coefficients by hand.
"""
from __future__ import annotations

from ..magcache_core import TeaCacheParams
from .base import ModelStrategy, TeaPreset

# github.com/welltop-cn/ComfyUI-TeaCache nodes.py at 91dff8e (thresholds and window from its README).
TEA = {
    "hidream_i1_full": ((-31360.5009, -712.425503, 49.1363285, 8.2651549, 0.108053901), 0.35, 0.1),
    "hidream_i1_dev": ((1.39997273, -4.30130469, 5.01534416, -2.20504164, 0.93942874), 1.0, 0.0),
    "hidream_i1_fast": ((2.26509623, -6.88864563, 7.61123826, -3.10849353, 0.99927602), 1.5, 0.0),
}


class HiDreamStrategy(ModelStrategy):
    name = "hidream"
    title = "HiDream-I1"
    model_classes = ("comfy.ldm.hidream.model.HiDreamImageTransformer2DModel",)
    tea_presets = {name: TeaPreset(name, TeaCacheParams(thresh, coeffs), start, name.replace("_", " "))
                   for name, (coeffs, thresh, start) in TEA.items()}

    def detect_variant(self, model_patcher):
        return None, "hidream_i1_full", "HiDream-I1 (Full, Dev and Fast share one layout)"

    def model_indicator(self, dm, x, timestep):
        t = dm.expand_timesteps(timestep, x.shape[0], x.device)
        return dm.t_embedder(t, x.dtype)
