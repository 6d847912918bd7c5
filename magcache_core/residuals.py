"""Per-entry store of the blocks' residual from the last computed step.

An entry is a small int (``RunState`` numbers the cond entries of a run once). The residuals of one
batched call are kept as the batch tensor they were computed as, each entry's a view of it, so a
later call with the same entries in the same order gets that tensor back as it is: no ``torch.cat``,
no copy, no allocation on a skipped step.

A residual serves only the device that computed it (several devices compute the conds of one step
under ComfyUI's multi-GPU work units): one never crosses to another device; that device computes the
entry instead.

Offloading (``offload_device``, e.g. the CPU): a residual goes to a pinned host buffer, allocated once
per entry and run and reused, by a non-blocking copy on a side stream that waits for the step's
compute (so it overlaps the next blocks), and the device copy is dropped, so the GPU does not hold it
during the computed steps that follow. The host tells the store which residuals the next step will use
(``keep``: the schedule is known in advance for MagCache): those stay on the device and are never
copied at all; a residual that was offloaded and is wanted again is copied back on the side stream by
``prefetch``, which the host calls a step ahead, and the compute stream waits for that copy only
where it uses the residual. Without CUDA (CPU offload targets, tests) the copies are plain copies.

``keep_previous`` (extrapolated skipped steps, ``run.py``): each entry also keeps the residual of the computed
step before its last one, with where both were made (``history``), offloaded and prefetched with it;
``batch`` / ``get_batch`` then give a linear combination of the two per entry (one fused ``lerp`` each, on the
device, no host sync). One extra residual per entry, nothing more.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class _Entry:
    tensor: torch.Tensor | None          # on its device: the stored residual (a view of ``batch``) or a prefetch
    device: torch.device                 # the device that computed it
    shape: tuple
    batch: tuple | None = None           # (entries, batch tensor) it was stored with, while that is on the device
    host: torch.Tensor | None = None     # offloaded: the pinned host copy
    ready: object = None                 # CUDA event: the side-stream copy (to host or back) is done
    at: object = None                    # where it was made (the host's (step, sigma)), for extrapolation


class ResidualStore:
    def __init__(self, offload_device: torch.device | None = None, keep_previous: bool = False):
        self.offload_device = None if offload_device is None else torch.device(offload_device)
        self.keep_previous = keep_previous
        self._res: dict[int, _Entry] = {}
        self._prev: dict[int, _Entry] = {}             # keep_previous: the residual before the last one
        self._streams: dict[torch.device, object] = {}

    # -- storing -------------------------------------------------------------------------------
    def put_batch(self, entries: Sequence[int], residual: torch.Tensor | Sequence[torch.Tensor],
                  keep: bool = False, at=None) -> None:
        """Store ``residual`` (a batch split evenly over ``entries``, or one chunk per entry), made ``at`` (the
        host's place for it: ``history`` gives it back). ``keep``: with offloading, the next step uses these
        residuals, so they stay on the device (no copy at all)."""
        entries = tuple(entries)
        whole = residual if isinstance(residual, torch.Tensor) else None
        chunks = residual.chunk(len(entries)) if whole is not None else list(residual)
        for e, chunk in zip(entries, chunks):
            old = self._res.get(e)
            spare = old                                   # whose pinned host buffer the new one may reuse
            if self.keep_previous:
                spare = self._prev.pop(e, None)
                if old is not None and old.shape == tuple(chunk.shape) and old.device == chunk.device:
                    self._prev[e] = old
                    if keep:
                        self.prefetch_previous([e])       # the next (skipped) step extrapolates from it
            entry = _Entry(chunk, chunk.device, tuple(chunk.shape),
                           (entries, whole) if whole is not None else None,
                           spare.host if spare is not None and spare.host is not None and spare.host.shape == chunk.shape
                           and spare.device == chunk.device else None, at=at)
            self._res[e] = entry
            if self.offload_device is not None:
                if keep:
                    # The host buffer now, not when the residual leaves the device: the caller stores at the end of
                    # a computed step, while the GPU still runs that step's blocks, so pinning host memory (slow:
                    # about 0.6 s for 671 MB) overlaps them instead of stalling the start of a later step.
                    self._reserve_host(entry)
                else:
                    self._offload(entry)

    def _side_stream(self, device: torch.device):
        if device not in self._streams:
            self._streams[device] = torch.cuda.Stream(device)
        return self._streams[device]

    def _reserve_host(self, entry: _Entry) -> None:
        """The entry's host buffer (pinned where it takes CUDA copies), allocated once and reused."""
        if entry.host is None:
            src = entry.tensor
            pin = src.device.type == "cuda" and self.offload_device.type == "cpu"
            entry.host = torch.empty(src.shape, dtype=src.dtype, device=self.offload_device, pin_memory=pin)

    def _offload(self, entry: _Entry) -> None:
        src = entry.tensor
        self._reserve_host(entry)
        if src.device.type == "cuda":
            side, main = self._side_stream(src.device), torch.cuda.current_stream(src.device)
            side.wait_stream(main)                       # after the compute that made it
            with torch.cuda.stream(side):
                entry.host.copy_(src, non_blocking=True)
                src.record_stream(side)                  # the allocator keeps it until the copy is done
                entry.ready = torch.cuda.Event()
                entry.ready.record(side)
        else:
            entry.host.copy_(src)
            entry.ready = None
        entry.tensor, entry.batch = None, None

    def offload(self, entries: Sequence[int]) -> None:
        """With offloading: move these residuals off the device (the next step will not use them)."""
        if self.offload_device is None:
            return
        for e in entries:
            for entry in (self._res.get(e), self._prev.get(e)):
                if entry is not None and entry.tensor is not None:
                    self._offload(entry)

    def prefetch(self, entries: Sequence[int]) -> None:
        """With offloading: start copying these residuals back to their devices, on the side stream (with
        ``keep_previous``, the ones before them too)."""
        self._prefetch(self._res, entries)
        if self.keep_previous:
            self.prefetch_previous(entries)

    def prefetch_previous(self, entries: Sequence[int]) -> None:
        self._prefetch(self._prev, entries)

    def _prefetch(self, table: dict, entries: Sequence[int]) -> None:
        for e in entries:
            entry = table.get(e)
            if entry is None or entry.tensor is not None or entry.host is None:
                continue
            if entry.device.type == "cuda":
                side = self._side_stream(entry.device)
                with torch.cuda.stream(side):
                    if entry.ready is not None:
                        side.wait_event(entry.ready)
                    entry.tensor = entry.host.to(entry.device, non_blocking=True)
                    entry.ready = torch.cuda.Event()
                    entry.ready.record(side)
            else:
                entry.tensor = entry.host.to(entry.device)

    # -- reading -------------------------------------------------------------------------------
    def has_on(self, entry: int, device: torch.device) -> bool:
        """A residual for ``entry``, made on ``device`` (of whatever shape)."""
        e = self._res.get(entry)
        return e is not None and e.device == device

    def has(self, entry: int, shape: Sequence[int], device: torch.device) -> bool:
        """A residual of ``shape`` for ``entry``, made on ``device``."""
        e = self._res.get(entry)
        return e is not None and e.shape == tuple(shape) and e.device == device

    def history(self, entry: int) -> tuple[object, object]:
        """(where the last residual of ``entry`` was made, where the one before it was, or None)."""
        last, prev = self._res.get(entry), self._prev.get(entry)
        return (None if last is None else last.at), (None if prev is None else prev.at)

    def get_batch(self, entries: Sequence[int], like: torch.Tensor,
                  coefficients: Sequence[tuple[float, float]] | None = None) -> torch.Tensor | None:
        """The stored residuals for ``entries`` in batch order, on ``like``'s device and dtype, or None if any
        is missing, was made for another shape (new cond, new resolution) or on another device.
        ``coefficients``: see ``batch``."""
        expected = (like.shape[0] // len(entries),) + tuple(like.shape[1:])
        if not all(self.has(e, expected, like.device) for e in entries):
            return None
        return self.batch(entries, like.dtype, coefficients)

    def batch(self, entries: Sequence[int], dtype: torch.dtype | None = None,
              coefficients: Sequence[tuple[float, float]] | None = None) -> torch.Tensor:
        """The residuals of ``entries`` (all present, on one device) as one batch: the stored batch tensor
        itself where they were stored together in this order, else a concatenation. ``coefficients`` (one
        ``(a, b)`` per entry): ``a * last + b * previous`` instead of the last residual as it is (``b`` is ignored
        where an entry has no previous residual of its shape)."""
        entries = tuple(entries)
        if coefficients is not None and any(a != 1.0 or (b != 0.0 and e in self._prev)
                                            for e, (a, b) in zip(entries, coefficients)):
            whole = self._whole_batches(entries, coefficients)
            if whole is not None:                       # stored together both times: one lerp, no cat
                last, before, a = whole
                out = torch.lerp(before, last, a)
                return out if dtype is None or out.dtype == dtype else out.to(dtype)
            parts = [self._combined(e, a, b, dtype) for e, (a, b) in zip(entries, coefficients)]
            return parts[0] if len(parts) == 1 else torch.cat(parts)
        first = self._res[entries[0]]
        if first.batch is not None and first.batch[0] == entries and first.tensor is not None:
            out = first.batch[1]
        else:
            self.prefetch(entries)                      # offloaded and not prefetched: copy back now
            parts = [self._res[e].tensor for e in entries]
            out = parts[0] if len(parts) == 1 else torch.cat(parts)
        for e in entries:
            ready = self._res[e].ready
            if ready is not None and out.device.type == "cuda":
                torch.cuda.current_stream(out.device).wait_event(ready)     # only where the copy back was needed
        return out if dtype is None or out.dtype == dtype else out.to(dtype)

    def _whole_batches(self, entries: tuple, coefficients) -> tuple | None:
        """(last batch, previous batch, a) where every entry has the same (a, 1 - a) and both residuals of all
        of them are the batch tensors they were stored as, in this order, on the device (MagCache's batched CFG)."""
        a, b = coefficients[0]
        if any(c != (a, b) for c in coefficients) or abs(a + b - 1.0) >= 1e-12:
            return None
        last, prev = self._res.get(entries[0]), self._prev.get(entries[0])
        if (last is None or prev is None or last.batch is None or prev.batch is None or last.batch[0] != entries
                or prev.batch[0] != entries or last.tensor is None or prev.tensor is None
                or any(self._prev.get(e) is None or self._prev[e].batch is None
                       or self._prev[e].batch[1] is not prev.batch[1] for e in entries)
                or last.batch[1].shape != prev.batch[1].shape):
            return None
        return last.batch[1], prev.batch[1], a

    def _on_device(self, table: dict, e: int) -> torch.Tensor:
        entry = table[e]
        if entry.tensor is None:
            self._prefetch(table, [e])
        if entry.ready is not None and entry.tensor.device.type == "cuda":
            torch.cuda.current_stream(entry.tensor.device).wait_event(entry.ready)
        return entry.tensor

    def _combined(self, e: int, a: float, b: float, dtype: torch.dtype | None) -> torch.Tensor:
        last = self._on_device(self._res, e)
        prev = self._prev.get(e)
        if dtype is not None and last.dtype != dtype:
            last = last.to(dtype)
        if prev is None or b == 0.0 or prev.shape != self._res[e].shape:
            return last if a == 1.0 else last * a
        before = self._on_device(self._prev, e)
        if before.dtype != last.dtype:
            before = before.to(last.dtype)
        if abs(a + b - 1.0) < 1e-12:
            return torch.lerp(before, last, a)          # before + a (last - before) = a last + (1 - a) before
        return torch.add(last * a, before, alpha=b)

    def host_bytes(self) -> int:
        """Bytes of host buffers the entries hold (offloading; tests, benchmarks)."""
        return sum(e.host.numel() * e.host.element_size() for e in list(self._res.values()) + list(self._prev.values())
                   if e.host is not None)

    def device_bytes(self) -> int:
        """Bytes of residuals held on their devices now (tests, benchmarks)."""
        seen, total = set(), 0
        for e in list(self._res.values()) + list(self._prev.values()):
            if e.tensor is not None:
                t = e.batch[1] if e.batch is not None else e.tensor
                if id(t) not in seen:
                    seen.add(id(t))
                    total += t.numel() * t.element_size()
        return total

    def clear(self) -> None:
        self._res.clear()
        self._prev.clear()
        self._streams.clear()
