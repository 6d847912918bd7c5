"""How the pack hooks into ComfyUI: wrappers and block-replace patches on a cloned ModelPatcher.

* OUTER_SAMPLE wrapper: makes this run's ``RunState`` when sampling starts (finding where the
  sampler's sigmas sit in the whole schedule, see ``schedule.py``), puts it in the guider's
  (per-run) transformer_options, and drops it in ``finally`` (errors, interrupts).
* SAMPLER_SAMPLE wrapper: for such a run, the processed conds go to the sampling device once, so that
  ComfyUI's per-call copies from pageable host memory do not make every model call wait for the GPU
  (``resident_conds.py``).
* APPLY_MODEL wrapper (every ComfyUI model goes through it; several DiTs have no DIFFUSION_MODEL
  wrapper): per model call, finds the step from ``transformer_options["sigmas"]`` and the conds
  from ``["uuids"]`` / ``["cond_or_uncond"]``, and opens a call context, which travels with the
  call in the call's own transformer_options (``CALL_KEY``) to the block patches. For a model-level
  strategy (no block patches) it also does the caching, in noise-prediction space: the cached
  residual is ``(denoised - x) / sigma``, so a skipped call returns ``x - sigma * eps_cached``
  without running the model.
* Block strategies: one block-replace patch per transformer block (``patches_replace["dit"]``):
  the first block notes the image stream (and TeaCache's modulated input), a skipped call passes
  every block through and the last block returns ``stream_in + cached residual``; a computed call
  runs the blocks and the last one stores ``stream_out - stream_in``. A block patch finds the run
  in its args' transformer_options, or, where the model passes none there, in the model call the
  APPLY_MODEL wrapper has open (a context variable).

Nothing is written onto the diffusion model and no method is replaced.

ComfyUI 0.33's multi-GPU work units (``MultiGPU_WorkUnits``): OUTER_SAMPLE runs once, on the main
thread; the cond batches of each model call are spread over the devices and run at once, one worker
thread per device, each calling its device's own copy of the model (``executor.class_obj`` here) with
transformer_options of its own, merged from the one run's model_options (so every call sees the same
``Run``, wrappers and block patches). Hence nothing here keeps a "current call": each call's context is
in its own transformer_options, the shared ``RunState`` locks what the calls share, and the model a
strategy reads (TeaCache's modulated input) is the calling device's.
"""
from __future__ import annotations

import contextvars
import functools
import logging
import time
from dataclasses import dataclass

import comfy.model_patcher
import comfy.patcher_extension
import comfy.utils
import torch

from ..magcache_core import CallContext, RunConfig, RunState
from ..strategies import BlockStrategy, Strategy
from . import report, resident_conds
from .schedule import CLOCKED_SAMPLERS, drops_penultimate, locate, sampler_name, too_few_steps, unusable

KEY = "comfyui-magcache"                 # wrapper key
RUN_KEY = "comfyui_magcache_run"         # transformer_options key holding the current run
CALL_KEY = "comfyui_magcache_call"       # key in one model call's own transformer_options: that call's Call
WMP = comfy.patcher_extension.WrappersMP
log = logging.getLogger("comfyui-magcache")


@dataclass
class Run:
    """What one sampling run carries in its transformer_options."""

    state: RunState
    strategy: Strategy
    clock: "StepClock | None" = None


class StepClock:
    """The step a model call belongs to, from the sampler's own count: ComfyUI's samplers report each
    finished step ``i`` through their callback, so the next calls are step ``i + 1``. Reading the step from
    the call's sigma instead would read a GPU tensor on every call: a host sync, which stops the CPU from
    queueing a skipped step while the GPU still runs the step before. Used only for the samplers listed in
    ``schedule.CLOCKED_SAMPLERS``, whose every call sits at its step's own sigma (a test checks each, against
    the sigma); where the call's sigma is on the CPU anyway (no sync to save), it is checked on every call,
    and a disagreement switches the run back to reading sigmas."""

    def __init__(self):
        self.next = 0                  # the run's step (0 = its first) the next call belongs to
        self.trusted = True

    def step_done(self, i) -> None:
        self.next = int(i) + 1


CHECK_CLOCK_ON_CPU = True      # the CPU has no sync to save: check the clock against each call's sigma there


def clocked(sampler) -> StepClock | None:
    return StepClock() if sampler_name(sampler, CLOCKED_SAMPLERS) is not None else None


def _with_callback(clock: StepClock, args, kwargs):
    """outer_sample's arguments with its callback (6th) wrapped so that it also advances ``clock``."""
    args = list(args)
    user = args[5] if len(args) > 5 else kwargs.get("callback")

    def callback(step, *rest, **kw):
        clock.step_done(step)
        if user is not None:
            return user(step, *rest, **kw)

    if len(args) > 5:
        args[5] = callback
    else:
        kwargs = {**kwargs, "callback": callback}
    return tuple(args), kwargs


