"""A cheap, deterministic fingerprint of a set of tensors (a model's weights), for telling checkpoints apart.

Each tensor contributes its name, type, dtype and shape, and the bytes of ``PIECES`` contiguous runs of
``PIECE`` elements evenly spread over its flattened data, the first at its start (a tensor of at most
``PIECES * PIECE`` elements is taken whole). Nothing is computed over whole tensors and nothing large is
copied: the runs are views, gathered per device into one buffer and copied to the CPU once per device, so
the cost grows with the number of tensors, not their size, and weights stay where they are (GPU, CPU
offload, memory-mapped: a run touches one or two pages). Where a tensor lives does not change the result.

Two checkpoints of one architecture differ in nearly every element of every trained matrix (a fine-tune,
a merged LoRA), so they differ in the sample; checkpoints that differ only in elements the sample misses
(a few rows of one matrix) would get the same fingerprint.
"""
from __future__ import annotations

import hashlib
import itertools
from collections import defaultdict

import torch

PIECES = 8
PIECE = 32
VERSION = "t1"           # changes whenever what is hashed changes: old fingerprints then simply stop matching


class Fingerprint:
    """``add_text`` / ``add_tensor`` in a fixed order, then ``hexdigest()``."""

    def __init__(self):
        self._items: list = []          # str, or (device, index in that device's list)
        self._pending: dict[torch.device, list[torch.Tensor]] = defaultdict(list)
        self.tensors = 0

    def add_text(self, text: str) -> None:
        self._items.append(text)

    def add_tensor(self, name: str, t: torch.Tensor) -> None:
        self.tensors += 1
        t = t.detach()
        self._items.append(f"{name}|{type(t).__name__}|{t.dtype}|{tuple(t.shape)}")
        if type(t) not in (torch.Tensor, torch.nn.Parameter):
            inner = getattr(t, "__tensor_flatten__", None)
            if inner is not None:                 # a wrapper subclass (quantized weights): its inner tensors
                try:
                    names = inner()[0]
                except Exception:                  # noqa: BLE001
                    names = None
                if names is not None:
                    for n in names:
                        self.add_tensor(f"{name}.{n}", getattr(t, n))
                    return
            try:
                t = t.as_subclass(torch.Tensor)
            except Exception:                      # noqa: BLE001 - shape and dtype only
                return
        if t.device.type == "meta" or t.numel() == 0:
            return
        pending = self._pending[t.device]
        self._items.append((t.device, len(pending)))
        pending.append(_sample(t))

    def hexdigest(self) -> str:
        blobs = {}
        for device, samples in self._pending.items():
            flat = [x.reshape(-1) for x in samples]
            data = (torch.cat(flat) if len(flat) > 1 else flat[0]).cpu().numpy().tobytes()
            ends = list(itertools.accumulate(x.numel() for x in flat))
            blobs[device] = (memoryview(data), [0] + ends)
        h = hashlib.sha256(VERSION.encode())
        for item in self._items:
            if isinstance(item, str):
                h.update(b"\x00" + item.encode())
            else:
                data, bounds = blobs[item[0]]
                h.update(b"\x01")
                h.update(data[bounds[item[1]]:bounds[item[1] + 1]])
        return h.hexdigest()


def _sample(t: torch.Tensor) -> torch.Tensor:
    """The sampled elements of ``t`` as a uint8 tensor on ``t``'s device: all of them, or PIECES runs of PIECE
    elements ``step`` apart from the first (a strided view where ``t`` is contiguous; copied once, when fetched)."""
    n = t.numel()
    if n <= PIECES * PIECE:
        return _bytes(t.reshape(-1))
    step = (n - PIECE) // (PIECES - 1)
    if not t.is_contiguous():                      # rare for weights: gather the same positions
        positions = (torch.arange(PIECES).unsqueeze(1) * step + torch.arange(PIECE)).reshape(-1)
        try:
            return _bytes(torch.take(t, positions.to(t.device)))
        except (RuntimeError, NotImplementedError):  # a dtype torch.take lacks: a copy on its own device
            t = t.contiguous()
    flat = t.view(-1)
    return _bytes(flat.as_strided((PIECES, PIECE), (step, 1), flat.storage_offset()))


def _bytes(x: torch.Tensor) -> torch.Tensor:
    try:
        return x.view(torch.uint8)
    except RuntimeError:                           # a dtype or layout that cannot be viewed as bytes
        return x.contiguous().to(torch.float64).view(torch.uint8)
