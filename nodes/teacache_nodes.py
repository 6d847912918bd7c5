"""TeaCacheApply: the TeaCache rule on the same run machinery and strategies as MagCache."""
from __future__ import annotations

import logging

from ..magcache_core import MagCacheInputError, RunConfig, TeaCacheParams
from ..magcache_core.target import SPEED_CHOICES, parse_speed
from ..magcache_core.teacache import REL_L1_THRESH_MAX
from ..strategies import METHOD_TEACACHE, all_presets, detect, unknown_preset
from .inputs import number, offload_device, window, window_and_cache_inputs, window_text
from .magcache_nodes import (CALIBRATION_PREFIX, HIDDEN, MAX_SKIPS_MAX, SKIPPED_CHOICES, SKIPPED_DEFAULT, SKIPPED_TOOLTIP,
                             calibration_store, extrapolate_form, load_calibration, min_steps_text)
from .schedule import MIN_STEPS, MIN_STEPS_MAX, MIN_STEPS_TOOLTIP
from .auto import AutoRun
from .patching import patch_model
from .report import NodeOutput, Reporter, node_ui

log = logging.getLogger("comfyui-magcache")


def resolve_coefficients(strategy, model, preset):
    """(coefficients, label, recommended TeaPreset or None) for the node's preset input on this model."""
    if not isinstance(preset, str):
        raise MagCacheInputError("preset", f"expected a preset name, got {type(preset).__name__}")
    if not strategy.supports_teacache:
        raise MagCacheInputError(
            "model", f"{strategy.title} has no TeaCache input this pack can read (its modulated input is not "
                     "reachable through ComfyUI's patches); use MagCacheCalibrate + MagCacheApply for it")
    if preset == "auto":
        name, detected = strategy.auto_preset(model, METHOD_TEACACHE)
        if name is None:                 # decided when sampling starts (auto.py): a calibration's fitted polynomial
            return None, strategy.detect_variant(model)[2], None
        chosen = strategy.tea_presets[name]
        return chosen.params.coefficients, f"{name} (auto: {detected})", chosen
    if preset.startswith(CALIBRATION_PREFIX):
        name, doc = load_calibration(strategy, preset)
        if "teacache" not in doc:
            raise MagCacheInputError("preset", f"calibration {name!r} has no TeaCache polynomial (it was saved "
                                               "by an older version of the pack); run MagCacheCalibrate again")
        fit = doc["teacache"]
        return tuple(fit["coefficients"]), f"calibration {name!r} (fitted, {doc['steps']} steps)", None
    if preset in strategy.tea_presets:
        chosen = strategy.tea_presets[preset]
        return chosen.params.coefficients, preset, chosen
    raise unknown_preset(strategy, preset, METHOD_TEACACHE, ("'auto'",), ("a saved 'calibration: <name>'",))


SPEED_TOOLTIP = (
    "Target speed, best effort. TeaCache decides from the image as it samples, so no threshold can be solved "
    "beforehand: the first run uses rel_l1_thresh; each finished run then solves, on the distances it measured, the "
    "rel_l1_thresh that would have reached the speed (least accumulated distance), and the next run at the same "
    "steps uses it. The log says the speed each run reached. 'off': rel_l1_thresh as set.")