@dataclass
class Call:
    """What one model call carries in its own transformer_options, down to the block patches."""

    run: Run
    ctx: CallContext
    diffusion_model: object              # the model this call runs (each device has its own)


# The model call in progress in this thread, for block patches whose args carry no transformer_options
# (Hunyuan-DiT, Hunyuan3D 2.1, SeedVR2 pass only the block's own inputs). Each thread (each device under
# multi-GPU work units) has its own value.
_CALL: contextvars.ContextVar["Call | None"] = contextvars.ContextVar("comfyui_magcache_call", default=None)


def patch_model(model, strategy: Strategy, config, on_success=None, reporter: report.Reporter | None = None,
                min_steps: int = 0):
    """A clone of ``model`` that runs ``config``; ``model`` itself is left as it was. ``config`` is a RunConfig,
    or an object whose ``resolve(model_patcher, sigmas, sampler)`` gives (RunConfig or None, on_success) when
    sampling starts (``auto.py``: 'auto' without published numbers); None samples as if the node were not there.
    ``on_success(state, strategy)`` runs after a finished sampling and may return details for the run's report
    (``report.py``), which goes to ``reporter``'s node. A run whose whole schedule has fewer than ``min_steps``
    steps computes every step (``schedule.too_few_steps``; 0: no minimum)."""
    m = model.clone()
    for wrapper_type in (WMP.OUTER_SAMPLE, WMP.SAMPLER_SAMPLE, WMP.APPLY_MODEL, WMP.DIFFUSION_MODEL):
        m.remove_wrappers_with_key(wrapper_type, KEY)      # re-applying replaces, never stacks
    m.add_wrapper_with_key(WMP.OUTER_SAMPLE, KEY, functools.partial(_outer_sample, config, strategy, on_success, reporter,
                                                                  min_steps=min_steps))
    m.add_wrapper_with_key(WMP.SAMPLER_SAMPLE, KEY, _sampler_sample)
    m.add_wrapper_with_key(WMP.APPLY_MODEL, KEY, _apply_model)
    existing = m.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    # Our own block patches from an earlier apply: unwrap them back to what they wrapped.
    for key, patch in list(existing.items()):
        if isinstance(patch, BlockPatch):
            if patch.prev is not None:
                m.set_model_patch_replace(patch.prev, "dit", key[0], key[1])
            else:
                del m.model_options["transformer_options"]["patches_replace"]["dit"][key]
    if isinstance(strategy, BlockStrategy):
        existing = m.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
        last = len(strategy.block_keys) - 1
        dm = m.model.diffusion_model
        for i, key in enumerate(strategy.block_keys):
            patch = BlockPatch(key, i == 0, i == last, existing.get(key), strategy.original_block(dm, key), index=i)
            m.set_model_patch_replace(patch, "dit", key[0], key[1])
    return m


def _outer_sample(config: RunConfig, strategy: Strategy, on_success, reporter, executor, *args, min_steps: int = 0,
                  **kwargs):
    started = time.perf_counter()
    guider = executor.class_obj
    sigmas = args[3] if len(args) > 3 else kwargs["sigmas"]
    sampler = args[2] if len(args) > 2 else kwargs.get("sampler")
    if not isinstance(config, RunConfig):        # decided now that the sampler and sigmas are known
        config, on_success = config.resolve(guider.model_patcher, sigmas, sampler)
        if config is None:
            return executor(*args, **kwargs)
    calibrating = config.method == "calibrate"
    reason = unusable(sigmas, sampler, calibrating)
    if reason is not None:          # known before sampling: say so, and sample as if the node were not there
        log.warning("%s [%s]: %s; this run %s", report.TITLES[config.method], config.label, reason,
                    "is not calibrated, nothing is saved" if calibrating else "computes every step")
        report.run_unusable(reporter, config, reason)
        return executor(*args, **kwargs)
    # The model sampling this run will use: object patches (ModelSamplingSD3/Flux...) are applied only when
    # the model loads, after this wrapper, so the model's own attribute can still be the unpatched one.
    ms = guider.model_patcher.get_model_object("model_sampling")
    window = (float("inf") if config.start_percent <= 0 else float(ms.percent_to_sigma(config.start_percent)),
              float("-inf") if config.end_percent >= 1 else float(ms.percent_to_sigma(config.end_percent)))
    offset, total = (0, len(sigmas) - 1) if calibrating or config.whole_run else locate(ms, sigmas, drops_penultimate(sampler))
    few = None if calibrating else too_few_steps(total, min_steps)
    if few is not None:             # a few-step schedule: say so, and sample as if the node were not there
        log.warning("%s [%s]: %s; this run computes every step", report.TITLES[config.method], config.label, few)
        report.run_unusable(reporter, config, few)
        return executor(*args, **kwargs)
    progress = None
    if config.method == "calibrate":
        bar = comfy.utils.ProgressBar(max(len(sigmas) - 1, 1))
        progress = lambda step, total: bar.update_absolute(step + 1, total)  # noqa: E731
    state = RunState(config, sigmas.tolist(), window, on_new_step=progress, offset=offset, total_steps=total,
                     record_indicator=strategy.supports_teacache,
                     blocks=len(strategy.block_keys) if isinstance(strategy, BlockStrategy) else None)
    run = Run(state, strategy, clocked(sampler))
    if run.clock is not None:                   # the sampler tells each finished step through its callback
        args, kwargs = _with_callback(run.clock, args, kwargs)
    orig_options = guider.model_options
    guider.model_options = comfy.model_patcher.create_model_options_clone(orig_options)
    guider.model_options.setdefault("transformer_options", {})[RUN_KEY] = run
    finished, details = False, None
    try:
        out = executor(*args, **kwargs)
        finished = True
        if on_success is not None:
            try:
                details = on_success(state, strategy)
            except Exception as e:      # noqa: BLE001 - the sampled image is worth more than the record
                details = {"notices": [f"not saved: {e}"]}
        return out
    finally:
        guider.model_options = orig_options
        report.run_ended(reporter, state, started, finished, details)      # the log line, and the node's report
        state.release()


