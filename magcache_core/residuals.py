"""Per-cond store of the blocks' residual from the last computed step."""
from __future__ import annotations

from typing import Hashable, Sequence

import torch


class ResidualStore:
    """Holds one residual per cond entry; ``offload_device`` keeps them off the GPU between steps."""

    def __init__(self, offload_device: torch.device | None = None):
        self.offload_device = offload_device
        self._res: dict[Hashable, torch.Tensor] = {}

    def put_batch(self, keys: Sequence[Hashable], residual: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Store ``residual`` (a batch split evenly over ``keys``, or one chunk per key)."""
        chunks = residual.chunk(len(keys)) if isinstance(residual, torch.Tensor) else residual
        for key, chunk in zip(keys, chunks):
            self._res[key] = chunk if self.offload_device is None else chunk.to(self.offload_device)

    def has(self, key: Hashable, shape: Sequence[int]) -> bool:
        r = self._res.get(key)
        return r is not None and tuple(r.shape) == tuple(shape)

    def get_batch(self, keys: Sequence[Hashable], like: torch.Tensor) -> torch.Tensor | None:
        """The stored residuals for ``keys`` in batch order, on ``like``'s device and dtype.

        None if any is missing or was made for another shape (new cond, new resolution)."""
        expected = (like.shape[0] // len(keys),) + tuple(like.shape[1:])
        if not all(self.has(key, expected) for key in keys):
            return None
        chunks = [self._res[key] for key in keys]
        out = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        return out.to(device=like.device, dtype=like.dtype)

    def clear(self) -> None:
        self._res.clear()
