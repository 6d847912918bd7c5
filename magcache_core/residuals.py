"""Per-cond store of the blocks' residual from the last computed step (and, for extrapolation, the one before)."""
from __future__ import annotations

from typing import Hashable, Sequence

import torch


class ResidualStore:
    """Holds one residual per cond entry; ``offload_device`` keeps them off the GPU between steps.

    A residual serves only the device that computed it (several devices compute the conds of one
    step under ComfyUI's multi-GPU work units): one never crosses to another device; that device
    computes the entry instead. (Offloaded, it goes back to the device it came from.)

    ``keep_previous`` (extrapolated skipped steps, ``run.py``): each entry also keeps the residual of the
    computed step before its last one, with where both were made (``history``); ``get_batch`` then takes a
    linear combination of the two per entry. One extra residual per entry, nothing more."""

    def __init__(self, offload_device: torch.device | None = None, keep_previous: bool = False):
        self.offload_device = offload_device
        self.keep_previous = keep_previous
        self._res: dict[Hashable, tuple[torch.Tensor, torch.device]] = {}   # key -> (residual, device it was made on)
        self._at: dict[Hashable, object] = {}          # key -> where its residual was made (the host's step / sigma)
        self._prev: dict[Hashable, tuple[torch.Tensor, object]] = {}        # key -> (the residual before, where)

    def put_batch(self, keys: Sequence[Hashable], residual: torch.Tensor | Sequence[torch.Tensor], at=None) -> None:
        """Store ``residual`` (a batch split evenly over ``keys``, or one chunk per key), made ``at`` (any value
        the host uses to place it: ``history`` gives it back)."""
        chunks = residual.chunk(len(keys)) if isinstance(residual, torch.Tensor) else residual
        for key, chunk in zip(keys, chunks):
            if self.keep_previous:
                old = self._res.get(key)
                if old is not None and old[0].shape == chunk.shape and old[1] == chunk.device:
                    self._prev[key] = (old[0], self._at.get(key))
                else:                           # another shape or device: no history to extrapolate from
                    self._prev.pop(key, None)
            self._res[key] = (chunk if self.offload_device is None else chunk.to(self.offload_device), chunk.device)
            self._at[key] = at

    def has(self, key: Hashable, shape: Sequence[int], device: torch.device) -> bool:
        """A residual of ``shape`` for ``key``, made on ``device``."""
        entry = self._res.get(key)
        return entry is not None and tuple(entry[0].shape) == tuple(shape) and entry[1] == device

    def history(self, key: Hashable) -> tuple[object, object]:
        """(where the last residual of ``key`` was made, where the one before it was, or None)."""
        prev = self._prev.get(key)
        return self._at.get(key), None if prev is None else prev[1]

    def get_batch(self, keys: Sequence[Hashable], like: torch.Tensor,
                  coefficients: Sequence[tuple[float, float]] | None = None) -> torch.Tensor | None:
        """The stored residuals for ``keys`` in batch order, on ``like``'s device and dtype.

        ``coefficients`` (one ``(a, b)`` per key): ``a * last + b * previous`` instead of the last residual
        as it is (``b`` is ignored where a key has no previous residual). Computed on ``like``'s device, one
        fused op per key (``lerp`` where a + b = 1), no host sync.

        None if any is missing, was made for another shape (new cond, new resolution) or on
        another device than ``like``'s."""
        expected = (like.shape[0] // len(keys),) + tuple(like.shape[1:])
        if not all(self.has(key, expected, like.device) for key in keys):
            return None
        if coefficients is None or all(a == 1.0 and (b == 0.0 or key not in self._prev)
                                       for key, (a, b) in zip(keys, coefficients)):
            chunks = [self._res[key][0] for key in keys]
            out = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
            return out.to(device=like.device, dtype=like.dtype)
        parts = [self._combined(key, a, b, like) for key, (a, b) in zip(keys, coefficients)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _combined(self, key: Hashable, a: float, b: float, like: torch.Tensor) -> torch.Tensor:
        last = self._res[key][0].to(device=like.device, dtype=like.dtype)
        prev = self._prev.get(key)
        if prev is None or b == 0.0:
            return last if a == 1.0 else last * a
        before = prev[0].to(device=like.device, dtype=like.dtype)
        if abs(a + b - 1.0) < 1e-12:
            return torch.lerp(before, last, a)          # before + a (last - before) = a last + (1 - a) before
        return torch.add(last * a, before, alpha=b)

    def clear(self) -> None:
        self._res.clear()
        self._at.clear()
        self._prev.clear()
