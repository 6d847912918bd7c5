"""``preset: auto`` on a model without published numbers: decided when sampling starts.

What a curve fits is known only then (the sampler and its sigmas reach the OUTER_SAMPLE wrapper, not
the node), so the node hands ``patch_model`` an ``AutoRun`` instead of a ``RunConfig``, and the wrapper
asks it for this run's config:

* it fingerprints the run: the loaded weights and the weight patches on them (``weights_fingerprint``),
  and the sampler and the exact sigmas (``schedule_fingerprint``: steps, scheduler, denoise, shift);
* a saved calibration with the same fingerprint (first the automatic name, ``auto-<model>-<weights>-<run>``,
  then any other, MagCacheCalibrate's included) gives the curve (MagCache) or the fitted polynomial
  (TeaCache), read as a whole run of exactly these steps;
* with none, the run calibrates itself (every step computed, the output that of the model without the
  node) and saves the result under the automatic name, for the next runs.

Which of these happened is the run config's ``notice``, logged at INFO when sampling starts.

Why sampler, scheduler and step count must all match: a ratio curve is what the blocks' output did
between this sampler's consecutive model calls at these sigmas. Another scheduler puts the steps at
other sigmas, another step count makes every step a different size, another sampler walks another
path (ancestral samplers re-noise, 2nd-order ones call the model twice a step). Published curves are
resampled to other step counts because nothing better exists for them; a calibration made here costs
one run that computes every step, which is what the model without a cache costs, so ``auto`` records
the exact curve instead of resampling a neighbour's. Seeds, prompts, sizes and CFG do not enter: the
magnitude ratio is a property of the model and schedule, not of the prompt (the MagCache authors
calibrate once on one prompt), and CFG's uncond curve falls back to the cond one where it is missing.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

import torch

import comfy.samplers

from ..magcache_core import MagCacheInputError, MagCacheParams, RunConfig, TeaCacheParams
from ..magcache_core.fingerprint import VERSION, Fingerprint
from ..magcache_core.storage import curves_of
from .schedule import sampler_name

log = logging.getLogger("comfyui-magcache")
AUTO_PREFIX = "auto-"
_MAX_DEPTH = 6


# -- fingerprints ------------------------------------------------------------------------------------
def weights_fingerprint(model_patcher) -> str:
    """The diffusion model's own weights (their originals where ComfyUI has patched them in place) and
    the weight patches (LoRA, merges) this ModelPatcher applies: keys, strengths and a sample of their
    tensors. Independent of whether the model is loaded, offloaded or patched right now."""
    fp = Fingerprint()
    model = model_patcher.model
    dm = model.diffusion_model
    fp.add_text(f"{type(model).__qualname__}/{type(dm).__module__}.{type(dm).__qualname__}")
    backup = getattr(model_patcher, "backup", None) or {}              # key -> (original weight, inplace)
    backup_buffers = getattr(model_patcher, "backup_buffers", None) or {}
    for name, p in dm.named_parameters():
        key = "diffusion_model." + name
        original = backup.get(key)
        fp.add_tensor(key, original.weight if original is not None else p)
    for name, b in dm.named_buffers():
        key = "diffusion_model." + name
        original = backup_buffers.get(key)
        fp.add_tensor(key, original if isinstance(original, torch.Tensor) else b)
    patches = getattr(model_patcher, "patches", None) or {}
    seen: set = set()                   # what several patches share (a LoRA file's key set) is described once
    for key in sorted(patches, key=str):
        _describe(fp, f"patch {key}", patches[key], 0, seen)
    return fp.hexdigest()


def _describe(fp: Fingerprint, path: str, obj, depth: int, seen: set) -> None:
    """A deterministic description of a weight patch: tensors sampled, numbers and strings as they are,
    objects (LoRA adapters) by their class and attributes."""
    if isinstance(obj, torch.Tensor):
        fp.add_tensor(path, obj)
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        fp.add_text(f"{path}={obj!r}")
    elif depth >= _MAX_DEPTH or id(obj) in seen:
        fp.add_text(f"{path}:{type(obj).__qualname__}")
    elif isinstance(obj, (list, tuple)):
        seen.add(id(obj))
        fp.add_text(f"{path}:{type(obj).__qualname__}[{len(obj)}]")
        for i, v in enumerate(obj):
            _describe(fp, f"{path}[{i}]", v, depth + 1, seen)
    elif isinstance(obj, dict):
        seen.add(id(obj))
        fp.add_text(f"{path}:dict[{len(obj)}]")
        for k in sorted(obj, key=repr):
            _describe(fp, f"{path}[{k!r}]", obj[k], depth + 1, seen)
    elif isinstance(obj, (set, frozenset)):       # ComfyUI's LoRA adapters of one file share one set of keys
        seen.add(id(obj))
        fp.add_text(f"{path}:set{sorted(map(repr, obj))}")
    elif callable(obj) and hasattr(obj, "__qualname__"):        # functions, classes
        fp.add_text(f"{path}:{getattr(obj, '__module__', '')}.{obj.__qualname__}")
    elif hasattr(obj, "__dict__"):
        seen.add(id(obj))
        fp.add_text(f"{path}:{type(obj).__module__}.{type(obj).__qualname__}")
        for k, v in sorted(vars(obj).items()):
            _describe(fp, f"{path}.{k}", v, depth + 1, seen)
    else:
        fp.add_text(f"{path}:{type(obj).__module__}.{type(obj).__qualname__}")


def sampler_label(sampler) -> str:
    """The sampler's ComfyUI name where it is one of ComfyUI's, else its function's name."""
    name = sampler_name(sampler, comfy.samplers.SAMPLER_NAMES)
    fn = getattr(sampler, "sampler_function", None)
    return name or getattr(fn, "__name__", None) or type(sampler).__name__


