"""How the API hooks a diffusers transformer, and the run it drives. Imports diffusers (the only module that does).

* The transformer itself: a torch forward pre-hook and an always-called forward hook. Per call, the pre-hook
  reads the timestep, finds the step in the scheduler's timesteps, names the cond (diffusers' ``cache_context``
  name, else the n-th call at this timestep) and opens the call in ``magcache_core.RunState``; the forward hook
  closes it, also when the forward raised.
* The blocks: one ``diffusers.hooks.ModelHook`` per block, through each block's ``HookRegistry``. The first block
  hands its image stream (and TeaCache's indicator) to the run, which decides; on a skipped call every block
  returns its inputs and the last returns input + cached residual; on a computed call the last stores its residual.
  The first block's hook is stateful: it holds the ``StateManager`` through which diffusers' ``cache_context``
  reaches hooks, and ``reset_state`` (a pipeline calls it when it finishes, ``maybe_free_model_hooks``) ends the run.

A run (one ``RunState``) lives from the first call of a schedule to the end of the pipeline, or to the first call
of the next schedule (the scheduler's timesteps replaced by ``set_timesteps``, or a step earlier than the last),
or to ``remove()``. ``remove()`` takes every hook away and restores the attributes the registries added, so the
transformer is as it was before ``apply``.
"""
from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass, field

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from ..magcache_core import COND, UNCOND, MagCacheInputError, RunConfig, RunState
from ..magcache_core.storage import CalibrationStore, save_calibration
from .architectures import Architecture, argument_positions

log = logging.getLogger("comfyui-magcache")
HOOK_NAME = "comfyui_magcache"
CONTEXT_KINDS = {"cond": COND, "uncond": UNCOND, "pred_cond": COND, "pred_uncond": UNCOND}   # pipelines, modular guiders
TITLES = {"magcache": "MagCache", "teacache": "TeaCache", "calibrate": "MagCache calibration"}


@dataclass(frozen=True)
class RunReport:
    """One finished run: the steps it saw and those whose blocks computed (the rest were skipped)."""

    steps: list[int]
    computed: list[int]
    summary: str
    saved: str | None = None          # calibrate: the file written
    notice: str = ""                  # calibrate: why nothing was saved

    @property
    def skipped(self) -> list[int]:
        return [s for s in self.steps if s not in self.computed]


@dataclass
class _Run:
    state: RunState
    schedule: list[float]             # the distinct timesteps, in order: step i is schedule[i]
    source: torch.Tensor              # the timesteps they were read from (new ones: a new pipeline call)
    values: torch.Tensor              # the distinct timesteps in their own dtype
    passed: dict = field(default_factory=dict)      # dtype -> {timestep as the transformer gets it: its steps}
    last_step: int = -1
    calls_at: dict = field(default_factory=dict)    # timestep -> calls without a context name so far
    names: dict = field(default_factory=dict)       # other context names -> kind (2, 3, ...)


class _NoState(BaseState):
    def reset(self, *args, **kwargs):
        pass


class _BlockHook(ModelHook):
    """One block's hook. Stateful only on the first block (it receives the cache context and the pipeline's reset)."""

    def __init__(self, handle: "CacheHandle", first: bool, last: bool):
        super().__init__()
        self.handle, self.first, self.last = handle, first, last
        self._is_stateful = first
        if first:
            self.context = StateManager(_NoState)    # diffusers' cache_context sets the call's name here

    def reset_state(self, module):
        self.handle._end_run()
        return module

    @torch.compiler.disable
    def new_forward(self, module, *args, **kwargs):
        h = self.handle
        ctx = h._call
        if ctx is None:                  # not inside a call of the hooked transformer
            return self.fn_ref.original_forward(*args, **kwargs)
        state = h._run.state

        def arg(name):
            return kwargs[name] if name in kwargs else args[h._block_args[type(module)][name]]
        if self.first:
            modulated = h.arch.modulated(module, arg) if state.needs_modulated_input else None
            state.enter_blocks(ctx, arg("hidden_states"), modulated)
        if ctx.skip:                     # every block passes its inputs on; the last returns input + residual
            hidden = ctx.skip_out if self.last else arg("hidden_states")
            return (arg("encoder_hidden_states"), hidden) if h.arch.returns_encoder else hidden
        out = self.fn_ref.original_forward(*args, **kwargs)
        if self.last:
            mixed = state.leave_blocks(ctx, out[1] if h.arch.returns_encoder else out)
            if mixed is not None:        # TeaCache: some conds of this batch take their cached residual
                out = (out[0], mixed) if h.arch.returns_encoder else mixed
        return out


