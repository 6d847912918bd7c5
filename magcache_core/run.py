"""State of one sampling run: step tracking, skip decisions, residuals, calibration records.

Created when sampling starts and dropped when it ends; nothing here outlives the run. The host
(ComfyUI's wrappers in ``nodes/patching.py``, or any other driver) calls, per model call:

    ctx = run.begin_call(sigma, keys, kinds)   # keys: one per batch chunk (ComfyUI's uuids)
    run.enter_blocks(ctx, stream_in)           # before the first block (may turn a skip into a compute)
    ... ctx.skip ? pass blocks through : compute them ...
    run.leave_blocks(ctx, stream_out)          # after the last block of a computed call
    run.end_call(ctx)
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

import torch

from .calibration import CalibrationRecorder
from .decision import MagCacheParams, MagCacheRule
from .ratios import RatioCurves
from .residuals import ResidualStore


@dataclass(frozen=True)
class RunConfig:
    """What a node decided; shared by every run of the patched model, never mutated."""

    method: str                                  # "magcache" or "calibrate"
    params: MagCacheParams | None = None
    curves: RatioCurves | None = None
    start_percent: float = 0.0
    end_percent: float = 1.0
    offload_device: torch.device | None = None
    label: str = ""                              # strategy/preset, for the log line


@dataclass
class CallContext:
    step: int
    keys: list
    kinds: list[int]
    skip: bool
    stream_in: torch.Tensor | None = None
    skip_out: torch.Tensor | None = None


class RunState:
    def __init__(self, config: RunConfig, sample_sigmas: Sequence[float],
                 window: tuple[float, float] = (float("inf"), float("-inf")),
                 on_new_step: Callable[[int, int], None] | None = None):
        self.config = config
        self.sigmas = [float(s) for s in sample_sigmas]
        self.num_steps = max(len(self.sigmas) - 1, 1)
        self._ascending = [-s for s in self.sigmas]
        self.start_sigma, self.end_sigma = window
        self.on_new_step = on_new_step
        self.residuals = ResidualStore(config.offload_device)
        self.recorder = CalibrationRecorder() if config.method == "calibrate" else None
        self.rule = None
        if config.method == "magcache":
            cache: dict[int, list[float]] = {}
            curve_of = lambda k: cache.setdefault(k, config.curves.for_steps(k, self.num_steps))  # noqa: E731
            self.rule = MagCacheRule(config.params, curve_of, self.num_steps)
        self.kinds_seen: set[int] = set()
        self.decisions: dict[int, bool] = {}
        self.computed_steps: set[int] = set()
        self.current: CallContext | None = None

    # -- step bookkeeping -------------------------------------------------------------------
    def step_index(self, sigma: float) -> int:
        """Index of ``sigma`` in the run's sigmas; a sigma between two (2nd-order samplers) maps to
        the step whose interval holds it."""
        i = bisect.bisect_left(self._ascending, -sigma)
        if i < len(self.sigmas) and self.sigmas[i] == sigma:
            return min(i, self.num_steps - 1)
        return min(max(i - 1, 0), self.num_steps - 1)

    def in_window(self, sigma: float) -> bool:
        return self.end_sigma < sigma <= self.start_sigma

    def begin_call(self, sigma: float, keys: Sequence[Hashable], kinds: Sequence[int]) -> CallContext:
        step = self.step_index(sigma)
        self.kinds_seen.update(kinds)
        if step not in self.decisions:
            skip = bool(self.rule and self.rule.decide(step, self.kinds_seen, self.in_window(sigma)))
            self.decisions[step] = skip
            if self.on_new_step:
                self.on_new_step(step, self.num_steps)
        self.current = CallContext(step, list(keys), list(kinds), self.decisions[step])
        return self.current

    # -- the blocks -------------------------------------------------------------------------
    def enter_blocks(self, ctx: CallContext, stream_in: torch.Tensor) -> None:
        if ctx.skip:
            residual = self.residuals.get_batch(ctx.keys, stream_in)
            if residual is not None:
                ctx.skip_out = stream_in + residual
                return
            ctx.skip = False              # a cond or a shape this run has no residual for: compute
        # A copy: blocks may update their input in place (ComfyUI's FLUX double blocks do `img += ...`).
        ctx.stream_in = stream_in.clone()

    def leave_blocks(self, ctx: CallContext, stream_out: torch.Tensor) -> None:
        residual = stream_out - ctx.stream_in
        self.residuals.put_batch(ctx.keys, residual)
        if self.recorder is not None:
            for key, kind, chunk in zip(ctx.keys, ctx.kinds, residual.chunk(len(ctx.keys))):
                self.recorder.record(key, kind, ctx.step, chunk)

    def end_call(self, ctx: CallContext) -> None:
        if not ctx.skip:
            self.computed_steps.add(ctx.step)
            if self.decisions.get(ctx.step) and self.rule:
                self.rule.reset()          # a planned skip had to compute: start accumulating afresh
        ctx.stream_in = ctx.skip_out = None
        self.current = None

    # -- end of run -------------------------------------------------------------------------
    @property
    def steps_seen(self) -> list[int]:
        return sorted(self.decisions)

    def summary(self) -> str:
        seen = self.steps_seen
        done = sorted(self.computed_steps)
        skipped = [s for s in seen if s not in self.computed_steps]
        speed = len(seen) / len(done) if done else 1.0
        return (f"{self.config.method} [{self.config.label}]: computed {len(done)}/{len(seen)} steps "
                f"{done}, skipped {len(skipped)} ({speed:.2f}x fewer block passes)")

    def release(self) -> None:
        self.residuals.clear()
        if self.recorder is not None:
            self.recorder.clear()
        self.current = None
