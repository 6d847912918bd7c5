"""What a strategy tells the pack about one architecture.

Two kinds:

* ``BlockStrategy`` (level "blocks"): the model offers ComfyUI's block-replace patches
  (``transformer_options["patches_replace"]["dit"]``). The strategy names the blocks in the order
  they run, says where the image stream is in the first block's input and the last block's output
  (``residual``, one line; ``stream`` where the patch args call it "x" or "vid", not "img"), and, for
  TeaCache, how to get the first block's modulated input. ``original_block`` is for a model whose own
  ``extra["original_block"]`` cannot run its block (Kandinsky 5 in ComfyUI 0.33).
* ``ModelStrategy`` (level "model"): no block patches; the DIFFUSION_MODEL wrapper caches the
  whole model's output minus its input (as ComfyUI's EasyCache). ``generic.py`` is the fallback
  for any model; a named ModelStrategy may add presets and a TeaCache input.

Everything else (state, decisions, caching) is shared: ``magcache_core`` and ``nodes/patching.py``.
A strategy never stores the model; functions that need it get it passed.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..magcache_core import MagCacheParams, RatioCurves, TeaCacheParams

BlockKey = tuple[str, int]
METHOD_MAGCACHE, METHOD_TEACACHE = "magcache", "teacache"


@dataclass(frozen=True)
class Preset:
    """A MagCache preset: the ratio curves and the recommended threshold / retention / K."""

    name: str
    curves: RatioCurves
    params: MagCacheParams
    note: str = ""


@dataclass(frozen=True)
class TeaPreset:
    """A TeaCache preset: the fitted polynomial and the recommended threshold and window."""

    name: str
    params: TeaCacheParams              # coefficients, recommended rel_l1_thresh
    start_percent: float = 0.0
    note: str = ""


def resolve(dotted: str):
    """``module.Class`` or None when this ComfyUI has no such class (older or newer versions)."""
    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name, None)
    except Exception:       # noqa: BLE001 - a model module that fails to import simply does not match
        return None


def diffusion_model(model_patcher):
    return getattr(getattr(model_patcher, "model", None), "diffusion_model", None)


def attribute(obj, dotted: str):
    """``obj.a.b`` for ``dotted`` "a.b", or None where any part is missing."""
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
    return obj


class Strategy:
    name: ClassVar[str]
    title: ClassVar[str]
    residual: ClassVar[str]                           # one line: what the cached residual is
    level: ClassVar[str]
    model_classes: ClassVar[tuple[str, ...]] = ()     # exact diffusion-model classes (dotted)
    model_bases: ClassVar[tuple[str, ...]] = ()       # if set, the model_base class must be one of these
    presets: ClassVar[dict[str, Preset]] = {}         # MagCache
    tea_presets: ClassVar[dict[str, TeaPreset]] = {}  # TeaCache

    def __init__(self, model_patcher):
        pass

    # -- detection ---------------------------------------------------------------------------
    @classmethod
    def matches(cls, model_patcher) -> bool:
        dm = diffusion_model(model_patcher)
        if dm is None or type(dm) not in {c for c in map(resolve, cls.model_classes) if c is not None}:
            return False
        if cls.model_bases:
            bases = tuple(c for c in map(resolve, cls.model_bases) if c is not None)
            return type(model_patcher.model) in bases
        return True

    def detect_variant(self, model_patcher) -> tuple[str | None, str | None, str]:
        """(MagCache preset, TeaCache preset, a few words on what was detected); None = calibrate."""
        return None, None, self.title

    def auto_preset(self, model_patcher, method: str = METHOD_MAGCACHE) -> tuple[str | None, str]:
        mag, tea, what = self.detect_variant(model_patcher)
        name = mag if method == METHOD_MAGCACHE else tea
        table = self.presets if method == METHOD_MAGCACHE else self.tea_presets
        if name is None or name not in table:
            return None, f"{what}: no published {'ratios' if method == METHOD_MAGCACHE else 'TeaCache coefficients'}"
        return name, what

    @property
    def supports_teacache(self) -> bool:
        return False


class BlockStrategy(Strategy):
    level = "blocks"
    # Attribute (dotted path) of the block list whose modules are keyed (block_kind, i), and of the
    # single-block list, keyed ("single_block", i).
    double_blocks: ClassVar[str | None] = "double_blocks"
    block_kind: ClassVar[str] = "double_block"
    single_blocks: ClassVar[str | None] = None
    single_txt_first: ClassVar[bool] = True                 # single blocks see cat(txt, img), else cat(img, txt)
    stream: ClassVar[str] = "img"                           # the image/video stream's key in a block's args/output
    carried: ClassVar[tuple[str, ...]] = ("img", "txt")     # what a block hands on (a skipped one: unchanged)

    def __init__(self, model_patcher):
        self.block_keys: list[BlockKey] = self.find_blocks(diffusion_model(model_patcher))
        if not self.block_keys:
            raise ValueError(f"{self.title}: the model has no transformer blocks")

    @classmethod
    def find_blocks(cls, dm) -> list[BlockKey]:
        keys = []
        for attr, kind in ((cls.double_blocks, cls.block_kind), (cls.single_blocks, "single_block")):
            if attr is not None:
                keys += [(kind, i) for i in range(len(attribute(dm, attr) or []))]
        return keys

    # -- the image stream ----------------------------------------------------------------------
    def stream_in(self, key: BlockKey, args: dict) -> torch.Tensor:
        """The residual stream entering the first block."""
        return args[self.stream]

    def stream_out(self, key: BlockKey, out: dict, n_tokens: int) -> torch.Tensor:
        """The image stream leaving the last block (``n_tokens`` as it had entering)."""
        x = out[self.stream]
        if key[0] == "single_block" and x.shape[1] != n_tokens:
            return x[:, -n_tokens:] if self.single_txt_first else x[:, :n_tokens]
        return x

    def with_stream(self, key: BlockKey, args: dict, stream: torch.Tensor) -> dict:
        """The block's output, when it is skipped, with the image stream replaced by ``stream``."""
        x = args[self.stream]
        if key[0] == "single_block" and x.shape[1] != stream.shape[1]:
            other = x[:, : x.shape[1] - stream.shape[1]] if self.single_txt_first else x[:, stream.shape[1]:]
            return {self.stream: torch.cat((other, stream) if self.single_txt_first else (stream, other), dim=1)}
        return self.passthrough(key, args) | {self.stream: stream}

    def passthrough(self, key: BlockKey, args: dict) -> dict:
        """A block's output when it is skipped: its inputs, unchanged."""
        return {k: args[k] for k in dict.fromkeys((self.stream,) + self.carried) if k in args}

    def original_block(self, dm, key: BlockKey):
        """None: the block runs as the model's own ``extra["original_block"]`` runs it. A strategy whose model
        hands its patches an ``original_block`` that cannot run the block returns one that does (``args`` ->
        the block's output dict), built from the block module and the patch's args alone; it replaces the
        model's in ``extra`` for every patch on the block (patches set before ours included)."""
        return None

    # -- TeaCache --------------------------------------------------------------------------------
    def modulated_input(self, dm, args: dict) -> torch.Tensor | None:
        """The first block's timestep-modulated input (TeaCache's indicator), or None."""
        return None

    @property
    def supports_teacache(self) -> bool:
        return type(self).modulated_input is not BlockStrategy.modulated_input


