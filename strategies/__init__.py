"""Architecture adapters, found from the loaded model. Add one: a file here + a line in STRATEGIES."""
from __future__ import annotations

from ..magcache_core import MagCacheInputError
from .base import Preset, Strategy
from .flux import FluxStrategy
from .wan import Wan21Strategy

STRATEGIES: list[type[Strategy]] = [FluxStrategy, Wan21Strategy]


def all_presets() -> dict[str, tuple[type[Strategy], Preset]]:
    return {name: (s, p) for s in STRATEGIES for name, p in s.presets.items()}


def describe_model(model_patcher) -> str:
    dm = getattr(getattr(model_patcher, "model", None), "diffusion_model", None)
    if dm is None:
        return type(model_patcher).__name__
    return f"{type(model_patcher.model).__name__} ({type(dm).__module__}.{type(dm).__name__})"


def detect(model_patcher, input_name: str = "model") -> Strategy:
    """The strategy for this model, or a clear error if none fits."""
    if not hasattr(model_patcher, "model") or not hasattr(model_patcher, "clone"):
        raise MagCacheInputError(input_name, f"expected a ComfyUI MODEL, got {type(model_patcher).__name__}")
    for cls in STRATEGIES:
        if cls.matches(model_patcher):
            return cls(model_patcher.model.diffusion_model)
    names = ", ".join(s.title for s in STRATEGIES)
    raise MagCacheInputError(input_name, f"{describe_model(model_patcher)} is not supported yet; supported: {names}")
