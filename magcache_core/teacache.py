"""The TeaCache skip rule, as published by its authors (Liu et al., CVPR 2025).

Per cond entry, on every model call:
    d = mean|x_t - x_prev| / mean|x_prev|       (x: the first block's timestep-modulated input)
    accumulated += poly(d)                      (the model's fitted polynomial, numpy.poly1d order)
    skip while accumulated < rel_l1_thresh; a computed step resets accumulated to 0
x_prev is updated on every step, skipped or not. The first and the last step of a run always
compute, as do steps outside the start/end window. rel_l1_thresh 0 never skips (as the authors'
node, which then leaves the model alone): several published polynomials are negative near 0, so
the raw rule would skip on ``accumulated < 0`` even then. ``max_skips`` (optional, not in the paper)
caps how many steps in a row may skip.

Decisions are per cond entry, so a CFG batch and two separate forwards decide alike: a batched
call runs the blocks when any entry must compute, and entries that may skip then take their
cached residual (``RunState`` does that), exactly as they would alone.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Hashable, Sequence

import torch

# The largest rel_l1_thresh the front ends accept: the published ones run from 0.06 (LTX-Video) to 1.5
# (HiDream-I1 Fast), on each model's own scale.
REL_L1_THRESH_MAX = 2.0


def poly1d(coefficients: Sequence[float], x: float) -> float:
    """numpy.poly1d(coefficients)(x): coefficients highest power first (Horner's scheme)."""
    y = 0.0
    for c in coefficients:
        y = y * x + c
    return y


def relative_l1(current: torch.Tensor, previous: torch.Tensor, entries: int | None = None) -> torch.Tensor:
    """mean|current - previous| / mean|previous|, float32: a 0-d tensor, or with ``entries`` one value per entry
    (the batch split evenly in ``entries``) for the caller to read at once (one host sync for all).

    No float32 copy of the inputs (this runs on every step of a TeaCache run, and the step's host read waits for
    it): the difference in the inputs' own dtype (as the authors' code takes it), the two L1 sums accumulated in
    float32 by the reductions themselves, then their ratio. A ratio of sums is the ratio of means.
    """
    n = 1 if entries is None else entries
    cur, prev = current.reshape(n, -1), previous.reshape(n, -1)
    f32 = torch.float32 if cur.dtype != torch.float64 else torch.float64
    num = torch.linalg.vector_norm(cur - prev, 1, dim=1, dtype=f32)
    den = torch.linalg.vector_norm(prev, 1, dim=1, dtype=f32)
    out = num / den.clamp_min(1e-30)
    return out.reshape(()) if entries is None else out


@dataclass(frozen=True)
class TeaCacheParams:
    rel_l1_thresh: float
    coefficients: tuple[float, ...] = (1.0, 0.0)   # identity: the raw relative L1 distance
    max_skips: int | None = None                    # None: no cap


@dataclass
class _KeyState:
    previous: torch.Tensor | None = None
    accumulated: float = 0.0
    skips: int = 0

    def reset(self) -> None:
        self.accumulated, self.skips = 0.0, 0


class TeaCacheRule:
    """Decides per cond entry and step. ``decide_all`` syncs once per call (it reads the entries' distances)."""

    def __init__(self, params: TeaCacheParams, first_step: int, last_step: int):
        self.params = params
        self.first_step, self.last_step = first_step, last_step
        self._state: dict[Hashable, _KeyState] = {}
        self.distances: dict[Hashable, dict[int, float]] = {}     # key -> step -> rescaled distance

    def decide(self, step: int, key: Hashable, modulated: torch.Tensor, in_window: bool = True) -> bool:
        """True to skip ``step`` for ``key``; ``modulated`` is this entry's modulated input."""
        return self.decide_all(step, [(key, modulated)], in_window)[0]

    def decide_all(self, step: int, entries: Sequence[tuple[Hashable, torch.Tensor]], in_window: bool = True) -> list[bool]:
        """``decide`` for several entries of one call (distinct keys, inputs on one device), with one host read
        for all their distances."""
        out = [False] * len(entries)
        pending: list[tuple[int, Hashable, _KeyState, torch.Tensor]] = []
        for i, (key, modulated) in enumerate(entries):
            st = self._state.setdefault(key, _KeyState())
            previous, st.previous = st.previous, modulated.detach().clone()   # a model may reuse what it handed out
            if previous is not None and previous.device != modulated.device:   # the entry moved to another device
                previous = previous.to(modulated.device)
            if (previous is None or previous.shape != modulated.shape or not in_window
                    or step <= self.first_step or step >= self.last_step or self.params.rel_l1_thresh <= 0):
                st.reset()
                continue
            pending.append((i, key, st, relative_l1(modulated, previous)))
        if not pending:
            return out
        read = [float(pending[0][3])] if len(pending) == 1 else torch.stack([p[3] for p in pending]).tolist()
        cap = self.params.max_skips
        for (i, key, st, _), distance in zip(pending, read):
            d = poly1d(self.params.coefficients, distance)
            self.distances.setdefault(key, {})[step] = d
            st.accumulated += d
            if st.accumulated < self.params.rel_l1_thresh and (cap is None or st.skips < cap):
                st.skips += 1
                out[i] = True
            else:
                st.reset()
        return out

    def computed(self, key: Hashable) -> None:
        """``key`` ran the blocks after all (e.g. no residual yet): start accumulating afresh."""
        if key in self._state:
            self._state[key].reset()

    def clear(self) -> None:
        self._state.clear()
        self.distances.clear()


def teacache_schedule(params: TeaCacheParams, inputs: Sequence[torch.Tensor], key: Hashable = 0) -> list[int]:
    """The steps TeaCache computes for one entry given its modulated input at every step."""
    rule = TeaCacheRule(params, 0, len(inputs) - 1)
    return [s for s, x in enumerate(inputs) if not rule.decide(s, key, x)]


FIT_DEGREE = 4          # the authors fit a 4th-order polynomial


def fit_coefficients(stats: dict, degree: int = FIT_DEGREE) -> dict:
    """A TeaCache polynomial for one model from a calibration run's statistics.

    ``stats`` is ``CalibrationRecorder.result()``: per kind, ``input_l1`` (the indicator's relative
    L1 change) and ``l1`` (the residual's) at every step. As the TeaCache authors do, fit
    ``output change ~ poly(input change)`` by least squares over every step after the first, cond and
    uncond pooled. Returns ``{"coefficients": [...] (highest power first), "degree", "points",
    "rmse", "mean_output_l1"}``; raises ValueError when there is nothing to fit.
    """
    import numpy as np

    xs, ys = [], []
    for kind, s in stats.items():
        if "input_l1" not in s:
            raise ValueError(f"no TeaCache indicator was recorded for {kind!r}")
        xs += s["input_l1"][1:]
        ys += s["l1"][1:]
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if len(x) < degree + 2 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError(f"need at least {degree + 2} finite (input, output) pairs to fit, got {len(x)}")
    if np.ptp(x) <= 1e-12:
        raise ValueError("the indicator changed by the same amount at every step: nothing to fit")
    with warnings.catch_warnings():      # few, clustered points warn "poorly conditioned"; the fit is still the LSQ one
        warnings.simplefilter("ignore", getattr(np, "exceptions", np).RankWarning)
        coefficients = np.polyfit(x, y, degree)
    rmse = float(np.sqrt(np.mean((np.polyval(coefficients, x) - y) ** 2)))
    return {"coefficients": [float(c) for c in coefficients], "degree": degree, "points": int(len(x)),
            "rmse": round(rmse, 6), "mean_output_l1": round(float(y.mean()), 6)}