class ModelStrategy(Strategy):
    level = "model"
    residual = "the whole diffusion model's output minus its input (the embeddings and final layer are cached too)"

    def model_indicator(self, dm, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor | None:
        """TeaCache's indicator for one model call, from the model's own embedders, or None."""
        return None

    @property
    def supports_teacache(self) -> bool:
        return type(self).model_indicator is not ModelStrategy.model_indicator


def pack_streams(streams) -> torch.Tensor:
    """Several token streams of one batch (B, N_i, D_i) as one (B, sum N_i, max D_i) tensor, each
    zero-padded to the widest: per-token norms, cosines and L1 sums are those of the streams, so
    the residual, its calibration statistics and TeaCache's indicator cover every stream."""
    width = max(x.shape[-1] for x in streams)
    return torch.cat([torch.nn.functional.pad(x, (0, width - x.shape[-1])) for x in streams], dim=1)


def unpack_streams(packed: torch.Tensor, like) -> tuple:
    """``pack_streams``'s inverse: slices of ``packed`` shaped as the tensors in ``like``."""
    out, start = [], 0
    for x in like:
        out.append(packed[:, start:start + x.shape[1], :x.shape[-1]].contiguous())
        start += x.shape[1]
    return tuple(out)


def flux_style_modulated(block, args: dict) -> torch.Tensor:
    """(1 + scale) * img_norm1(img) + shift with the first block's image modulation (FLUX-family
    double blocks; blocks without their own modulation get it precomputed in ``vec``)."""
    from comfy.ldm.flux.layers import apply_mod
    vec = args["vec"]
    mod = block.img_mod(vec)[0] if getattr(block, "modulation", True) else vec[0][0]
    dims = args.get("modulation_dims_img")
    return apply_mod(block.img_norm1(args["img"]), 1 + mod.scale, mod.shift, dims)


def qwen_style_modulated(block, args: dict) -> torch.Tensor:
    """img_norm1(img) * (1 + scale) + shift with the first block's image modulation, for double blocks whose
    ``img_mod(vec)`` gives (shift, scale, gate) for attention then for the MLP (Qwen-Image's block, and blocks
    built like it: MageFlow, Lens)."""
    shift, scale, _ = block.img_mod(args["vec"]).chunk(2, dim=-1)[0].chunk(3, dim=-1)
    return block.img_norm1(args["img"]) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
