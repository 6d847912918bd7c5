"""Per-cond store of the blocks' residual from the last computed step."""
from __future__ import annotations

from typing import Hashable, Sequence

import torch


class ResidualStore:
    """Holds one residual per cond entry; ``offload_device`` keeps them off the GPU between steps."""

    def __init__(self, offload_device: torch.device | None = None):
        self.offload_device = offload_device
        self._res: dict[Hashable, torch.Tensor] = {}

    def put_batch(self, keys: Sequence[Hashable], residual: torch.Tensor) -> None:
        for key, chunk in zip(keys, residual.chunk(len(keys))):
            self._res[key] = chunk if self.offload_device is None else chunk.to(self.offload_device)

    def get_batch(self, keys: Sequence[Hashable], like: torch.Tensor) -> torch.Tensor | None:
        """The stored residuals for ``keys`` in batch order, on ``like``'s device and dtype.

        None if any is missing or was made for another shape (new cond, new resolution)."""
        chunks = []
        expected = (like.shape[0] // len(keys),) + tuple(like.shape[1:])
        for key in keys:
            r = self._res.get(key)
            if r is None or tuple(r.shape) != expected:
                return None
            chunks.append(r)
        out = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        return out.to(device=like.device, dtype=like.dtype)

    def clear(self) -> None:
        self._res.clear()
