"""How the pack hooks into ComfyUI: wrappers and block-replace patches on a cloned ModelPatcher.

* OUTER_SAMPLE wrapper: makes this run's ``RunState`` when sampling starts, puts it in the
  guider's (per-run) transformer_options, and drops it in ``finally`` (errors, interrupts).
* DIFFUSION_MODEL wrapper: per model call, finds the step from ``transformer_options["sigmas"]``
  and the conds from ``["uuids"]`` / ``["cond_or_uncond"]``, and opens a call context.
* One block-replace patch per transformer block (``patches_replace["dit"]``): the first block
  notes the residual stream, a skipped call passes every block through and the last block
  returns ``stream_in + cached residual``; a computed call runs the blocks and the last one
  stores ``stream_out - stream_in``. Embeddings and the final layer run on every call.

Nothing is written onto the diffusion model and no method is replaced.
"""
from __future__ import annotations

import functools
import logging

import comfy.model_patcher
import comfy.patcher_extension
import comfy.utils

from ..magcache_core import RunConfig, RunState
from ..strategies import Strategy

KEY = "comfyui-magcache"                 # wrapper key
RUN_KEY = "comfyui_magcache_run"         # transformer_options key holding the current RunState
WMP = comfy.patcher_extension.WrappersMP
log = logging.getLogger("comfyui-magcache")


def patch_model(model, strategy: Strategy, config: RunConfig, on_success=None):
    """A clone of ``model`` that runs ``config``; ``model`` itself is left as it was."""
    m = model.clone()
    for wrapper_type in (WMP.OUTER_SAMPLE, WMP.DIFFUSION_MODEL):
        m.remove_wrappers_with_key(wrapper_type, KEY)      # re-applying replaces, never stacks
    m.add_wrapper_with_key(WMP.OUTER_SAMPLE, KEY, functools.partial(_outer_sample, config, strategy, on_success))
    m.add_wrapper_with_key(WMP.DIFFUSION_MODEL, KEY, _diffusion_model)
    existing = m.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    last = len(strategy.block_keys) - 1
    for i, key in enumerate(strategy.block_keys):
        prev = existing.get(key)
        if isinstance(prev, BlockPatch):
            prev = prev.prev                                 # our own older patch: keep what it wrapped
        m.set_model_patch_replace(BlockPatch(strategy, key, i == 0, i == last, prev), "dit", key[0], key[1])
    return m


def _outer_sample(config: RunConfig, strategy: Strategy, on_success, executor, *args, **kwargs):
    guider = executor.class_obj
    sigmas = args[3] if len(args) > 3 else kwargs["sigmas"]
    ms = guider.model_patcher.model.model_sampling
    window = (float("inf") if config.start_percent <= 0 else float(ms.percent_to_sigma(config.start_percent)),
              float("-inf") if config.end_percent >= 1 else float(ms.percent_to_sigma(config.end_percent)))
    progress = None
    if config.method == "calibrate":
        bar = comfy.utils.ProgressBar(max(len(sigmas) - 1, 1))
        progress = lambda step, total: bar.update_absolute(step + 1, total)  # noqa: E731
    run = RunState(config, sigmas.tolist(), window, on_new_step=progress)
    orig_options = guider.model_options
    guider.model_options = comfy.model_patcher.create_model_options_clone(orig_options)
    guider.model_options.setdefault("transformer_options", {})[RUN_KEY] = run
    finished = False
    try:
        out = executor(*args, **kwargs)
        finished = True
        if on_success is not None:
            on_success(run, strategy)
        return out
    finally:
        guider.model_options = orig_options
        log.info("MagCache %s%s", run.summary(), "" if finished else " (sampling stopped early)")
        run.release()


def _transformer_options(args, kwargs) -> dict | None:
    to = kwargs.get("transformer_options")
    if isinstance(to, dict):
        return to
    for a in reversed(args):
        if isinstance(a, dict) and "cond_or_uncond" in a:
            return a
    return None


def _diffusion_model(executor, *args, **kwargs):
    to = _transformer_options(args, kwargs)
    run: RunState | None = to.get(RUN_KEY) if to else None
    if run is None or to.get("sigmas") is None:
        return executor(*args, **kwargs)
    kinds = list(to.get("cond_or_uncond") or [0])
    keys = list(to.get("uuids") or [])
    if len(keys) != len(kinds) or None in keys:
        keys = kinds
    ctx = run.begin_call(float(to["sigmas"][0]), keys, kinds)
    try:
        return executor(*args, **kwargs)
    finally:
        run.end_call(ctx)


class BlockPatch:
    """The replace patch for one block; ``prev`` is a patch that was there before ours."""

    def __init__(self, strategy: Strategy, key, first: bool, last: bool, prev=None):
        self.strategy, self.key, self.first, self.last, self.prev = strategy, key, first, last, prev

    def _compute(self, args, extra):
        return self.prev(args, extra) if self.prev is not None else extra["original_block"](args)

    def __call__(self, args, extra):
        run: RunState | None = (args.get("transformer_options") or {}).get(RUN_KEY)
        ctx = run.current if run is not None else None
        if ctx is None:
            return self._compute(args, extra)
        s = self.strategy
        if self.first:
            run.enter_blocks(ctx, s.stream_in(self.key, args))
        if ctx.skip:                       # every block passes through; the last returns input + residual
            return s.with_stream(self.key, args, ctx.skip_out) if self.last else s.passthrough(self.key, args)
        out = self._compute(args, extra)
        if self.last:
            run.leave_blocks(ctx, s.stream_out(self.key, out, ctx.stream_in.shape[1]))
        return out
