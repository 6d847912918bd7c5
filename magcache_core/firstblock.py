"""A skip the content confirms (first-block-cache family: ParaAttention's FBCache, cache-dit's DBCache),
with the MagCache curve as the prior.

The first ``blocks`` transformer blocks run on every step. Their residual (the stream leaving block
``blocks - 1`` minus the stream entering block 0) is compared, per cond entry, with the same residual on
that entry's last computed step:

    change = mean|F_t - F_last| / mean|F_last|        (relative L1, one number per entry)

and the remaining blocks are skipped while

    change < threshold                         (``accumulate``: the sum of the changes over the skipped
                                                steps since the last computed one, as DBCache's
                                                max_accumulated_residual_diff)
    and the curve allows it                    (``prior``: MagCache's own accumulated error, per entry,
                                                below MagCache's threshold; retention and K as MagCache)

On a skipped step the remaining blocks' output is the fresh stream after the first blocks plus the
residual the remaining blocks added on the last computed step (``run.py``).

Decisions are per cond entry and step: the change of an entry is only known once its first blocks have
run, inside its own model call, so a cond whose call comes first cannot wait for another's. A CFG batch
runs the remaining blocks if any entry must, and the entries that may skip take their cached residual,
so batched and split CFG decide and compute alike (as TeaCache does).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Sequence

import torch

from .decision import Accumulator, MagCacheParams


@dataclass(frozen=True)
class FirstBlockParams:
    blocks: int                     # the first blocks, run on every step (N >= 1)
    threshold: float                # largest relative L1 change of their residual that still skips; 0 = never
    accumulate: bool = False        # compare the sum of the changes over the skipped steps, not the last one
    prior: bool = True              # the MagCache curve must allow the skip too


def relative_changes(current: torch.Tensor, reference: torch.Tensor, entries: int) -> torch.Tensor:
    """Per entry (the batch split evenly in ``entries``): mean|current - reference| / mean|reference|, as one
    float32 tensor of ``entries`` values (the caller reads it once: one host sync per model call)."""
    cur = current.reshape(entries, -1).float()
    ref = reference.reshape(entries, -1).float()
    return (cur - ref).abs().mean(1) / ref.abs().mean(1).clamp_min(1e-12)


class FirstBlockRule:
    """Per entry and step: skip the blocks after the first ones? No tensors here (the changes come in as floats)."""

    def __init__(self, params: MagCacheParams, fb: FirstBlockParams, curve_of: Callable[[int], Sequence[float]],
                 num_steps: int):
        self.params, self.fb = params, fb
        self.first_skippable = int(num_steps * params.retention_ratio)
        self._curve_of = curve_of
        self._acc: dict[Hashable, Accumulator] = {}
        self._content: dict[Hashable, float] = {}
        self.changes: dict[Hashable, dict[int, float]] = {}      # entry -> step -> measured change (for reports)

    def decide(self, step: int, key: Hashable, kind: int, change: float | None, in_window: bool = True) -> bool:
        """True to skip the remaining blocks of ``key`` at ``step``; ``change`` is None where nothing could be
        compared (no reference yet, another shape)."""
        if change is not None:
            self.changes.setdefault(key, {})[step] = change
        if (change is None or not in_window or step == 0 or step < self.first_skippable
                or self.fb.threshold <= 0 or self.params.max_skips <= 0):
            self.computed(key)
            return False
        acc = self._acc.setdefault(key, Accumulator())
        curve = self._curve_of(kind)
        acc.advance(curve[step] if step < len(curve) else 1.0)
        content = self._content.get(key, 0.0) + change if self.fb.accumulate else change
        ok = (content < self.fb.threshold and acc.steps <= self.params.max_skips
              and (not self.fb.prior or acc.err < self.params.threshold))
        if ok:
            self._content[key] = content
        else:
            self.computed(key)
        return ok

    def computed(self, key: Hashable) -> None:
        """``key`` ran every block: accumulate afresh."""
        acc = self._acc.get(key)
        if acc is not None:
            acc.reset()
        self._content.pop(key, None)

    def clear(self) -> None:
        self._acc.clear()
        self._content.clear()
        self.changes.clear()