def schedule_fingerprint(sigmas: torch.Tensor, sampler) -> str:
    """The sampler (its function and options) and the exact sigmas it is given."""
    fn = getattr(sampler, "sampler_function", None)
    parts = [type(sampler).__qualname__, f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', '')}"]
    for attr in ("extra_options", "inpaint_options"):
        options = getattr(sampler, attr, None)
        if isinstance(options, dict):
            parts.append(repr(sorted((k, v) for k, v in options.items()
                                     if isinstance(v, (bool, int, float, str, type(None))))))
    h = hashlib.sha256("|".join(parts).encode())
    h.update(sigmas.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def run_fingerprint(model_patcher, sigmas: torch.Tensor, sampler) -> dict:
    """What a calibration file stores and a later run must match (every field)."""
    return {"version": VERSION, "weights": weights_fingerprint(model_patcher),
            "schedule": schedule_fingerprint(sigmas, sampler), "sampler": sampler_label(sampler),
            "steps": max(len(sigmas) - 1, 1)}


def matches(stored, fingerprint: dict) -> bool:
    return isinstance(stored, dict) and all(stored.get(k) == fingerprint[k]
                                            for k in ("version", "weights", "schedule"))


def auto_name(strategy, fingerprint: dict) -> str:
    """``auto-<model>-<12 hex of the weights>-<8 hex of the sampler and sigmas>`` (a valid calibration name)."""
    return f"{AUTO_PREFIX}{strategy.name}-{fingerprint['weights'][:12]}-{fingerprint['schedule'][:8]}"


def find_calibration(store, strategy, fingerprint: dict, name: str, aliases: dict) -> dict | None:
    """The saved calibration with this fingerprint: ``name`` first, then any other."""
    names = store.names()
    for n in ([name] if name in names else []) + [n for n in names if n != name]:
        try:
            doc = store.load(n)
        except MagCacheInputError as e:
            if n == name:
                log.warning("MagCache auto: %s; this run calibrates again", e)
            continue
        if matches(doc.get("fingerprint"), fingerprint) and aliases.get(doc["model"], doc["model"]) == strategy.name:
            return doc
    return None


# -- the run configs ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class AutoRun:
    """What MagCacheApply / TeaCacheApply decided for 'auto' on a model without published numbers;
    ``resolve`` turns it into this run's RunConfig (or None: run without the node)."""

    method: str                                  # "magcache" or "teacache"
    strategy: object
    detected: str                                # what auto-detect found, for the notice
    params: MagCacheParams | TeaCacheParams      # TeaCache: rel_l1_thresh and cap (coefficients come from the file)
    start_percent: float = 0.0
    end_percent: float = 1.0
    offload_device: torch.device | None = None
    target: object = None                        # speed target (magcache_core/target.py), passed on
    extrapolate: str = "off"                     # skipped steps (RunConfig.extrapolate), passed on
    first_blocks: object = None                  # MagCache: FirstBlockParams (RunConfig.first_blocks), passed on

    @property
    def label(self) -> str:
        return f"{self.strategy.title}, auto"

    def resolve(self, model_patcher, sigmas, sampler):
        from .magcache_nodes import CALIBRATION_ALIASES, _saver, calibration_store
        t0 = time.perf_counter()
        try:
            fingerprint = run_fingerprint(model_patcher, sigmas, sampler)
        except Exception as e:          # noqa: BLE001 - an odd weight type must not cost the image
            log.warning("MagCache auto: cannot fingerprint this model (%s: %s); this run computes every step",
                        type(e).__name__, e)
            return None, None
        seconds = time.perf_counter() - t0
        store = calibration_store()
        name = auto_name(self.strategy, fingerprint)
        doc = find_calibration(store, self.strategy, fingerprint, name, CALIBRATION_ALIASES)
        what = "curve" if self.method == "magcache" else "TeaCache coefficients"
        head = f"auto: no published {what} for {self.detected}"
        on = f"{fingerprint['sampler']}, {fingerprint['steps']} steps"
        title = self.strategy.title
        if doc is not None and self.method == "teacache" and "teacache" not in doc:
            notice = (f"{head}; calibration {doc['name']!r} of this model ({on}) has no TeaCache fit "
                      f"({doc.get('teacache_error', 'none was saved')}); this run computes every step")
            log.info("MagCache %s", notice)
            # rel_l1_thresh 0 never skips: the run is the model's own, and reports why.
            return RunConfig("teacache", TeaCacheParams(0.0), None, label=f"{title}, auto: no TeaCache fit",
                             notice=notice), None
        if doc is not None:
            notice = f"{head}; using calibration {doc['name']!r} (made on this model, {on})"
            if self.method == "magcache":
                config = RunConfig("magcache", self.params, curves_of(doc), self.start_percent, self.end_percent,
                                   self.offload_device, label=f"{title}, auto: calibration {doc['name']!r}",
                                   whole_run=True, notice=notice, target=self.target,
                                   extrapolate=self.extrapolate, first_blocks=self.first_blocks)
            else:
                p = self.params
                config = RunConfig("teacache", TeaCacheParams(p.rel_l1_thresh, tuple(doc["teacache"]["coefficients"]),
                                                              p.max_skips), None, self.start_percent,
                                   self.end_percent, self.offload_device,
                                   label=f"{title}, auto: calibration {doc['name']!r} (fitted)", whole_run=True,
                                   target=self.target, extrapolate=self.extrapolate,
                                   notice=notice)
            log.info("MagCache %s [fingerprint %.3f s]", notice, seconds)
            return config, None
        notice = f"{head}; calibrating this run (every step computed), saved as {name!r}"
        log.info("MagCache %s [fingerprint %.3f s]", notice, seconds)
        config = RunConfig("calibrate", offload_device=self.offload_device,
                           label=f"{title}, auto: calibrating {name!r}", notice=notice)
        return config, _saver(store, name, fingerprint)


@dataclass(frozen=True)
class CalibrateRun:
    """MagCacheCalibrate's run: the calibration also stores the run's fingerprint, so 'auto' finds it."""

    strategy: object
    name: str

    @property
    def label(self) -> str:
        return f"{self.strategy.title}, calibrating {self.name!r}"

    def resolve(self, model_patcher, sigmas, sampler):
        from .magcache_nodes import _saver, calibration_store
        try:
            fingerprint = run_fingerprint(model_patcher, sigmas, sampler)
        except Exception as e:          # noqa: BLE001 - saved without one: 'auto' will not find it, names do
            log.warning("MagCacheCalibrate: cannot fingerprint this model (%s: %s)", type(e).__name__, e)
            fingerprint = None
        return RunConfig("calibrate", label=self.label), _saver(calibration_store(), self.name, fingerprint)
