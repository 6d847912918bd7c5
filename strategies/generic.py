"""The fallback for any model no other strategy claims (UNets such as SDXL included): the whole
diffusion model's output minus its input is cached, as ComfyUI's EasyCache does. MagCache runs
on a curve from MagCacheCalibrate; nothing else is needed from the model.
"""
from __future__ import annotations

from .base import ModelStrategy, diffusion_model


class GenericStrategy(ModelStrategy):
    name = "generic"
    title = "generic (whole model)"

    @classmethod
    def matches(cls, model_patcher) -> bool:
        return diffusion_model(model_patcher) is not None

    def detect_variant(self, model_patcher):
        dm = diffusion_model(model_patcher)
        return None, None, f"{type(model_patcher.model).__name__} ({type(dm).__name__}), cached as a whole model"
