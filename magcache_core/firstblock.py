"""A skip the content confirms (first-block-cache family: ParaAttention's FBCache, cache-dit's DBCache),
with the MagCache curve as the prior.

The first ``blocks`` transformer blocks run on every step. Their residual (the stream leaving block
``blocks - 1`` minus the stream entering block 0) is compared, per cond entry, with the same residual on
that entry's last computed step:

    change = mean|F_t - F_last| / mean|F_last|        (relative L1, one number per entry)

and the remaining blocks are skipped where

    MagCache's rule skips the step (the prior: the curve's accumulated error below MagCache's threshold,
        retention, K, the window; decided per step for every cond, as plain MagCache decides it;
        ``prior=False``: the threshold is not applied, retention, K and the window are)
    and change < threshold                  (``accumulate``: the sum of the changes over the skipped
                                             steps since the entry's last computed one, as DBCache's
                                             max_accumulated_residual_diff)

So the content can only veto skips the curve allows: at a threshold no change reaches, the schedule is
MagCache's own. On a skipped step the remaining blocks' output is the fresh stream after the first blocks
plus the residual the remaining blocks added on the last computed step (``run.py``).

The veto is per cond entry: an entry's change is only known once its first blocks have run, inside its
own model call, so a cond whose call comes first cannot wait for another's. A CFG batch runs the
remaining blocks if any entry must, and the entries that may skip take their cached residual, so batched
and split CFG decide and compute alike (as TeaCache does). When any entry of a step computes, the prior
starts accumulating afresh, as MagCache's does when a planned skip computes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable


@dataclass(frozen=True)
class FirstBlockParams:
    blocks: int                     # the first blocks, run on every step (N >= 1)
    threshold: float                # largest relative L1 change of their residual that still skips; 0 = never
    accumulate: bool = False        # compare the sum of the changes over the skipped steps, not the last one
    prior: bool = True              # MagCache's threshold applies too (else only its retention, K and window)


class FirstBlockRule:
    """The content's veto, per entry and step. No tensors here (the changes come in as floats)."""

    def __init__(self, fb: FirstBlockParams):
        self.fb = fb
        self._content: dict[Hashable, float] = {}
        self.changes: dict[Hashable, dict[int, float]] = {}      # entry -> step -> measured change (for reports)

    def decide(self, step: int, key: Hashable, change: float | None, prior: bool) -> bool:
        """True to skip the remaining blocks of ``key`` at ``step``. ``prior``: MagCache's rule skips the step;
        ``change`` is None where nothing could be compared (no reference yet, another shape)."""
        if change is not None:
            self.changes.setdefault(key, {})[step] = change
        if not prior or change is None or self.fb.threshold <= 0:
            self.computed(key)
            return False
        content = self._content.get(key, 0.0) + change if self.fb.accumulate else change
        if content < self.fb.threshold:
            self._content[key] = content
            return True
        self.computed(key)
        return False

    def computed(self, key: Hashable) -> None:
        """``key`` ran every block: accumulate afresh."""
        self._content.pop(key, None)

    def clear(self) -> None:
        self._content.clear()
        self.changes.clear()
