"""State of one sampling run: step tracking, skip decisions, residuals, calibration records.

Created when sampling starts and dropped when it ends; nothing here outlives the run. The same
machinery serves every method (MagCache, TeaCache, calibration); only the rule differs. The host
(ComfyUI's wrappers in ``nodes/patching.py``, or any other driver) calls, per model call:

    ctx = run.begin_call(sigma, keys, kinds)       # keys: one per batch chunk (ComfyUI's uuids)
    run.enter_blocks(ctx, stream_in, modulated)    # before the first block; TeaCache decides here
    ... ctx.skip ? pass blocks through and use ctx.skip_out : compute them ...
    stream = run.leave_blocks(ctx, stream_out)     # after the last block of a computed call
    run.end_call(ctx)

Several model calls of one step may run at once, in threads (ComfyUI 0.33's multi-GPU work units call
each device's model from its own thread). A call's state is its own ``CallContext``, which the host
carries with the call (nothing here says which call is "current"); what the calls share is guarded by
a lock: the step's decision (made once, by whichever call of the step comes first, from what earlier
steps saw, so the same as one device's) and the bookkeeping at the end of a call. Per-entry state
(residuals, TeaCache's accumulators, calibration's previous residual) belongs to one cond entry, and
an entry is in one call per model evaluation, so it needs no lock. A residual is used only on the
device that computed it.

Steps are indexed in the *whole* schedule: a sampler that runs steps ``offset`` to
``offset + len(sigmas) - 2`` of a ``total_steps`` schedule (KSamplerAdvanced step ranges, the two
models of Wan 2.2, denoise < 1) reads the matching part of the ratio curve.
"""
from __future__ import annotations

import bisect
import logging
import math
import threading
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Callable, Hashable, Sequence

import torch

from .calibration import CalibrationRecorder
from .decision import MagCacheParams, MagCacheRule
from .errors import MagCacheInputError
from .firstblock import FirstBlockParams, FirstBlockRule
from .ratios import RatioCurves
from .residuals import ResidualStore
from .target import Plan, TeaOutcome, solve, tea_outcome
from .teacache import TeaCacheParams, TeaCacheRule, relative_l1

log = logging.getLogger("comfyui-magcache")
METHODS = ("magcache", "teacache", "calibrate")
# How a skipped step uses the stored residuals (``extrapolate``): "off" reuses the last one as it is; the others
# predict it to first order from the last two computed ones (one extra residual per cond entry), with the
# weight given by the distance in steps ("step") or in sigma ("sigma"); "ratio" (MagCache only) scales the last
# one by the curve's accumulated ratio since it was made (no extra residual).
EXTRAPOLATIONS = ("off", "step", "sigma", "ratio")
# What a user chooses (the nodes' and the diffusers API's ``skipped_steps``): "reuse" is the authors' rule (the last
# residual as it is); "extrapolate" predicts it to first order from the last two computed ones, in the form
# bench/variant_forms.py measured best (by step distance; TeaCache has no curve, so never "ratio").
SKIPPED_CHOICES = ("reuse", "extrapolate")
# The default: extrapolation was above reuse at every computed-steps speedup from 1.5x to 3x at 20, 30 and 50 steps
# on the reference model, for MagCache and for TeaCache (docs/benchmarks/quality_shapes.md, 2026-11-25).
SKIPPED_DEFAULT = "extrapolate"
EXTRAPOLATE_FORM = "step"


def extrapolate_form(skipped_steps, input_name: str = "skipped_steps") -> str:
    """The RunConfig.extrapolate of a ``skipped_steps`` choice (a clear error naming ``input_name`` otherwise)."""
    if skipped_steps not in SKIPPED_CHOICES:
        raise MagCacheInputError(input_name, f"got {skipped_steps!r}; expected one of {', '.join(SKIPPED_CHOICES)}")
    return "off" if skipped_steps == "reuse" else EXTRAPOLATE_FORM


