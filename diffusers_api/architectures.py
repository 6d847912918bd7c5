"""The diffusers transformers the API supports: where their blocks are, how their blocks take and return the
image stream, the scale of their timestep input, and which ComfyUI strategy they share presets, calibration
files and residual with. No diffusers import here: a transformer is recognised by its class's name and module.

Each entry's residual is its strategy's (the image stream entering the first block vs leaving the last, text
tokens dropped), so a curve calibrated here serves ComfyUI and back.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

from ..magcache_core import MagCacheInputError
from ..magcache_core.errors import listed
from ..strategies.base import BlockStrategy
from ..strategies.flux import FluxStrategy
from ..strategies.qwen_image import QwenImageStrategy
from ..strategies.wan import WanStrategy


def _flux_modulated(block, arg):
    # FLUX's first double block: norm1(x) * (1 + scale_msa) + shift_msa, as ComfyUI's flux_style_modulated.
    return block.norm1(arg("hidden_states"), emb=arg("temb"))[0]


def _wan_modulated(block, arg):
    # Wan: the blocks' timestep modulation e0 (ComfyUI's "vec"), what the TeaCache authors' ret_mode fits.
    return arg("temb")


@dataclass(frozen=True)
class Architecture:
    class_name: str                       # the diffusers class (exact type, from a diffusers module)
    strategy: type[BlockStrategy]         # presets, calibration files' "model" and the residual come from it
    block_lists: tuple[str, ...]          # attributes holding the transformer blocks, in the order they run
    timestep_scale: float                 # the transformer's timestep input x this = the scheduler's timesteps
    returns_encoder: bool                 # blocks return (encoder_hidden_states, hidden_states), else hidden_states
    modulated: Callable | None = None     # TeaCache's indicator: (first block, arg(name)) -> tensor; None: no TeaCache

    @property
    def title(self) -> str:
        return self.strategy.title


# FLUX and Qwen-Image pipelines pass ``timestep / 1000`` (the transformer multiplies by 1000); Wan's pass 0..1000.
ARCHITECTURES = {a.class_name: a for a in (
    Architecture("FluxTransformer2DModel", FluxStrategy, ("transformer_blocks", "single_transformer_blocks"),
                 1000.0, True, _flux_modulated),
    Architecture("WanTransformer3DModel", WanStrategy, ("blocks",), 1.0, False, _wan_modulated),
    Architecture("QwenImageTransformer2DModel", QwenImageStrategy, ("transformer_blocks",), 1000.0, True),
)}
SUPPORTED = tuple(ARCHITECTURES)


def architecture_of(transformer) -> Architecture:
    """The entry for ``transformer``, or an error naming the input and the supported classes."""
    cls = type(transformer)
    arch = ARCHITECTURES.get(cls.__name__)
    if arch is not None and cls.__module__.startswith("diffusers."):
        return arch
    if hasattr(transformer, "transformer") and hasattr(transformer, "scheduler"):
        raise MagCacheInputError("transformer", f"got a {cls.__name__} pipeline; pass its transformer "
                                                "(pipe.transformer) and its scheduler (scheduler=pipe.scheduler)")
    raise MagCacheInputError("transformer", f"{cls.__module__}.{cls.__name__} is not supported; supported diffusers "
                                            f"transformers: {listed(SUPPORTED)}")


def argument_positions(fn, names) -> dict[str, int]:
    """Position of each of ``names`` among ``fn``'s arguments after ``self`` (for calls that pass them positionally)."""
    params = list(inspect.signature(fn).parameters)[1:]
    return {n: params.index(n) for n in names if n in params}

