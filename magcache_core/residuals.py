"""Per-cond store of the blocks' residual from the last computed step."""
from __future__ import annotations

from typing import Hashable, Sequence

import torch


class ResidualStore:
    """Holds one residual per cond entry; ``offload_device`` keeps them off the GPU between steps.

    A residual serves only the device that computed it (several devices compute the conds of one
    step under ComfyUI's multi-GPU work units): one never crosses to another device; that device
    computes the entry instead. (Offloaded, it goes back to the device it came from.)"""

    def __init__(self, offload_device: torch.device | None = None):
        self.offload_device = offload_device
        self._res: dict[Hashable, tuple[torch.Tensor, torch.device]] = {}   # key -> (residual, device it was made on)

    def put_batch(self, keys: Sequence[Hashable], residual: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Store ``residual`` (a batch split evenly over ``keys``, or one chunk per key)."""
        chunks = residual.chunk(len(keys)) if isinstance(residual, torch.Tensor) else residual
        for key, chunk in zip(keys, chunks):
            self._res[key] = (chunk if self.offload_device is None else chunk.to(self.offload_device), chunk.device)

    def has(self, key: Hashable, shape: Sequence[int], device: torch.device) -> bool:
        """A residual of ``shape`` for ``key``, made on ``device``."""
        entry = self._res.get(key)
        return entry is not None and tuple(entry[0].shape) == tuple(shape) and entry[1] == device

    def get_batch(self, keys: Sequence[Hashable], like: torch.Tensor) -> torch.Tensor | None:
        """The stored residuals for ``keys`` in batch order, on ``like``'s device and dtype.

        None if any is missing, was made for another shape (new cond, new resolution) or on
        another device than ``like``'s."""
        expected = (like.shape[0] // len(keys),) + tuple(like.shape[1:])
        if not all(self.has(key, expected, like.device) for key in keys):
            return None
        chunks = [self._res[key][0] for key in keys]
        out = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        return out.to(device=like.device, dtype=like.dtype)

    def clear(self) -> None:
        self._res.clear()