@dataclass(frozen=True)
class RunConfig:
    """What a node decided; shared by every run of the patched model, never mutated (but ``memo``)."""

    method: str                                        # one of METHODS
    params: MagCacheParams | TeaCacheParams | None = None
    curves: RatioCurves | None = None                  # MagCache only
    start_percent: float = 0.0
    end_percent: float = 1.0
    offload_device: torch.device | None = None
    label: str = ""                                    # strategy/preset, for the log line
    target: Fraction | None = None                     # speed target (target.py): MagCache solves its threshold per run
    # TeaCache with a target: the rel_l1_thresh solved by the last finished run, per (steps, offset, run steps);
    # the one thing a run leaves for the next (target.py says why).
    memo: dict = field(default_factory=dict, compare=False, repr=False)
    whole_run: bool = False                            # the curve was recorded on exactly these sigmas: read it
                                                       # as a whole run, not located in a longer schedule
    notice: str = ""                                   # what 'auto' decided, for the log and the node report
    extrapolate: str = "off"                           # skipped steps: one of EXTRAPOLATIONS
    first_blocks: FirstBlockParams | None = None       # MagCache only: a skip the content confirms (firstblock.py)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.extrapolate not in EXTRAPOLATIONS:
            raise ValueError(f"extrapolate must be one of {EXTRAPOLATIONS}, got {self.extrapolate!r}")
        if self.extrapolate == "ratio" and self.method != "magcache":
            raise ValueError("extrapolate 'ratio' needs a MagCache curve")
        if self.first_blocks is not None and (self.method != "magcache" or self.first_blocks.blocks < 1):
            raise ValueError("first_blocks: a MagCache run with at least one first block")


@dataclass
class CallContext:
    """One model call. ``keys``: the call's cache entries in batch order, small ints numbered once per run
    (so nothing on the blocks' path hashes the host's ids); ``own``: whether each is the sampler's own
    evaluation of its cond (the first at this step), not an extra call (Skip Layer Guidance...)."""

    step: int
    sigma: float
    keys: list[int]
    kinds: list[int]
    skip: bool
    own: list[bool] = field(default_factory=list)
    skip_keys: frozenset = frozenset()            # entries that take the cached residual in this call
    residual: torch.Tensor | None = None          # a skip: the cached residuals of ``keys``, as one batch
    entered: bool = False                         # the blocks came through enter_blocks
    stored: bool = False                          # leave_blocks already stored the residual (a mixed batch)
    stream_in: torch.Tensor | None = None
    new_residual: torch.Tensor | None = None      # a computed call: the blocks' residual (out - in), from leave_blocks
    skip_out: torch.Tensor | None = None
    input_l1: list | None = None                  # calibration: the change of TeaCache's indicator, per entry
    probing: bool = False                         # first_blocks: entered, the first blocks not yet confirmed
    prior: bool = False                           # first_blocks: the step's MagCache decision (the content may veto it)
    probe: torch.Tensor | None = None             # first_blocks: their residual in this call


