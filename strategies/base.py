"""What a strategy tells the pack about one architecture.

A strategy names the blocks (their keys in ``transformer_options["patches_replace"]["dit"]``,
in the order they run), says which tensor is the residual stream going into the first block and
coming out of the last, and carries the architecture's built-in presets. Everything else (state,
decisions, caching) is shared and lives in ``magcache_core`` and ``nodes/patching.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..magcache_core import MagCacheParams, RatioCurves

BlockKey = tuple[str, int]


@dataclass(frozen=True)
class Preset:
    name: str
    curves: RatioCurves
    params: MagCacheParams          # recommended threshold / retention / K
    note: str = ""


class Strategy:
    name: ClassVar[str]
    title: ClassVar[str]
    residual: ClassVar[str]          # one line: what the cached residual is
    presets: ClassVar[dict[str, Preset]] = {}

    def __init__(self, diffusion_model: torch.nn.Module):
        self.block_keys: list[BlockKey] = self.find_blocks(diffusion_model)
        if not self.block_keys:
            raise ValueError(f"{self.title}: the model has no transformer blocks")

    # -- detection ---------------------------------------------------------------------------
    @classmethod
    def matches(cls, model_patcher) -> bool:
        raise NotImplementedError

    def auto_preset(self, model_patcher) -> tuple[str | None, str]:
        """(preset name or None, a few words on what was detected)."""
        raise NotImplementedError

    # -- the blocks --------------------------------------------------------------------------
    @staticmethod
    def find_blocks(diffusion_model) -> list[BlockKey]:
        raise NotImplementedError

    def stream_in(self, key: BlockKey, args: dict) -> torch.Tensor:
        """The residual stream entering the first block."""
        return args["img"]

    def stream_out(self, key: BlockKey, out: dict, n_tokens: int) -> torch.Tensor:
        """The residual stream leaving the last block (``n_tokens`` as it had entering)."""
        return out["img"]

    def with_stream(self, key: BlockKey, args: dict, stream: torch.Tensor) -> dict:
        """The last block's output with the residual stream replaced by ``stream``."""
        return {"img": stream}

    def passthrough(self, key: BlockKey, args: dict) -> dict:
        """A block's output when it is skipped: its input, unchanged."""
        return {"img": args["img"]}
