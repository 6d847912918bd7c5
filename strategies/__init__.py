"""Architecture adapters, found from the loaded model. Add one: a file here + a line in STRATEGIES.

Detection goes down STRATEGIES in order and takes the first that matches the diffusion model's
exact class (and, where a class serves several families, its model_base class); anything left
goes to the generic whole-model fallback.
"""
from __future__ import annotations

from ..magcache_core import MagCacheInputError
from ..magcache_core.errors import listed
from .auraflow import AuraFlowStrategy
from .base import METHOD_MAGCACHE, METHOD_TEACACHE, BlockStrategy, ModelStrategy, Preset, Strategy, TeaPreset
from .chroma import ChromaRadianceStrategy, ChromaStrategy
from .flux import FluxStrategy
from .flux2 import Flux2Strategy
from .generic import GenericStrategy
from .hidream import HiDreamStrategy
from .hidream_o1 import HiDreamO1Strategy
from .hunyuan3d import Hunyuan3D21Strategy, Hunyuan3DStrategy
from .hunyuan_dit import HunyuanDiTStrategy
from .hunyuan_video import HunyuanVideoStrategy
from .joyimage import JoyImageStrategy
from .kandinsky5 import Kandinsky5Strategy
from .lens import LensStrategy
from .longcat_image import LongCatImageStrategy
from .ltxv import LTXAVStrategy, LTXVStrategy
from .lumina2 import Lumina2Strategy
from .mage_flow import MageFlowStrategy
from .minimax import MiniMaxH3Strategy
from .mochi import MochiStrategy
from .ovis_image import OvisImageStrategy
from .qwen_image import QwenImageStrategy
from .sd3 import SD3Strategy
from .seedvr2 import SeedVR2Strategy
from .stable_audio import StableAudioStrategy
from .wan import WanStrategy

STRATEGIES: list[type[Strategy]] = [
    OvisImageStrategy,                    # before FLUX.1: same class and model_base, told apart by its config
    FluxStrategy, Flux2Strategy, ChromaRadianceStrategy, ChromaStrategy, QwenImageStrategy,
    HunyuanVideoStrategy, WanStrategy, LTXVStrategy, LTXAVStrategy, SD3Strategy, MochiStrategy, AuraFlowStrategy,
    Hunyuan3DStrategy, Lumina2Strategy, HiDreamStrategy,
    HunyuanDiTStrategy, StableAudioStrategy, Hunyuan3D21Strategy, SeedVR2Strategy, MiniMaxH3Strategy,
    # --- ComfyUI 0.33: image ---
    LongCatImageStrategy, MageFlowStrategy, JoyImageStrategy, LensStrategy, Kandinsky5Strategy,
    HiDreamO1Strategy,
    GenericStrategy,                      # last: takes any model
]


def all_presets(method: str = METHOD_MAGCACHE) -> dict[str, tuple[type[Strategy], Preset | TeaPreset]]:
    attr = "presets" if method == METHOD_MAGCACHE else "tea_presets"
    return {name: (s, p) for s in STRATEGIES for name, p in getattr(s, attr).items()}


def unknown_preset(strategy, preset: str, method: str, before: tuple[str, ...], after: tuple[str, ...]) -> MagCacheInputError:
    """The error for a preset name this model's strategy (or strategy class) has no such preset for (MagCache or
    TeaCache); the message offers ``before``, the strategy's own presets, then ``after`` (each front end's other
    choices)."""
    own = sorted(strategy.presets if method == METHOD_MAGCACHE else strategy.tea_presets)
    known = all_presets(method)
    if preset in known:
        return MagCacheInputError("preset", f"{preset!r} is a {known[preset][0].title} preset; this model is "
                                            f"{strategy.title} (its presets: {listed(own)})")
    choices = [*before, *([f"a {strategy.title} preset ({listed(own)})"] if own else []), *after]
    offer = ", ".join(choices[:-1]) + " or " + choices[-1] if len(choices) > 1 else listed(choices)
    return MagCacheInputError("preset", f"unknown preset {preset!r}; choose {offer}")


def detect(model_patcher, input_name: str = "model") -> Strategy:
    """The strategy for this model (the generic fallback for any model no other claims)."""
    if not hasattr(model_patcher, "model") or not hasattr(model_patcher, "clone") \
            or getattr(model_patcher.model, "diffusion_model", None) is None:
        raise MagCacheInputError(input_name, f"expected a ComfyUI MODEL, got {type(model_patcher).__name__}")
    return next(cls for cls in STRATEGIES if cls.matches(model_patcher))(model_patcher)   # generic takes any


__all__ = ["STRATEGIES", "METHOD_MAGCACHE", "METHOD_TEACACHE", "BlockStrategy", "ModelStrategy", "Preset",
           "Strategy", "TeaPreset", "all_presets", "detect", "unknown_preset"]
