"""The MagCache skip rule, as published by its authors (Ma et al., 2025).

Per cond curve, on every step that may skip:
    accumulated_ratio *= ratio[step]
    accumulated_steps += 1
    accumulated_err   += |1 - accumulated_ratio|
    skip while accumulated_err < threshold and accumulated_steps <= K
and on a computed step all three accumulators reset (ratio 1, err 0, steps 0).

A step may skip only if ``step >= int(num_steps * retention_ratio)`` (floor, as the authors'
ComfyUI node; diffusers rounds instead, see README) and it lies inside the start/end window.
With several conds in one step (CFG), the step skips only if every cond's curve allows it,
so a batched cond+uncond forward and two separate forwards make the same decision.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

# The largest settings the front ends accept (the nodes' input maxima, the diffusers API's checks): the authors
# publish thresholds 0.02-0.24 and K 2-6 (strategies/); 0.5 and 10 leave room to explore, no more.
THRESHOLD_MAX = 0.5
MAX_SKIPS_MAX = 10


@dataclass
class Accumulator:
    ratio: float = 1.0
    err: float = 0.0
    steps: int = 0

    def advance(self, mag_ratio: float) -> None:
        self.ratio *= mag_ratio
        self.steps += 1
        self.err += abs(1.0 - self.ratio)

    def allows(self, threshold: float, max_skips: int) -> bool:
        return self.err < threshold and self.steps <= max_skips

    def reset(self) -> None:
        self.ratio, self.err, self.steps = 1.0, 0.0, 0


@dataclass(frozen=True)
class MagCacheParams:
    threshold: float
    retention_ratio: float
    max_skips: int


class MagCacheRule:
    """Decides, step by step, whether the blocks may be skipped. No tensors, no device work."""

    def __init__(self, params: MagCacheParams, curves: Mapping[int, Sequence[float]] | Callable[[int], Sequence[float]], num_steps: int):
        self.params = params
        self.num_steps = num_steps
        self.first_skippable = int(num_steps * params.retention_ratio)
        self._curve_of = curves if callable(curves) else curves.__getitem__
        self._acc: dict[int, Accumulator] = {}
        # (err, ratio) per kind as the last decision compared them, before any reset (target.py reads them).
        self.last_compared: dict[int, tuple[float, float]] = {}

    def may_skip(self, step: int) -> bool:
        return step >= self.first_skippable and step > 0

    def decide(self, step: int, kinds: Iterable[int], in_window: bool = True) -> bool:
        """True to skip ``step``; updates the accumulators as the rule says."""
        kinds = sorted(set(kinds))
        self.last_compared = {}
        if not (in_window and self.may_skip(step)):
            self.reset()
            return False
        allow = True
        for k in kinds:
            acc = self._acc.setdefault(k, Accumulator())
            curve = self._curve_of(k)
            acc.advance(curve[step] if step < len(curve) else 1.0)
            self.last_compared[k] = (acc.err, acc.ratio)
            allow = allow and acc.allows(self.params.threshold, self.params.max_skips)
        if not allow:
            self.reset()
        return allow

    def peek(self, step: int, kinds: Iterable[int], in_window: bool = True) -> bool:
        """What ``decide`` would say for ``step`` now, changing nothing (a host prefetching for the next step)."""
        if not (in_window and self.may_skip(step)):
            return False
        for k in set(kinds):
            acc = Accumulator(**vars(self._acc.get(k, Accumulator())))
            curve = self._curve_of(k)
            acc.advance(curve[step] if step < len(curve) else 1.0)
            if not acc.allows(self.params.threshold, self.params.max_skips):
                return False
        return True

    def reset(self) -> None:
        for acc in self._acc.values():
            acc.reset()


def computed_steps(params: MagCacheParams, curves: Mapping[int, Sequence[float]], num_steps: int,
                   kinds: Iterable[int] = (0,), window: Callable[[int], bool] | None = None) -> list[int]:
    """The steps the rule computes for a whole run (the steps not listed are skipped)."""
    rule = MagCacheRule(params, curves, num_steps)
    kinds = list(kinds)
    return [s for s in range(num_steps)
            if not rule.decide(s, kinds, window(s) if window else True)]
