"""Calibration statistics: how the blocks' residual changes from one step to the next, per cond.

For each cond entry and step t > 0, with r_t the residual (tokens x hidden):
    ratio[t] = mean_tokens(|r_t| / |r_{t-1}|)      (the MagCache magnitude ratio)
    std[t]   = std_tokens(|r_t| / |r_{t-1}|)
    cos[t]   = mean_tokens(1 - cos(r_t, r_{t-1}))   (cosine distance)
and ratio[0] = 1, std[0] = cos[0] = 0. Entries of the same kind (several positive conds, say)
are averaged per step. Values stay on the device until ``result()``, so recording adds no sync.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Hashable

import torch

from .ratios import KIND_NAMES

STATS = ("ratio", "std", "cos")


class CalibrationRecorder:
    def __init__(self):
        self._prev: dict[Hashable, torch.Tensor] = {}
        # kind -> step -> list of (ratio, std, cos) tensors
        self._rows: dict[int, dict[int, list[torch.Tensor]]] = defaultdict(lambda: defaultdict(list))

    def record(self, key: Hashable, kind: int, step: int, residual: torch.Tensor) -> None:
        cur = residual.detach().float()
        cur = cur.reshape(cur.shape[0], -1, cur.shape[-1])
        prev = self._prev.get(key)
        if prev is None or prev.shape != cur.shape:
            row = torch.tensor([1.0, 0.0, 0.0], device=cur.device)
        else:
            norm_ratio = cur.norm(dim=-1) / prev.norm(dim=-1).clamp_min(1e-12)
            cos = torch.nn.functional.cosine_similarity(cur, prev, dim=-1, eps=1e-8)
            row = torch.stack([norm_ratio.mean(), norm_ratio.std(unbiased=False), (1 - cos).mean()])
        self._rows[kind][step] = self._rows[kind].get(step, []) + [row]
        self._prev[key] = cur

    def result(self) -> dict[str, dict[str, list[float]]]:
        """``{"cond": {"ratio": [...], "std": [...], "cos": [...]}, "uncond": {...}}``, one value per step."""
        out = {}
        for kind, by_step in sorted(self._rows.items()):
            steps = sorted(by_step)
            table = torch.stack([torch.stack(by_step[s]).mean(0) for s in steps]).cpu().tolist()
            out[KIND_NAMES.get(kind, str(kind))] = {name: [round(r[i], 5) for r in table] for i, name in enumerate(STATS)}
        return out

    def clear(self) -> None:
        self._prev.clear()
        self._rows.clear()