class RunState:
    def __init__(self, config: RunConfig, sample_sigmas: Sequence[float],
                 window: tuple[float, float] = (float("inf"), float("-inf")),
                 on_new_step: Callable[[int, int], None] | None = None,
                 offset: int = 0, total_steps: int | None = None, record_indicator: bool = False,
                 blocks: int | None = None):
        """``record_indicator``: a calibration run also records TeaCache's indicator (the host then
        passes the modulated input to ``enter_blocks``), so that a polynomial can be fitted. ``blocks``: how
        many transformer blocks the host runs per computed call (None: a whole model), for the block-pass
        count of ``first_blocks`` runs, whose skipped steps still run the first blocks."""
        self.config = config
        self.sigmas = [float(s) for s in sample_sigmas]
        self.run_steps = max(len(self.sigmas) - 1, 1)
        self.offset = offset
        self.num_steps = total_steps if total_steps is not None else self.run_steps
        if not 0 <= offset <= self.num_steps - self.run_steps:
            raise ValueError(f"steps {offset}..{offset + self.run_steps - 1} lie outside a {self.num_steps}-step schedule")
        self._ascending = [-s for s in self.sigmas]
        self.start_sigma, self.end_sigma = window
        self.on_new_step = on_new_step
        self.residuals = ResidualStore(config.offload_device, keep_previous=config.extrapolate in ("step", "sigma"))
        self.blocks = blocks
        self.recorder = CalibrationRecorder() if config.method == "calibrate" else None
        self.record_indicator = bool(record_indicator and self.recorder is not None)
        self.rule = self.tea = self.fb = None
        self._probe_ref: dict[int, torch.Tensor] = {}   # first_blocks: their residual on each entry's last computed step
        self._plan: Plan | TeaOutcome | None = None      # the speed target's plan / outcome (target.py)
        if config.method == "magcache":
            cache: dict[int, list[float]] = {}
            curve_of = lambda k: cache.setdefault(k, config.curves.for_steps(k, self.num_steps))  # noqa: E731
            self._curve_of = curve_of
            # A speed target is solved at the run's second step, when every cond has been seen; the first
            # step computes anyway (there is no residual yet), so threshold 0 (never skip) until then.
            params = replace(config.params, threshold=0.0) if config.target is not None else config.params
            if config.first_blocks is not None:
                # The rule is the prior (per step); the content vetoes per entry, after the first blocks (confirm).
                self.fb = FirstBlockRule(config.first_blocks)
                if not config.first_blocks.prior:
                    params = replace(params, threshold=math.inf)
            self.rule = MagCacheRule(params, curve_of, self.num_steps)
        elif config.method == "teacache":
            params, self._tea_source = config.params, "the input"
            if config.target is not None and self._memo_key in config.memo:
                params = replace(params, rel_l1_thresh=config.memo[self._memo_key])
                self._tea_source = "solved by the previous run"
            self.tea = TeaCacheRule(params, offset, offset + self.run_steps - 1)
        self.kinds_seen: set[int] = set()
        self.decisions: dict[int, bool] = {}              # MagCache: one decision per step
        self.key_decisions: dict[tuple[int, Hashable], bool] = {}   # TeaCache: one per step and entry
        self.computed_steps: set[int] = set()
        self.bypassed_calls = 0                           # calls whose blocks never reached enter_blocks
        self._lock = threading.Lock()        # the shared decision and bookkeeping, for calls in threads
        self._evaluations: dict[tuple, int] = {}         # (sigma, key, kind) -> evaluations so far
        self._ids: dict[tuple, int] = {}                  # (key, kind, n) -> the entry's number in this run
        self._kind_of: dict[int, int] = {}                # entry number -> its kind (extrapolate "ratio")
        self._next_skips = False                          # the rule expects the next step to skip

    @property
    def needs_modulated_input(self) -> bool:
        return self.tea is not None or self.record_indicator

    # -- step bookkeeping -------------------------------------------------------------------
    def step_index(self, sigma: float) -> int:
        """Index in the whole schedule of ``sigma``; a sigma between two (2nd-order samplers) maps
        to the step whose interval holds it."""
        i = bisect.bisect_left(self._ascending, -sigma)
        if not (i < len(self.sigmas) and self.sigmas[i] == sigma):
            i -= 1
        return self.offset + min(max(i, 0), self.run_steps - 1)

    def in_window(self, sigma: float) -> bool:
        return self.end_sigma < sigma <= self.start_sigma

    def begin_call(self, sigma: float | None, keys: Sequence[Hashable], kinds: Sequence[int],
                   device: torch.device | None = None, step: int | None = None) -> CallContext:
        """A new call's context (the caller keeps it: there is no "current" call). ``keys``: the host's id of
        each batch chunk's cond (ComfyUI's uuids; None where it has none), ``kinds`` its role (0 cond, 1 uncond,
        2... third conds). The step is ``step`` where the host knows it without reading the device (the
        sampler's own step count, see ``nodes/patching.py``), else found from ``sigma``. ``device``: where the
        call runs; on a step that skips, its cached residuals are gathered for it here, before the model runs.

        A cache entry is ``(key, kind, n)``: the n-th evaluation of that cond in that role at this sigma. So
        an uncond copy that shares its cond's uuid (ComfyUI's area conds) is an entry of its own, and an
        extra call of a cond at the same step (Skip Layer Guidance, a wrapper's extra evaluation) gets its own
        entry rather than overwriting the sampler's own; however the calls are batched or split. Entries are
        numbered (small ints) the first time they are seen in the run."""
        if step is None:
            step = self.step_index(sigma)
        else:
            step = min(max(step, self.offset), self.offset + self.run_steps - 1)
            sigma = self.sigmas[step - self.offset]
        with self._lock:                      # the first call of a step decides it, for every call of the step
            self.kinds_seen.update(kinds)
            new = step not in self.decisions
            if new:
                self._decide(step, sigma)
            skip = self.decisions[step]
            entries, own = [], []
            for key, kind in zip(keys, kinds):
                role = (sigma, key, kind)
                n = self._evaluations.get(role, 0)
                self._evaluations[role] = n + 1
                entry = self._ids.setdefault((key, kind, n), len(self._ids))
                self._kind_of[entry] = kind
                entries.append(entry)
                own.append(n == 0)
        ctx = CallContext(step, sigma, entries, list(kinds), skip, own)
        if skip and self.tea is None and device is not None:
            if all(self.residuals.has_on(e, device) for e in entries):
                ctx.residual = self.residuals.batch(entries, coefficients=self._coefficients(step, sigma, entries))
            else:                             # nothing cached for some entry (yet) on this device: compute
                ctx.skip = False
        if new and self.on_new_step:
            self.on_new_step(step - self.offset, self.run_steps)
        return ctx

    def _decide(self, step: int, sigma: float) -> None:
        """The step's decision (under the lock), and, offloading, what the next step will need on the device."""
        if self.rule is not None and self.config.target is not None and self._plan is None and step > self.offset:
            self._solve_target()
        self.decisions[step] = bool(self.rule and self.rule.decide(step, self.kinds_seen, self.in_window(sigma)))
        nxt = step + 1 - self.offset
        self._next_skips = bool(self.rule is not None and nxt < self.run_steps
                                and self.rule.peek(step + 1, self.kinds_seen, self.in_window(self.sigmas[nxt])))
        if self.residuals.offload_device is not None:
            if not self.decisions[step]:
                # A computed step replaces the residuals: off the device while its blocks run (the copy, on a
                # side stream, overlaps them), so they do not add to the step's peak memory.
                self.residuals.offload(range(len(self._ids)))
            elif self._next_skips:
                self.residuals.prefetch(range(len(self._ids)))   # offloaded residuals the next (skipped) step uses

    @property
    def _memo_key(self) -> tuple[int, int, int]:
        return self.num_steps, self.offset, self.run_steps

    @property
    def plan(self) -> Plan | TeaOutcome | None:
        """MagCache: the solved plan, from the run's second step on. TeaCache: the outcome so far (read
        it after the run)."""
        if self.tea is not None and self.config.target is not None and self.tea.distances:
            self._plan = tea_outcome(self.config.target, self.tea.params.rel_l1_thresh, self._tea_source,
                                     self.steps_seen, len(self.computed_steps), self.tea.distances,
                                     self.tea.params.max_skips)
        return self._plan

    def _solve_target(self) -> None:
        kinds = sorted(self.kinds_seen)
        window = [self.in_window(s) for s in self.sigmas[:self.run_steps]]
        self._plan = solve(self.config.target, self.config.params, {k: self._curve_of(k) for k in kinds},
                          self.num_steps, kinds, self.offset, self.run_steps, window)
        self.rule.params = replace(self.config.params, threshold=self.plan.threshold)
        (log.info if self.plan.met else log.warning)("MagCache [%s]: %s", self.config.label, self.plan.describe())

    # -- the blocks -------------------------------------------------------------------------
    # ``enter_blocks`` and ``leave_blocks`` run inside the model's forward (a compiled region under
    # torch.compile): for MagCache and calibration they only branch on what ``begin_call`` decided and keep
    # tensors on the call's context; everything else (storing residuals, calibration statistics, locks,
    # dictionaries) waits for ``end_call``, after the model returned. TeaCache must read its indicator there.
    def enter_blocks(self, ctx: CallContext, stream_in: torch.Tensor, modulated: torch.Tensor | None = None) -> None:
        ctx.entered = True
        if self.fb is not None:
            # first_blocks: the first blocks run on every step; confirm_first_blocks decides after them, where the
            # step's MagCache decision (the prior) allows a skip.
            ctx.prior, ctx.skip, ctx.probing = ctx.skip, False, True
            ctx.stream_in = stream_in.clone()
            return
        if self.tea is not None:              # decides, and makes skip_out or the copy of stream_in itself
            self._tea_enter(ctx, stream_in, modulated)
            return
        if ctx.skip:
            r = ctx.residual
            if r is None:                     # a host that did not say the device in begin_call
                r = self.residuals.get_batch(ctx.keys, stream_in, self._coefficients(ctx.step, ctx.sigma, ctx.keys))
            if r is not None and r.shape == stream_in.shape:
                ctx.skip_out = stream_in + (r if r.dtype == stream_in.dtype else r.to(stream_in.dtype))
                return
            ctx.skip = False                  # a residual of another shape (new resolution): compute
        if self.record_indicator and modulated is not None:
            ctx.input_l1 = [self.recorder.input_change(key, chunk) if own else None
                            for key, own, chunk in zip(ctx.keys, ctx.own, modulated.chunk(len(ctx.keys)))]
        # A copy: blocks may update their input in place (ComfyUI's FLUX double blocks do `img += ...`).
        ctx.stream_in = stream_in.clone()

    def _tea_enter(self, ctx: CallContext, stream_in: torch.Tensor, modulated: torch.Tensor | None) -> None:
        if modulated is None:
            raise RuntimeError("TeaCache needs the modulated input of the first block")
        undecided: dict = {}                    # a 2nd call in one step (2nd-order samplers) reuses its decisions
        for key, chunk in zip(ctx.keys, modulated.chunk(len(ctx.keys))):
            if (ctx.step, key) not in self.key_decisions and key not in undecided:
                undecided[key] = chunk
        if undecided:                           # one host read for the call's entries
            for key, skip in zip(undecided, self.tea.decide_all(ctx.step, list(undecided.items()),
                                                                 self.in_window(ctx.sigma))):
                self.key_decisions[(ctx.step, key)] = skip
        # An entry or a shape this run has no residual for yet (new cond, new resolution), or whose
        # residual another device computed, computes.
        chunk_shape = (stream_in.shape[0] // len(ctx.keys),) + tuple(stream_in.shape[1:])
        ctx.skip_keys = frozenset(key for key in ctx.keys if self.key_decisions[(ctx.step, key)]
                                  and self.residuals.has(key, chunk_shape, stream_in.device))
        ctx.skip = bool(ctx.skip_keys) and len(ctx.skip_keys) == len(set(ctx.keys))
        if ctx.skip:
            ctx.skip_out = stream_in + self._cached(ctx, ctx.keys, stream_in)
        else:
            ctx.stream_in = stream_in.clone()

    def confirm_first_blocks(self, ctx: CallContext, stream_mid: torch.Tensor) -> None:
        """first_blocks: the call's first blocks have run and ``stream_mid`` left them. Decides, per entry, whether
        the remaining blocks are skipped (``firstblock.py``); one host sync (the entries' changes, read at once;
        under torch.compile a graph break here). After it, ``ctx.skip`` says whether every entry skips (then
        ``ctx.skip_out`` is the last block's stream), and ``ctx.stream_in`` is what the remaining blocks' residual
        is measured from."""
        ctx.probing = False
        n = len(ctx.keys)
        probe = stream_mid - ctx.stream_in
        chunk_shape = (stream_mid.shape[0] // n,) + tuple(stream_mid.shape[1:])
        refs = [self._probe_ref.get(key) for key in ctx.keys]
        ok = [i for i, r in enumerate(refs) if r is not None and tuple(r.shape) == chunk_shape and r.device == probe.device]
        changes: list[float | None] = [None] * n
        if ok and ctx.prior:
            cur = probe if len(ok) == n else torch.cat([probe.chunk(n)[i] for i in ok])
            ref = refs[ok[0]] if len(ok) == 1 else torch.cat([refs[i] for i in ok])
            for i, v in zip(ok, relative_l1(cur, ref, len(ok)).tolist()):
                changes[i] = v
        skip = set()
        for i, key in enumerate(ctx.keys):
            k = (ctx.step, key)
            if k not in self.key_decisions:         # a 2nd call in one step (2nd-order samplers) reuses it
                self.key_decisions[k] = self.fb.decide(ctx.step, key, changes[i], ctx.prior)
            if self.key_decisions[k]:
                if self.residuals.has(key, chunk_shape, stream_mid.device):
                    skip.add(key)
                else:                               # no residual of this shape yet: it computes
                    self.fb.computed(key)
        ctx.skip_keys, ctx.probe = frozenset(skip), probe
        ctx.skip = bool(skip) and len(skip) == len(set(ctx.keys))
        if ctx.skip:
            r = ctx.residual
            if r is None or r.shape != stream_mid.shape:
                r = self._cached(ctx, ctx.keys, stream_mid)
            ctx.skip_out = stream_mid + (r if r.dtype == stream_mid.dtype else r.to(stream_mid.dtype))
            ctx.stream_in = None
        else:
            ctx.stream_in = stream_mid.clone()      # the remaining blocks may update it in place

    def _cached(self, ctx: CallContext, keys, like: torch.Tensor) -> torch.Tensor:
        """The residual a skipped ``ctx`` adds for ``keys``: the last one as it is, or extrapolated (``extrapolate``)."""
        return self.residuals.get_batch(keys, like, self._coefficients(ctx.step, ctx.sigma, keys))

    def _coefficients(self, step: int, sigma: float, entries) -> list[tuple[float, float]] | None:
        if self.config.extrapolate == "off":
            return None
        return [self.extrapolation(step, sigma, e) for e in entries]

    def extrapolation(self, step: int, sigma: float, entry: int) -> tuple[float, float]:
        """(a, b): the residual used at ``step`` / ``sigma`` for ``entry`` is ``a * last + b * previous`` (host
        floats, no device work). "step" / "sigma": first order through the last two computed residuals, by the
        distance in steps or in sigma (a = 1 + w, b = -w, w = distance from the last / distance between the two);
        "ratio": the last one times the curve's product of ratios since it was made."""
        form = self.config.extrapolate
        last, before = self.residuals.history(entry)
        if form == "off" or last is None:
            return 1.0, 0.0
        if form == "ratio":
            curve = self._curve_of(self._kind_of.get(entry, 0))
            ratio = 1.0
            for t in range(last[0] + 1, step + 1):
                ratio *= curve[t] if t < len(curve) else 1.0
            return ratio, 0.0
        if before is None:
            return 1.0, 0.0
        i, now = (0, step) if form == "step" else (1, sigma)
        span = last[i] - before[i]
        if span == 0:
            return 1.0, 0.0
        w = (now - last[i]) / span
        return 1.0 + w, -w

    def leave_blocks(self, ctx: CallContext, stream_out: torch.Tensor) -> torch.Tensor | None:
        """Note the stream leaving the last block of a computed call (``end_call`` stores the residual).
        Returns the stream to continue with when some entries of the batch take their cached residual
        instead (TeaCache, first_blocks), else None."""
        if ctx.probing:
            # first_blocks, but the block that confirms never ran in this call (another patch replaced ours for it):
            # every block computed; what it measured is not the remaining blocks' residual, so nothing is stored.
            ctx.probing = False
            return None
        # The residual now: a model may change the stream in place after its last block (Wan S2V's audio
        # injector), and the stream entering the blocks is needed no longer.
        ctx.new_residual = stream_out - ctx.stream_in
        if not ctx.skip_keys:
            ctx.stream_in = None
            return None
        self._store(ctx)
        n = len(ctx.keys)
        outs, ins = stream_out.chunk(n), ctx.stream_in.chunk(n)
        return torch.cat([outs[i] if key not in ctx.skip_keys else ins[i] + self._cached(ctx, [key], ins[i])
                          for i, key in enumerate(ctx.keys)])

    def _store(self, ctx: CallContext) -> None:
        """Store the residual of the entries that computed, and record them when calibrating."""
        ctx.stored = True
        residual = ctx.new_residual                     # leave_blocks left the residual there
        n = len(ctx.keys)
        computed = [i for i, key in enumerate(ctx.keys) if key not in ctx.skip_keys]
        keep = self._next_skips and self.tea is None
        at = (ctx.step, ctx.sigma)
        if len(computed) == n:
            self.residuals.put_batch(ctx.keys, residual, keep, at)
        else:
            res_chunks = residual.chunk(n)
            self.residuals.put_batch([ctx.keys[i] for i in computed], [res_chunks[i] for i in computed], keep, at)
        if ctx.probe is not None:                 # first_blocks: the reference their next changes are measured from
            probes = ctx.probe.chunk(n)
            for i in computed:
                self._probe_ref[ctx.keys[i]] = probes[i]
        if self.recorder is not None:
            res_chunks = residual.chunk(n)
            for i in computed:
                if ctx.own[i]:                 # the curve is the sampler's own evaluations, no extra calls
                    if ctx.input_l1 is not None:
                        self.recorder.add_input(ctx.kinds[i], ctx.step, ctx.input_l1[i])
                    self.recorder.record(ctx.keys[i], ctx.kinds[i], ctx.step, res_chunks[i])

    @staticmethod
    def entered_blocks(ctx: CallContext) -> bool:
        """Whether ``enter_blocks`` ran for this call (call it before ``end_call``)."""
        return ctx.entered

    def blocks_bypassed(self, ctx: CallContext) -> None:
        """The host ran the model, but its blocks never came through ``enter_blocks`` (a forward that
        bypasses the host's block hooks): the call computed everything, whatever was decided, and
        leaves no residual."""
        ctx.skip, ctx.skip_keys = False, frozenset()
        self.bypassed_calls += 1

    def end_call(self, ctx: CallContext) -> None:
        """After the model returned: store what the call computed, and the step's bookkeeping."""
        if not ctx.skip and ctx.new_residual is not None and not ctx.stored:
            self._store(ctx)
        # Only the sampler's own evaluations count as the step computing: an extra call of a cond (Skip Layer
        # Guidance...) that computes on a skipped step leaves the schedule as it was.
        if not ctx.skip:
            own = any(o for key, o in zip(ctx.keys, ctx.own) if key not in ctx.skip_keys)
            with self._lock:
                if own:
                    self.computed_steps.add(ctx.step)
                    if self.rule is not None and self.decisions.get(ctx.step):
                        self.rule.reset()  # a planned skip had to compute: start accumulating afresh
                if self.tea is not None:
                    for key in ctx.keys:
                        if key not in ctx.skip_keys and self.key_decisions.get((ctx.step, key)):
                            self.tea.computed(key)
        ctx.stream_in = ctx.new_residual = ctx.skip_out = ctx.residual = ctx.input_l1 = ctx.probe = None

    # -- end of run -------------------------------------------------------------------------
    @property
    def steps_seen(self) -> list[int]:
        return sorted(self.decisions)

    def summary(self) -> str:
        seen = self.steps_seen
        done = sorted(self.computed_steps)
        skipped = [s for s in seen if s not in self.computed_steps]
        speed = self.block_pass_speedup(len(done), len(skipped))
        where = f" (steps {self.offset}-{self.offset + self.run_steps - 1} of {self.num_steps})" \
            if self.run_steps != self.num_steps else ""
        bypassed = (f"; {self.bypassed_calls} model calls bypassed the block patches and computed in full"
                    if self.bypassed_calls else "")
        target = f"; {self.plan.short()}" if self.plan is not None else ""
        return (f"{self.config.method} [{self.config.label}]{where}: computed {len(done)}/{len(seen)} steps "
                f"{done}, skipped {len(skipped)} ({speed:.2f}x fewer block passes){bypassed}{target}")

    def block_pass_speedup(self, computed: int, skipped: int) -> float:
        """How many times fewer block passes than computing every step: steps / computed steps, except with
        ``first_blocks``, whose skipped steps still run the first blocks (counted when the host said how many
        blocks a call runs)."""
        if not computed:
            return 1.0
        if self.fb is None or not self.blocks:
            return (computed + skipped) / computed
        first = self.config.first_blocks.blocks
        return (computed + skipped) * self.blocks / (computed * self.blocks + skipped * first)

    def release(self) -> None:
        self._evaluations.clear()
        self._ids.clear()
        self._kind_of.clear()
        self.residuals.clear()
        self._probe_ref.clear()
        if self.fb is not None:
            self.fb.clear()
        if self.recorder is not None:
            self.recorder.clear()
        if self.tea is not None:
            outcome = self.plan
            if outcome is not None and len(self.decisions) == self.run_steps:     # a finished run teaches the next
                self.config.memo[self._memo_key] = outcome.suggested
            self.tea.clear()
