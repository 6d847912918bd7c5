"""MagCache, TeaCache and calibration on diffusers transformers, with the pack's own core and presets.

    from comfyui_magcache.diffusers_api import apply_magcache

    with apply_magcache(pipe.transformer, "flux", scheduler=pipe.scheduler) as cache:
        image = pipe(prompt, num_inference_steps=28).images[0]
    print(cache.last_run.summary)

Supported: ``FluxTransformer2DModel``, ``WanTransformer3DModel``, ``QwenImageTransformer2DModel`` (``SUPPORTED``).
The presets are the ComfyUI nodes' (``strategies/``); calibration files are the nodes' format
(``magcache_core/storage.py``), so a file made here loads in MagCacheApply / TeaCacheApply and back.

The step of each transformer call is found by locating its timestep in the scheduler's timesteps, so pipelines
that call the transformer twice per step (cond, then uncond) index correctly; each cond has its own cache entry,
named by diffusers' ``cache_context("cond" / "uncond")`` where the pipeline sets one, else by the order of the
calls at one timestep (1st = cond, 2nd = uncond). ``batched_cfg=True`` for a loop that batches
``torch.cat([uncond, cond])`` into one call.

diffusers is imported only when a cache is applied (``hooks.py``); importing this module needs neither
diffusers nor ComfyUI.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch

from ..magcache_core import (SKIPPED_DEFAULT, MagCacheInputError, MagCacheParams, RatioCurves, RunConfig, TeaCacheParams,
                             extrapolate_form)
from ..magcache_core.decision import MAX_SKIPS_MAX, THRESHOLD_MAX
from ..magcache_core.errors import number
from ..magcache_core.storage import CalibrationStore, check_name, curves_of, made_on
from ..magcache_core.teacache import REL_L1_THRESH_MAX
from ..strategies import METHOD_MAGCACHE, METHOD_TEACACHE, unknown_preset
from .architectures import SUPPORTED, Architecture, architecture_of

# Without a preset to recommend settings: the nodes' defaults.
DEFAULT_MAGCACHE = MagCacheParams(0.24, 0.2, 4)
DEFAULT_REL_L1_THRESH = 0.4

__all__ = ["SUPPORTED", "apply_magcache", "apply_teacache", "calibrate", "MagCacheInputError"]


def apply_magcache(transformer, preset: str | None = None, *, scheduler, ratios=None, calibration=None,
                   threshold: float | None = None, retention_ratio: float | None = None,
                   max_skip_steps: int | None = None, batched_cfg: bool = False, cache_device=None,
                   skipped_steps: str = SKIPPED_DEFAULT):
    """MagCache on ``transformer`` until the returned handle's ``remove()`` (or the end of its ``with`` block).

    The curve: ``preset`` (a name from ``strategies/``, e.g. "flux", "wan2.1_t2v_1.3B", "qwen_image"), or
    ``ratios`` (a list, one ratio per step, or ``{"cond": [...], "uncond": [...]}``), or ``calibration`` (the path
    of a calibration file, made by ``calibrate`` or ComfyUI's MagCacheCalibrate). ``threshold``,
    ``retention_ratio``, ``max_skip_steps`` default to the preset's recommended settings (else 0.24 / 0.2 / 4).
    ``scheduler``: the pipeline's scheduler (its timesteps are read at every run), or the list of timesteps.
    ``cache_device="cpu"`` keeps the cached residuals in CPU memory. ``skipped_steps``: "extrapolate" (the default,
    as on the nodes) adds a first-order prediction from the last two computed residuals on a skipped step (one more
    residual kept per cond); "reuse" adds the last one as it is (the authors' rule, and diffusers' own MagCache)."""
    arch = architecture_of(transformer)
    extrapolate = extrapolate_form(skipped_steps)
    schedule = _schedule(scheduler)
    curves, label, recommended = _curves(arch, preset, ratios, calibration)
    base = recommended or DEFAULT_MAGCACHE
    params = MagCacheParams(
        number("threshold", base.threshold if threshold is None else threshold, 0.0, THRESHOLD_MAX),
        number("retention_ratio", base.retention_ratio if retention_ratio is None else retention_ratio, 0.0, 1.0),
        number("max_skip_steps", base.max_skips if max_skip_steps is None else max_skip_steps, 0, MAX_SKIPS_MAX,
               integer=True))
    config = RunConfig("magcache", params, curves, offload_device=_offload(cache_device), extrapolate=extrapolate,
                       label=f"{label}, threshold {params.threshold}, retention {params.retention_ratio}, "
                             f"K {params.max_skips}")
    return _attach(transformer, arch, config, schedule, batched_cfg)


def apply_teacache(transformer, preset: str | None = None, *, scheduler, coefficients=None, calibration=None,
                   rel_l1_thresh: float | None = None, max_skip_steps: int | None = None, batched_cfg: bool = False,
                   cache_device=None, skipped_steps: str = SKIPPED_DEFAULT):
    """TeaCache on ``transformer`` (FLUX and Wan: the transformers with TeaCache's input). The polynomial:
    ``preset`` (e.g. "flux", "wan2.1_t2v_1.3B"), ``coefficients`` (highest power first), or ``calibration`` (a
    calibration file with a fitted polynomial). ``rel_l1_thresh`` defaults to the preset's (else 0.4);
    ``max_skip_steps`` caps the steps skipped in a row (None or 0: no cap). Other arguments as ``apply_magcache``."""
    arch = architecture_of(transformer)
    extrapolate = extrapolate_form(skipped_steps)
    if arch.modulated is None:
        raise MagCacheInputError("transformer", f"{arch.title} has no TeaCache input this pack reads (as in ComfyUI); "
                                                "use calibrate() + apply_magcache(calibration=...)")
    schedule = _schedule(scheduler)
    _one_of(preset=preset, coefficients=coefficients, calibration=calibration)
    thresh = DEFAULT_REL_L1_THRESH
    if preset is not None:
        chosen = _preset(arch, preset, METHOD_TEACACHE)
        poly, thresh, label = chosen.params.coefficients, chosen.params.rel_l1_thresh, f"preset {preset!r}"
    elif coefficients is not None:
        poly, label = _coefficients(coefficients, "coefficients"), "custom coefficients"
    else:
        name, doc = _load(arch, calibration)
        if "teacache" not in doc:
            raise MagCacheInputError("calibration", f"calibration {name!r} has no TeaCache polynomial "
                                                    f"({doc.get('teacache_error', 'none was fitted')})")
        poly, label = tuple(doc["teacache"]["coefficients"]), f"calibration {name!r}"
    params = TeaCacheParams(number("rel_l1_thresh", thresh if rel_l1_thresh is None else rel_l1_thresh, 0.0,
                                   REL_L1_THRESH_MAX),
                            tuple(poly),
                            number("max_skip_steps", max_skip_steps or 0, 0, MAX_SKIPS_MAX, integer=True) or None)
    config = RunConfig("teacache", params, offload_device=_offload(cache_device), extrapolate=extrapolate,
                       label=f"{label}, rel_l1_thresh {params.rel_l1_thresh}")
    return _attach(transformer, arch, config, schedule, batched_cfg)


def calibrate(transformer, path, *, scheduler, batched_cfg: bool = False):
    """Record ``transformer``'s magnitude-ratio curve (and, on FLUX and Wan, fit a TeaCache polynomial) during the
    next whole run, nothing skipped (the output is bit-identical), and save it as ``path`` (``<folder>/<name>.json``;
    copy it to ``<ComfyUI user dir>/magcache/calibrations/`` for the nodes). Saved when the pipeline finishes
    (each later run overwrites it), else at ``remove()``; ``handle.last_run.saved`` is the file, or
    ``.notice`` says why nothing was saved (a run stopped early)."""
    arch = architecture_of(transformer)
    schedule = _schedule(scheduler)
    store, name = _file("path", path)
    config = RunConfig("calibrate", label=f"saves {name!r}")
    return _attach(transformer, arch, config, schedule, batched_cfg, store, name)


# -- the inputs --------------------------------------------------------------------------------------------------
def _attach(transformer, arch: Architecture, config: RunConfig, schedule, batched_cfg, store=None, name=None):
    if not isinstance(batched_cfg, bool):
        raise MagCacheInputError("batched_cfg", f"expected True or False, got {batched_cfg!r}")
    if getattr(transformer, "is_cache_enabled", False):
        raise MagCacheInputError("transformer", "has one of diffusers' own caches enabled; call "
                                                "transformer.disable_cache() first")
    from .hooks import CacheHandle         # imports diffusers
    return CacheHandle(transformer, arch, config, schedule, batched_cfg, store, name)


def _schedule(scheduler):
    """The scheduler (its timesteps are read when each run starts), or falling timesteps as a tensor."""
    if hasattr(scheduler, "timesteps") and hasattr(scheduler, "set_timesteps"):
        return scheduler
    if isinstance(scheduler, (torch.Tensor, Sequence)) and not isinstance(scheduler, (str, bytes)):
        values = scheduler.flatten().tolist() if isinstance(scheduler, torch.Tensor) else list(scheduler)
        if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) \
                and all(a > b for a, b in zip(values, values[1:])):
            return scheduler.flatten() if isinstance(scheduler, torch.Tensor) else torch.tensor(values)
    raise MagCacheInputError("scheduler", f"expected the pipeline's scheduler (pipe.scheduler) or the falling "
                                          f"timesteps of the loop, got {scheduler!r:.80}")


def _one_of(**inputs) -> None:
    given = [k for k, v in inputs.items() if v is not None]
    if len(given) != 1:
        names = ", ".join(inputs)
        raise MagCacheInputError(given[1] if len(given) > 1 else "preset",
                                 f"give exactly one of {names} ({'got ' + ' and '.join(given) if given else 'none given'})")


def _preset(arch: Architecture, preset, method: str):
    table = arch.strategy.presets if method == METHOD_MAGCACHE else arch.strategy.tea_presets
    if not isinstance(preset, str):
        raise MagCacheInputError("preset", f"expected a preset name, got {type(preset).__name__}")
    if preset not in table:
        other = "ratios=[...]" if method == METHOD_MAGCACHE else "coefficients=[...]"
        raise unknown_preset(arch.strategy, preset, method, (), (f"{other} or calibration=<file>",))
    return table[preset]


def _curves(arch: Architecture, preset, ratios, calibration):
    """(curves, label, recommended params or None) for apply_magcache's curve inputs."""
    _one_of(preset=preset, ratios=ratios, calibration=calibration)
    if preset is not None:
        chosen = _preset(arch, preset, METHOD_MAGCACHE)
        return chosen.curves, f"preset {preset!r}", chosen.params
    if ratios is not None:
        if isinstance(ratios, RatioCurves):
            return ratios, f"custom ratios ({ratios.length} steps)", None
        curves = RatioCurves.from_json(dict(ratios) if isinstance(ratios, Mapping) else ratios, "ratios")
        return curves, f"custom ratios ({curves.length} steps)", None
    name, doc = _load(arch, calibration)
    return curves_of(doc), f"calibration {name!r} ({doc['steps']} steps)", None


def _file(input_name: str, path) -> tuple[CalibrationStore, str]:
    if not isinstance(path, (str, os.PathLike)):
        raise MagCacheInputError(input_name, f"expected the path of a calibration file (<folder>/<name>.json), "
                                             f"got {type(path).__name__}")
    folder, file = os.path.split(os.path.abspath(os.fspath(path)))
    if not file.endswith(".json"):
        raise MagCacheInputError(input_name, f"{os.fspath(path)!r}: a calibration file is <name>.json")
    return CalibrationStore(folder), check_name(file[:-len(".json")], input_name)


def _load(arch: Architecture, path) -> tuple[str, dict]:
    """(name, document) of a calibration file, validated as the nodes validate it and made on this architecture."""
    store, name = _file("calibration", path)
    doc = store.load(name, "calibration")
    if made_on(doc) != arch.strategy.name:
        raise MagCacheInputError("calibration", f"calibration {name!r} was made on a {doc['model']} model, this "
                                                f"transformer is {arch.title}; calibrate this model instead")
    return name, doc


def _coefficients(value, input_name: str) -> tuple[float, ...]:
    values = value.tolist() if isinstance(value, torch.Tensor) else value
    if (not isinstance(values, Sequence) or isinstance(values, (str, bytes)) or not 2 <= len(values) <= 12
            or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in values)):
        raise MagCacheInputError(input_name, f"expected 2-12 numbers, highest power first, got {value!r:.80}")
    return tuple(number(f"{input_name}[{i}]", c, -float("inf"), float("inf")) for i, c in enumerate(values))


def _offload(cache_device):
    if cache_device in (None, "cpu"):
        return None if cache_device is None else torch.device("cpu")
    raise MagCacheInputError("cache_device", f"expected None (with the model) or 'cpu', got {cache_device!r}")
