"""Calibration statistics: how the blocks' residual changes from one step to the next, per cond.

For each cond entry and step t > 0, with r_t the residual (tokens x hidden):
    ratio[t] = mean_tokens(|r_t| / |r_{t-1}|)      (the MagCache magnitude ratio)
    std[t]   = std_tokens(|r_t| / |r_{t-1}|)
    cos[t]   = mean_tokens(1 - cos(r_t, r_{t-1}))   (cosine distance)
    l1[t]    = mean|r_t - r_{t-1}| / mean|r_{t-1}|   (relative L1 change of the residual)
and ratio[0] = 1, std[0] = cos[0] = l1[0] = 0. Where the host also passes TeaCache's indicator
(the first block's timestep-modulated input) it records ``input_l1[t]``, the same relative L1
change of the indicator: the pairs (input_l1, l1) are what a TeaCache polynomial is fitted to
(``teacache.fit_coefficients``). Entries of the same kind (several positive conds, say) are
averaged per step. Values stay on the device until ``result()``, so recording adds no sync.

Calls on several devices may record at once (ComfyUI's multi-GPU work units): the tables take a
lock; each entry's previous residual is its own (an entry is in one call at a time) and follows the
entry should the work units move it to another device.
"""
from __future__ import annotations

import threading
from collections import defaultdict
from typing import Hashable

import torch

from .ratios import KIND_NAMES
from .teacache import relative_l1

STATS = ("ratio", "std", "cos", "l1")


class CalibrationRecorder:
    def __init__(self):
        self._prev: dict[Hashable, torch.Tensor] = {}
        # kind -> step -> list of (ratio, std, cos) tensors
        self._rows: dict[int, dict[int, list[torch.Tensor]]] = defaultdict(lambda: defaultdict(list))
        self._prev_input: dict[Hashable, torch.Tensor] = {}
        self._input_rows: dict[int, dict[int, list[torch.Tensor]]] = defaultdict(lambda: defaultdict(list))
        self._lock = threading.Lock()

    def record(self, key: Hashable, kind: int, step: int, residual: torch.Tensor) -> None:
        kept = residual.detach()            # the previous residual is kept as it is (the store holds the same
        cur = kept.float()                  # tensor): no float32 copy outlives the call
        cur = cur.reshape(cur.shape[0], -1, cur.shape[-1])
        prev = _on(self._prev.get(key), cur.device)
        prev = None if prev is None else prev.float().reshape(prev.shape[0], -1, prev.shape[-1])
        if prev is None or prev.shape != cur.shape:
            row = torch.tensor([1.0, 0.0, 0.0, 0.0], device=cur.device)
        else:
            norm_ratio = cur.norm(dim=-1) / prev.norm(dim=-1).clamp_min(1e-12)
            cos = torch.nn.functional.cosine_similarity(cur, prev, dim=-1, eps=1e-8)
            row = torch.stack([norm_ratio.mean(), norm_ratio.std(unbiased=False), (1 - cos).mean(),
                               relative_l1(cur, prev)])
        with self._lock:
            self._rows[kind][step].append(row)
        self._prev[key] = kept

    def input_change(self, key: Hashable, indicator: torch.Tensor) -> torch.Tensor:
        """The relative L1 change of TeaCache's indicator for ``key`` since its last call (0 for the first), a
        0-d tensor; the indicator is kept, as it is, for the next. No lock: an entry is in one call at a time."""
        cur = indicator.detach().clone()    # a model may reuse the tensor it handed out
        prev = _on(self._prev_input.get(key), cur.device)
        self._prev_input[key] = cur
        if prev is None or prev.shape != cur.shape:
            return torch.zeros((), device=cur.device)
        return relative_l1(cur, prev).reshape(())

    def add_input(self, kind: int, step: int, value: torch.Tensor) -> None:
        """``input_change``'s value for an entry of ``kind`` at ``step``."""
        with self._lock:
            self._input_rows[kind][step].append(value)

    def record_input(self, key: Hashable, kind: int, step: int, indicator: torch.Tensor) -> None:
        """TeaCache's indicator for ``key`` at ``step``: ``input_change`` then ``add_input`` (a host that records
        where it also computes; the run splits the two, see ``run.py``)."""
        self.add_input(kind, step, self.input_change(key, indicator))

    def result(self) -> dict[str, dict[str, list[float]]]:
        """``{"cond": {"ratio": [...], "std": [...], "cos": [...], "l1": [...]}, "uncond": {...}}``, one value
        per step; plus ``"input_l1"`` where the indicator was recorded at every step."""
        out = {}
        for kind, by_step in sorted(self._rows.items()):
            steps = sorted(by_step)
            table = _stack([_stack(by_step[s]).mean(0) for s in steps]).tolist()
            stats = {name: [round(r[i], 5) for r in table] for i, name in enumerate(STATS)}
            inputs = self._input_rows.get(kind, {})
            if inputs and sorted(inputs) == steps:
                stats["input_l1"] = [round(v, 6) for v in _stack([_stack(inputs[s]).mean() for s in steps]).tolist()]
            out[KIND_NAMES.get(kind, str(kind))] = stats
        return out

    def clear(self) -> None:
        self._prev.clear()
        self._rows.clear()
        self._prev_input.clear()
        self._input_rows.clear()


def _stack(rows: list[torch.Tensor]) -> torch.Tensor:
    """torch.stack, on the CPU when the rows were recorded on several devices."""
    return torch.stack(rows if len({r.device for r in rows}) == 1 else [r.cpu() for r in rows])


def _on(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return t if t is None or t.device == device else t.to(device)