def _sampler_sample(executor, guider, *args, **kwargs):
    """Sampling itself, after ComfyUI has processed the conds: for a run the pack caches, the conds go to the
    sampling device once, here, instead of from pageable host memory in every model call
    (``resident_conds.py`` says why). The guider gets its own conds back when sampling ends."""
    # SAMPLER_SAMPLE's arguments: guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask, ...
    extra_args = args[1] if len(args) > 1 else kwargs.get("extra_args") or {}
    noise = args[3] if len(args) > 3 else kwargs.get("noise")
    options = extra_args.get("model_options", {}).get("transformer_options", {})
    conds = getattr(guider, "conds", None)
    if RUN_KEY not in options or not isinstance(conds, dict) or not isinstance(noise, torch.Tensor):
        return executor(guider, *args, **kwargs)        # not a run the pack caches: as ComfyUI does it
    with resident_conds.resident(guider, noise.device):
        return executor(guider, *args, **kwargs)


def _transformer_options(args, kwargs) -> dict | None:
    """BaseModel.apply_model passes transformer_options positionally (after control); accept both."""
    to = kwargs.get("transformer_options")
    if isinstance(to, dict):
        return to
    return next((a for a in args if isinstance(a, dict) and "cond_or_uncond" in a), None)


def _apply_model(executor, x, t, *args, **kwargs):
    to = _transformer_options(args, kwargs)
    run: Run | None = to.get(RUN_KEY) if isinstance(to, dict) else None
    if run is None:
        return executor(x, t, *args, **kwargs)
    kinds = list(to.get("cond_or_uncond") or [0])
    keys = list(to.get("uuids") or [])
    if len(keys) != len(kinds):
        keys = [None] * len(kinds)       # no ids: a cond is then told apart by its role and evaluation only
    state = run.state
    sigma, step = _step_of(run, t)
    ctx = state.begin_call(sigma, keys, kinds, device=x.device, step=step)
    dm = getattr(executor.class_obj, "diffusion_model", None)
    # Under ComfyUI's torch.compile wrapper this is the compiled module; the strategies read the model's own.
    call = Call(run, ctx, getattr(dm, "_orig_mod", dm))
    outer = to.get(CALL_KEY)
    to[CALL_KEY] = call                  # this call's dict (ComfyUI makes one per call, and per thread)
    token = _CALL.set(call)              # for block patches whose args carry no transformer_options
    try:
        if run.strategy.level == "model":
            return _model_level_call(call, executor, x, t, args, kwargs)
        out = executor(x, t, *args, **kwargs)
        if not state.entered_blocks(ctx):
            # The forward never reached our block patches (causal Wan's ar_video sampler calls its blocks
            # directly): it computed in full; nothing is cached from it or skipped in it.
            if not state.bypassed_calls:
                log.warning("MagCache: %s ran without going through its block patches: those calls are not "
                            "cached (nor calibrated)", run.strategy.title)
            state.blocks_bypassed(ctx)
        return out
    finally:
        _CALL.reset(token)
        if outer is None:
            to.pop(CALL_KEY, None)
        else:
            to[CALL_KEY] = outer
        state.end_call(ctx)