class CacheHandle:
    """What ``apply_magcache`` / ``apply_teacache`` / ``calibrate`` return: ``remove()`` (or leaving a ``with``
    block) takes the cache off; ``runs`` has one ``RunReport`` per finished run, ``last_run`` the latest."""

    def __init__(self, transformer, arch: Architecture, config: RunConfig, scheduler, batched_cfg: bool,
                 store: CalibrationStore | None = None, name: str | None = None):
        self.transformer, self.arch, self.config = transformer, arch, config
        self.method = config.method
        self._scheduler, self._batched_cfg = scheduler, batched_cfg
        self._store, self._name = store, name
        self.runs: list[RunReport] = []
        self._run: _Run | None = None
        self._call = None
        blocks = [b for attr in arch.block_lists for b in getattr(transformer, attr)]
        if not blocks:
            raise MagCacheInputError("transformer", f"this {arch.class_name} has no transformer blocks")
        self._block_args = {type(b): argument_positions(type(b).forward, ("hidden_states", "encoder_hidden_states", "temb"))
                            for b in blocks}
        self._timestep_at = argument_positions(type(transformer).forward, ("timestep",)).get("timestep")
        self._restore, self._torch_hooks = [], []
        try:
            for i, block in enumerate(blocks):
                hook = _BlockHook(self, i == 0, i == len(blocks) - 1)
                self._restore.append(_register(block, hook))
            self._head = self._restore[0][2]
            self._torch_hooks = [
                transformer.register_forward_pre_hook(self._before, with_kwargs=True),
                transformer.register_forward_hook(self._after, with_kwargs=True, always_call=True)]
        except BaseException:
            self._detach()
            raise
        _refresh_context_targets(transformer)

    # -- the public side ------------------------------------------------------------------------------
    @property
    def last_run(self) -> RunReport | None:
        return self.runs[-1] if self.runs else None

    @property
    def active(self) -> bool:
        return bool(self._torch_hooks)

    def remove(self) -> None:
        """End the run in progress (a calibration saves if it is complete) and take every hook away."""
        if not self.active:
            return
        try:
            self._end_run()
        finally:
            self._detach()

    def __enter__(self) -> "CacheHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"<{TITLES[self.method]} on {self.arch.class_name}, {self.config.label}: {state}, {len(self.runs)} runs>"

    # -- per transformer call -------------------------------------------------------------------------
    def _before(self, module, args, kwargs):
        t = kwargs.get("timestep")
        if t is None and self._timestep_at is not None and len(args) > self._timestep_at:
            t = args[self._timestep_at]
        if t is None:
            raise MagCacheInputError("timestep", f"{self.arch.class_name} was called without a timestep")
        t = torch.as_tensor(t).flatten().max()        # Wan 2.2 TI2V passes one per token, 0 on kept frames
        run = self._run_for(self._timesteps())
        step = self._locate(run, t)
        if step < run.last_step:         # the schedule started again: a new run
            self._end_run()
            run = self._run_for(run.source)
            step = self._locate(run, t)
        run.last_step = step
        sigma = run.schedule[step]
        if self._batched_cfg:            # diffusers' batched CFG: torch.cat([negative, positive])
            keys, kinds = [None, None], [UNCOND, COND]
        else:
            name = self._context_name()
            if name is None:
                kind = run.calls_at.get(sigma, 0)
                run.calls_at[sigma] = kind + 1
            else:
                kind = CONTEXT_KINDS.get(name)
                if kind is None:
                    kind = run.names.setdefault(name, 2 + len(run.names))
            keys, kinds = [None], [kind]
        x = kwargs.get("hidden_states", args[0] if args else None)
        # The device: on a step that skips, the run gathers the cached residuals for it before the model runs.
        self._call = run.state.begin_call(sigma, keys, kinds, device=getattr(x, "device", None))

    def _after(self, module, args, kwargs, output):
        ctx, self._call = self._call, None
        if ctx is None or self._run is None:
            return None
        state = self._run.state
        if output is not None and not state.entered_blocks(ctx):
            state.blocks_bypassed(ctx)
        state.end_call(ctx)
        return None

    def _context_name(self) -> str | None:
        try:
            return self._head.context.context.name     # set by the pipeline's cache_context("cond" / "uncond")
        except ValueError:                            # no cache_context around this call
            return None

    def _timesteps(self) -> torch.Tensor:
        """The schedule's timesteps: the scheduler's as they are now (a pipeline call sets new ones), or the fixed ones."""
        if isinstance(self._scheduler, torch.Tensor):
            return self._scheduler
        ts = self._scheduler.timesteps
        if ts is None or len(ts) == 0:
            raise MagCacheInputError("scheduler", f"{type(self._scheduler).__name__} has no timesteps yet; pass the "
                                                  "scheduler the pipeline sets them on (scheduler=pipe.scheduler)")
        return ts

    def _run_for(self, ts: torch.Tensor) -> _Run:
        """The run of the schedule ``ts``: the one in progress, or a new one (ending the other)."""
        if self._run is not None and self._run.source is ts:
            return self._run
        self._end_run()
        values = torch.as_tensor(ts).flatten()
        keep = torch.ones(len(values), dtype=torch.bool)
        keep[1:] = values[1:] != values[:-1]         # 2nd-order schedulers list a step's timestep twice in a row
        values = values[keep]
        schedule = [float(v) for v in values.tolist()]
        if any(a <= b for a, b in zip(schedule, schedule[1:])):
            raise MagCacheInputError("scheduler", f"{type(self._scheduler).__name__}'s timesteps do not fall step by "
                                                  "step; the cache needs a denoising schedule")
        state = RunState(self.config, schedule + [schedule[-1] - 1.0], record_indicator=self.arch.modulated is not None)
        self._run = _Run(state, schedule, ts, values)
        return self._run

    def _scheduler_position(self, run: _Run) -> int | None:
        """The step the scheduler is at (its ``step_index``; before its first step, ``begin_index`` or 0), where
        its timesteps are one per step; else None."""
        if isinstance(self._scheduler, torch.Tensor) or len(run.values) != len(run.source):
            return None
        at = getattr(self._scheduler, "step_index", None)
        return at if at is not None else getattr(self._scheduler, "begin_index", None) or 0

    def _locate(self, run: _Run, t: torch.Tensor) -> int:
        """The step whose timestep the transformer was given: the step whose timestep, cast to the input's dtype
        and scaled as the pipelines pass it (FLUX: ``t.to(latents.dtype) / 1000``), equals it; where several do
        (bfloat16 at 100 steps), the scheduler's own position, else the current step or the next. Failing that (a loop that computes its own inputs),
        the nearest timestep if it lies within rounding or half a step of it."""
        passed = run.passed.get(t.dtype)
        if passed is None:
            cast = run.values.to(t.dtype)
            scale = self.arch.timestep_scale
            passed = run.passed[t.dtype] = {}
            for i, v in enumerate((cast / scale if scale != 1 else cast).float().tolist()):
                passed.setdefault(v, []).append(i)
        value = float(t)
        hits = passed.get(value, [])
        if len(hits) > 1:                # neighbouring steps the dtype cannot tell apart: ask the scheduler
            at = self._scheduler_position(run)
            if at in hits:
                return at
        if hits:
            return run.last_step if run.last_step in hits else next((i for i in hits if i > run.last_step), hits[0])
        step = _nearest(run.schedule, value * self.arch.timestep_scale)
        if step is None:
            raise MagCacheInputError("scheduler", f"{self.arch.class_name} was called at timestep {value:g}, which is "
                                                  f"not among the scheduler's timesteps ({run.schedule[0]:g} ... "
                                                  f"{run.schedule[-1]:g}, {len(run.schedule)} steps, x "
                                                  f"1/{self.arch.timestep_scale:g} as {self.arch.class_name} takes "
                                                  "them): pass the scheduler that drives this pipeline "
                                                  "(scheduler=pipe.scheduler)")
        return step

    # -- end of a run ---------------------------------------------------------------------------------
    def _end_run(self) -> None:
        run, self._run = self._run, None
        self._call = None
        if run is None:
            return
        state = run.state
        try:
            saved, notice = (self._save(state) if self.method == "calibrate" else (None, ""))
            report = RunReport(state.steps_seen, sorted(state.computed_steps), state.summary(), saved, notice)
        finally:
            state.release()
        self.runs.append(report)
        log.info("%s [%s]: %s%s", TITLES[self.method], self.arch.class_name, report.summary,
                 f"; saved {saved}" if saved else "")

    def _save(self, state: RunState) -> tuple[str | None, str]:
        stats = state.recorder.result()
        missing = set(range(state.num_steps)) - set(state.steps_seen)
        why = ""
        if not stats:
            why = "no residual was recorded"
        elif missing:
            why = (f"the run saw {state.num_steps - len(missing)} of the schedule's {state.num_steps} steps (stopped "
                   "early, or a pipeline that runs part of the schedule); calibrate on a whole run")
        if not why:
            try:
                path, _, tea = save_calibration(self._store, self._name, self.arch.strategy.name,
                                                self.arch.strategy.residual, state.num_steps, stats,
                                                self.arch.modulated is not None)
                log.info("MagCache calibration [%s]: saved %r (%d steps%s) to %s", self.arch.class_name, self._name,
                         state.num_steps, tea, path)
                return path, ""
            except (RuntimeError, OSError, MagCacheInputError) as e:
                why = str(e)
        log.warning("MagCache calibration [%s]: not saved: %s", self.arch.class_name, why)
        return None, f"not saved: {why}"

    def _detach(self) -> None:
        self._run = self._call = None
        for h in self._torch_hooks:
            h.remove()
        self._torch_hooks = []
        for restore in reversed(self._restore):
            _unregister(*restore)
        self._restore = []
        _refresh_context_targets(self.transformer)


