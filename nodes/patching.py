"""How the pack hooks into ComfyUI: wrappers and block-replace patches on a cloned ModelPatcher.

* OUTER_SAMPLE wrapper: makes this run's ``RunState`` when sampling starts (finding where the
  sampler's sigmas sit in the whole schedule, see ``schedule.py``), puts it in the guider's
  (per-run) transformer_options, and drops it in ``finally`` (errors, interrupts).
* APPLY_MODEL wrapper (every ComfyUI model goes through it; several DiTs have no DIFFUSION_MODEL
  wrapper): per model call, finds the step from ``transformer_options["sigmas"]`` and the conds
  from ``["uuids"]`` / ``["cond_or_uncond"]``, and opens a call context. For a model-level
  strategy (no block patches) it also does the caching, in noise-prediction space: the cached
  residual is ``(denoised - x) / sigma``, so a skipped call returns ``x - sigma * eps_cached``
  without running the model.
* Block strategies: one block-replace patch per transformer block (``patches_replace["dit"]``):
  the first block notes the image stream (and TeaCache's modulated input), a skipped call passes
  every block through and the last block returns ``stream_in + cached residual``; a computed call
  runs the blocks and the last one stores ``stream_out - stream_in``.

Nothing is written onto the diffusion model and no method is replaced.
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import comfy.model_patcher
import comfy.patcher_extension
import comfy.utils

from ..magcache_core import RunConfig, RunState
from ..strategies import BlockStrategy, Strategy
from . import report
from .schedule import drops_penultimate, locate, unusable

KEY = "comfyui-magcache"                 # wrapper key
RUN_KEY = "comfyui_magcache_run"         # transformer_options key holding the current run
WMP = comfy.patcher_extension.WrappersMP
log = logging.getLogger("comfyui-magcache")


@dataclass
class Run:
    """What one sampling run carries in its transformer_options."""

    state: RunState
    strategy: Strategy
    diffusion_model: object


def patch_model(model, strategy: Strategy, config: RunConfig, on_success=None, reporter: report.Reporter | None = None):
    """A clone of ``model`` that runs ``config``; ``model`` itself is left as it was. ``on_success(state,
    strategy)`` runs after a finished sampling and may return details for the run's report (``report.py``),
    which goes to ``reporter``'s node."""
    m = model.clone()
    for wrapper_type in (WMP.OUTER_SAMPLE, WMP.APPLY_MODEL, WMP.DIFFUSION_MODEL):
        m.remove_wrappers_with_key(wrapper_type, KEY)      # re-applying replaces, never stacks
    m.add_wrapper_with_key(WMP.OUTER_SAMPLE, KEY, functools.partial(_outer_sample, config, strategy, on_success, reporter))
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
        for i, key in enumerate(strategy.block_keys):
            m.set_model_patch_replace(BlockPatch(key, i == 0, i == last, existing.get(key)), "dit", key[0], key[1])
    return m


def _outer_sample(config: RunConfig, strategy: Strategy, on_success, reporter, executor, *args, **kwargs):
    started = time.perf_counter()
    guider = executor.class_obj
    sigmas = args[3] if len(args) > 3 else kwargs["sigmas"]
    sampler = args[2] if len(args) > 2 else kwargs.get("sampler")
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
    offset, total = (0, len(sigmas) - 1) if calibrating else locate(ms, sigmas, drops_penultimate(sampler))
    progress = None
    if config.method == "calibrate":
        bar = comfy.utils.ProgressBar(max(len(sigmas) - 1, 1))
        progress = lambda step, total: bar.update_absolute(step + 1, total)  # noqa: E731
    state = RunState(config, sigmas.tolist(), window, on_new_step=progress, offset=offset, total_steps=total,
                     record_indicator=strategy.supports_teacache)
    run = Run(state, strategy, guider.model_patcher.model.diffusion_model)
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
    if len(keys) != len(kinds) or None in keys or len(set(keys)) != len(keys):
        keys = list(range(len(kinds))) if len(set(kinds)) != len(kinds) else kinds
    state = run.state
    ctx = state.begin_call(float(t.flatten()[0]), keys, kinds)
    try:
        if run.strategy.level == "model":
            return _model_level_call(run, ctx, executor, x, t, args, kwargs)
        return executor(x, t, *args, **kwargs)
    finally:
        state.end_call(ctx)


def _model_level_call(run: Run, ctx, executor, x, sigma, args, kwargs):
    """Cache the whole model in noise-prediction space: residual (denoised - x) / sigma."""
    s = sigma.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    modulated = None
    if run.state.needs_modulated_input:
        base = executor.class_obj
        modulated = run.strategy.model_indicator(run.diffusion_model, x, base.model_sampling.timestep(sigma).float())
    run.state.enter_blocks(ctx, x / s, modulated)
    if ctx.skip:
        return ctx.skip_out * s
    denoised = executor(x, sigma, *args, **kwargs)
    mixed = run.state.leave_blocks(ctx, denoised / s)
    return denoised if mixed is None else mixed * s


class BlockPatch:
    """The replace patch for one block; ``prev`` is a patch that was there before ours."""

    def __init__(self, key, first: bool, last: bool, prev=None):
        self.key, self.first, self.last, self.prev = key, first, last, prev

    def _compute(self, args, extra):
        return self.prev(args, extra) if self.prev is not None else extra["original_block"](args)

    def __call__(self, args, extra):
        run: Run | None = (args.get("transformer_options") or {}).get(RUN_KEY)
        state = run.state if run is not None else None
        ctx = state.current if state is not None else None
        if ctx is None:
            return self._compute(args, extra)
        s = run.strategy
        if self.first:
            modulated = s.modulated_input(run.diffusion_model, args) if state.needs_modulated_input else None
            state.enter_blocks(ctx, s.stream_in(self.key, args), modulated)
        if ctx.skip:                       # every block passes through; the last returns input + residual
            if self.last:
                return s.with_stream(self.key, args, ctx.skip_out)
            out = s.passthrough(self.key, args)
            if self.first:                 # a copy: models add to the stream in place between blocks (VACE
                out["img"] = out["img"].clone()    # hints), which must not reach the embedding they reuse
            return out
        out = self._compute(args, extra)
        if self.last:
            mixed = state.leave_blocks(ctx, s.stream_out(self.key, out, ctx.stream_in.shape[1]))
            if mixed is not None:          # some conds of this batch take their cached residual
                return s.with_stream(self.key, out, mixed)
        return out