class TeaCacheApply:
    DESCRIPTION = ("Skips the transformer blocks while the first block's timestep-modulated input has "
                   "changed little since the last computed step, and reuses the cached residual (TeaCache, "
                   "Liu et al. 2025). Put it right after the model loader.")
    CATEGORY = "MagCache"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with TeaCache; the input model is left unchanged.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model to speed up (FLUX.1, Wan 2.1, HunyuanVideo, "
                                               "LTX-Video, Lumina 2, HiDream have published coefficients)."}),
                "preset": (["auto"] + sorted(all_presets(METHOD_TEACACHE))
                           + [CALIBRATION_PREFIX + n for n in calibration_store().teacache_names()],
                           {"default": "auto", "tooltip": "The model's fitted polynomial; 'auto' picks the published "
                            "one for the detected model; for a model without one, the one fitted by a calibration "
                            "of this model, sampler and step count, which its first run makes (every step computed) "
                            "if none is saved. 'calibration: …' uses the one MagCacheCalibrate fitted."}),
                "rel_l1_thresh": ("FLOAT", {"default": 0.4, "min": 0.0, "max": REL_L1_THRESH_MAX, "step": 0.01, "tooltip":
                                  "Accumulated rescaled change allowed before the blocks run again. Higher = faster, "
                                  "less faithful; 0 = never skip. FLUX 0.4, Wan 0.15-0.3, HunyuanVideo 0.15, LTXV 0.06 "
                                  f"(at most {REL_L1_THRESH_MAX})."}),
                **window_and_cache_inputs(" Wan: 0.1.", " The last step always computes."),
            },
            "optional": {
                "max_skip_steps": ("INT", {"default": 0, "min": 0, "max": MAX_SKIPS_MAX, "tooltip":
                                   f"At most this many steps in a row are skipped; 0 = no limit (as published). At most {MAX_SKIPS_MAX}."}),
                "speed": (list(SPEED_CHOICES), {"default": "off", "tooltip": SPEED_TOOLTIP}),
                "skipped_steps": (list(SKIPPED_CHOICES), {"default": SKIPPED_DEFAULT, "tooltip": SKIPPED_TOOLTIP}),
                "min_steps": ("INT", {"default": MIN_STEPS, "min": 0, "max": MIN_STEPS_MAX, "tooltip": MIN_STEPS_TOOLTIP}),
            },
            "hidden": HIDDEN,
        }

    def apply(self, model, preset, rel_l1_thresh, start_percent=0.0, end_percent=1.0,
              cache_device="main_device", max_skip_steps=0, speed="off", skipped_steps=SKIPPED_DEFAULT, unique_id=None,
              min_steps=MIN_STEPS):
        thresh = number("rel_l1_thresh", rel_l1_thresh, 0.0, REL_L1_THRESH_MAX)
        start, end = window(start_percent, end_percent)
        offload = offload_device(cache_device)
        cap = number("max_skip_steps", max_skip_steps, 0, MAX_SKIPS_MAX, integer=True)
        target = parse_speed(speed, "speed")
        min_steps = number("min_steps", min_steps, 0, MIN_STEPS_MAX, integer=True)
        extrapolate = extrapolate_form(skipped_steps)
        if target is not None and thresh <= 0:
            raise MagCacheInputError("rel_l1_thresh", "is 0 (never skip), so a run measures nothing to reach the speed "
                                                      "from; give a starting value > 0, e.g. the preset's")
        strategy = detect(model)
        coefficients, label, chosen = resolve_coefficients(strategy, model, preset)
        if coefficients is None:
            # The coefficients come from the calibration found when sampling starts.
            config = AutoRun("teacache", strategy, label, TeaCacheParams(thresh, max_skips=cap or None), start, end, offload,
                             target=target, extrapolate=extrapolate)
            label = "auto: the polynomial of a calibration of this model, made by its first run if none is saved"
        else:
            params = TeaCacheParams(thresh, tuple(coefficients), cap or None)
            config = RunConfig("teacache", params, None, start, end, offload, label=f"{strategy.title}, {label}",
                               target=target, extrapolate=extrapolate,
                               notice=f"auto: published coefficients {label}" if preset == "auto" else "")
        notices = []
        if chosen is not None and (chosen.params.rel_l1_thresh, chosen.start_percent) != (thresh, start):
            notices.append(f"the preset recommends rel_l1_thresh {chosen.params.rel_l1_thresh}, start {chosen.start_percent}")
        if target is not None:
            notices.append(f"speed {speed}, best effort: this rel_l1_thresh is where the first run starts, each "
                           "finished run solves the next run's")
        settings = f"rel_l1_thresh {thresh}" + (f", K {cap}" if cap else "") + window_text(start, end)
        if extrapolate != "off":
            settings += ", skipped steps extrapolated"
        settings += min_steps_text(min_steps)
        log.info("TeaCacheApply: %s (%s-level cache), %s, %s%s", strategy.title, strategy.level, label, settings,
                 "".join("; " + n for n in notices))
        patched = patch_model(model, strategy, config, reporter=Reporter(unique_id, "TeaCacheApply", settings),
                              min_steps=min_steps)
        return NodeOutput((patched,), node_ui("teacache", label, settings, notices))


NODE_CLASS_MAPPINGS = {"TeaCacheApply": TeaCacheApply}
NODE_DISPLAY_NAME_MAPPINGS = {"TeaCacheApply": "TeaCache Apply"}