def _step_of(run: Run, t) -> tuple[float | None, int | None]:
    """(sigma, None), or (None, step) from the run's clock without reading the device."""
    clock = run.clock
    if clock is None or not clock.trusted:
        return float(t.flatten()[0]), None
    step = run.state.offset + clock.next
    if CHECK_CLOCK_ON_CPU and t.device.type == "cpu":      # free to check here
        sigma = float(t.flatten()[0])
        if run.state.step_index(sigma) != min(step, run.state.offset + run.state.run_steps - 1):
            clock.trusted = False
            log.warning("MagCache: this sampler's calls do not follow its step callbacks; the run reads each "
                        "call's sigma instead")
            return sigma, None
    return None, step


def _model_level_call(call: Call, executor, x, sigma, args, kwargs):
    """Cache the whole model in noise-prediction space: residual (denoised - x) / sigma."""
    run, ctx = call.run, call.ctx
    s = sigma.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    modulated = None
    if run.state.needs_modulated_input:
        base = executor.class_obj
        modulated = run.strategy.model_indicator(call.diffusion_model, x, base.model_sampling.timestep(sigma).float())
    run.state.enter_blocks(ctx, x / s, modulated)
    if ctx.skip:
        return ctx.skip_out * s
    denoised = executor(x, sigma, *args, **kwargs)
    mixed = run.state.leave_blocks(ctx, denoised / s)
    return denoised if mixed is None else mixed * s


class BlockPatch:
    """The replace patch for one block; ``prev`` is a patch that was there before ours; ``original``, where
    the strategy gives one, stands in for the model's ``extra["original_block"]`` (BlockStrategy.original_block)."""

    def __init__(self, key, first: bool, last: bool, prev=None, original=None, index: int = 0):
        self.key, self.first, self.last, self.prev, self.original = key, first, last, prev, original
        self.index = index                 # the block's place in the strategy's block_keys (first_blocks confirms after N - 1)

    def _compute(self, args, extra):
        if self.original is not None:
            extra = {**extra, "original_block": self.original}
        return self.prev(args, extra) if self.prev is not None else extra["original_block"](args)

    def to(self, device_or_dtype):
        """ComfyUI moves block patches that have ``to`` to the load device, and under multi-GPU work
        units to each call's device: pass that on to the patch this one wraps (never in place)."""
        moved = self.prev.to(device_or_dtype) if hasattr(self.prev, "to") else self.prev
        return self if moved is self.prev else BlockPatch(self.key, self.first, self.last, moved, self.original,
                                                          index=self.index)

    def __call__(self, args, extra):
        # Inside the model's forward (compiled under torch.compile): plain attribute reads and branches on
        # what the call decided before the model ran; the bookkeeping waits for the end of the call.
        to = args.get("transformer_options")
        call: Call | None = to.get(CALL_KEY) if to is not None else None
        if call is None:
            call = _CALL.get()
            if call is None:               # not inside a patched run's model call
                return self._compute(args, extra)
        ctx = call.ctx
        if self.first:
            run = call.run
            s, state = run.strategy, run.state
            modulated = s.modulated_input(call.diffusion_model, args) if state.needs_modulated_input else None
            state.enter_blocks(ctx, s.stream_in(self.key, args), modulated)
        elif not ctx.entered:
            # Our first block's patch did not run in this call: another patch replaced it for this call only
            # (Skip Layer Guidance on block 0). The blocks compute as they would without the pack.
            return self._compute(args, extra)
        if ctx.skip:                       # every block passes through; the last returns input + residual
            s = call.run.strategy
            if self.last:
                return s.with_stream(self.key, args, ctx.skip_out)
            # The stream goes on as it came (no copy): whatever a model adds to it between skipped blocks
            # (VACE hints, in place) is dropped with it at the last block, which returns skip_out, made before.
            return s.passthrough(self.key, args)
        out = self._compute(args, extra)
        if ctx.probing and self.index == call.run.state.config.first_blocks.blocks - 1:
            # first_blocks: the first N blocks have run; the remaining ones are skipped if the content confirms.
            # What they pass on is this block's output as it is; on a skip the last block returns skip_out.
            s = call.run.strategy
            call.run.state.confirm_first_blocks(ctx, s.stream_out(self.key, out, ctx.stream_in.shape[1]))
        if self.last:
            s = call.run.strategy
            mixed = call.run.state.leave_blocks(ctx, s.stream_out(self.key, out, ctx.stream_in.shape[1]))
            if mixed is not None:          # some conds of this batch take their cached residual
                return s.with_stream(self.key, out, mixed)
        return out