def _nearest(schedule: list[float], t: float) -> int | None:
    """Index of the timestep nearest ``t`` in the falling schedule, if ``t`` is within rounding of it or within
    half the gap to its neighbour; else None."""
    i = bisect.bisect_left([-v for v in schedule], -t)
    best = min((j for j in (i - 1, i) if 0 <= j < len(schedule)), key=lambda j: abs(schedule[j] - t))
    gaps = [abs(schedule[j] - schedule[best]) for j in (best - 1, best + 1) if 0 <= j < len(schedule)]
    diff = abs(schedule[best] - t)
    return best if diff <= 2 ** -7 * max(1.0, abs(schedule[best])) or (gaps and diff <= 0.5 * min(gaps)) else None


def _register(block, hook) -> tuple:
    """Register ``hook`` in ``block``'s HookRegistry; returns what ``_unregister`` needs to restore the block."""
    had = {k: k in block.__dict__ for k in ("_diffusers_hook", "forward")}
    registry = HookRegistry.check_if_exists_or_initialize(block)
    if registry.get_hook(HOOK_NAME) is not None:
        raise MagCacheInputError("transformer", "already has a comfyui-magcache cache: remove() the handle the "
                                                "first apply returned (or apply inside a `with` block) before another")
    registry.register_hook(hook, HOOK_NAME)
    return block, had, hook


def _unregister(block, had: dict, hook) -> None:
    registry = block.__dict__.get("_diffusers_hook")
    if registry is None:
        return
    registry.remove_hook(HOOK_NAME, recurse=False)
    if not registry.hooks:               # nothing else hooked here: drop what registering added
        for key, was_there in had.items():
            if not was_there:
                block.__dict__.pop(key, None)


def _refresh_context_targets(transformer) -> None:
    """diffusers caches, per registry, the child registries its cache_context reaches: rebuild it after hooks change."""
    registry = transformer.__dict__.get("_diffusers_hook")
    if registry is not None:
        registry.invalidate_child_registries_cache()
