"""The nodes: inputs in, a cloned and patched MODEL out. The mechanism is in ``patching.py``."""
from __future__ import annotations

import json
import logging
import os

import folder_paths

from ..magcache_core import (SKIPPED_CHOICES, SKIPPED_DEFAULT, MagCacheInputError, MagCacheParams, RatioCurves,
                             RunConfig, extrapolate_form)
from ..magcache_core.decision import MAX_SKIPS_MAX, THRESHOLD_MAX    # input maxima: the front end clamps to them
from ..magcache_core.firstblock import FirstBlockParams
from ..magcache_core.storage import (MODEL_ALIASES, CalibrationStore, check_name, curves_of, made_on, parse_json,
                                     save_calibration)
from ..magcache_core.target import SPEED_CHOICES, parse_speed, preview
from ..strategies import METHOD_MAGCACHE, all_presets, detect, unknown_preset
from .auto import AutoRun, CalibrateRun
from .inputs import number, offload_device, window, window_and_cache_inputs, window_text
from .patching import patch_model
from .report import NodeOutput, Reporter, calibration_details, node_ui
from .schedule import MIN_STEPS, MIN_STEPS_MAX, MIN_STEPS_TOOLTIP

log = logging.getLogger("comfyui-magcache")
CALIBRATION_PREFIX = "calibration: "
CALIBRATION_ALIASES = MODEL_ALIASES            # strategy names of calibrations saved by earlier versions
HIDDEN = {"unique_id": "UNIQUE_ID"}              # the node's id: run reports are drawn on it (report.py)
FIRST_BLOCKS_MAX = 8
FIRST_BLOCKS_THRESHOLD_MAX = 2.0
FIRST_BLOCKS_ACCUMULATE = True                   # the forms bench/variant_forms.py measured best
FIRST_BLOCKS_PRIOR = True


SKIPPED_TOOLTIP = (
    "What a skipped step adds to the blocks' input. 'extrapolate' (default): predicted to first order from the "
    "last two computed residuals (by their distance in steps), TaylorSeer-style; keeps one extra residual per cond "
    "(more memory: one more image-stream-sized tensor per cond, on cache_device). 'reuse' (the authors' rule): the "
    "residual of the last computed step, as it is. The schedule is the same either way.")
FIRST_BLOCKS_TOOLTIP = (
    "0 = off (the authors' rule). N > 0: the first N transformer blocks run on every step, and the others are skipped "
    "only where the curve allows it (threshold, retention, K) AND the first blocks' residual has changed little since "
    "that cond's last computed step (first_blocks_threshold): a schedule per prompt and seed (first-block cache). "
    "Costs N blocks on each skipped step, one more stored tensor per cond and one host sync per model call. "
    "Not with a speed target.")
FIRST_BLOCKS_THRESHOLD_TOOLTIP = (
    "With first_blocks > 0: the most the first blocks' residual may change, summed over the skipped steps since the "
    "last computed one (each step's change: relative L1 against that computed step), for the other blocks to skip. "
    "Higher = faster; 0 = never skip.")


def calibration_store() -> CalibrationStore:
    """Calibrations live in ComfyUI's user directory, under magcache/calibrations/."""
    return CalibrationStore(os.path.join(folder_paths.get_user_directory(), "magcache", "calibrations"))


def load_calibration(strategy, preset: str) -> tuple[str, dict]:
    """(name, document) of the calibration file a 'calibration: <name>' preset names, checked to be of
    this model's kind. The name is the file's, as listed (a copied file keeps its old "name" inside)."""
    name = preset[len(CALIBRATION_PREFIX):]
    doc = calibration_store().load(name, "preset")
    if made_on(doc) != strategy.name:
        raise MagCacheInputError("preset", f"calibration {name!r} was made on a {doc['model']} model, "
                                           f"this model is {strategy.title}; calibrate this model instead")
    return name, doc


def resolve_curves(strategy, model, preset: str, ratios: RatioCurves | None):
    """(curves, label, recommended params or None) for the node's preset / ratios inputs."""
    if ratios is not None:
        if not isinstance(ratios, RatioCurves):
            raise MagCacheInputError("ratios", f"expected MAGCACHE_RATIOS from a 'MagCache Ratios' node, got {type(ratios).__name__}")
        return ratios, f"custom ratios ({ratios.length} steps)", None
    if not isinstance(preset, str):
        raise MagCacheInputError("preset", f"expected a preset name, got {type(preset).__name__}")
    if preset == "auto":
        name, detected = strategy.auto_preset(model)
        if name is None:                 # decided when sampling starts (auto.py): a calibration of this model
            return None, strategy.detect_variant(model)[2], None
        p = strategy.presets[name]
        return p.curves, f"{name} (auto: {detected})", p.params
    if preset.startswith(CALIBRATION_PREFIX):
        name, doc = load_calibration(strategy, preset)
        return curves_of(doc), f"calibration {name!r} ({doc['steps']} steps)", None
    if preset in strategy.presets:
        p = strategy.presets[preset]
        return p.curves, preset, p.params
    raise unknown_preset(strategy, preset, METHOD_MAGCACHE, ("'auto'",), ("a saved 'calibration: <name>'",))


SPEED_TOOLTIP = (
    "Target speed instead of a threshold. 'off': the threshold input is used. Otherwise the threshold input is "
    "IGNORED: when sampling starts (the step count is known then) the threshold is solved so that the run computes "
    "at most steps/speed of its steps, with the least accumulated error (the sum, over skipped steps, of |1 - the "
    "product of the ratios since the last computed step|). retention_ratio, max_skip_steps and the start/end window "
    "are kept. If they cannot reach the speed (e.g. K 2 and 10x), the fastest they allow is used and the log says so.")


class MagCacheApply:
    DESCRIPTION = ("Skips the transformer blocks on denoising steps where their output barely changes "
                   "and reuses the cached residual (MagCache). Put it right after the model loader.")
    CATEGORY = "MagCache"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with MagCache; the input model is left unchanged.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        presets = ["auto"] + sorted(all_presets()) + [CALIBRATION_PREFIX + n for n in calibration_store().names()]
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model to speed up: any model ComfyUI loads (its "
                          "architecture is detected; unknown ones are cached as a whole model)."}),
                "preset": (presets, {"default": "auto", "tooltip": "Magnitude-ratio curve. 'auto' picks the published "
                           "curve for the detected model; for a model without one, a calibration of this model, "
                           "sampler and step count, which its first run makes (every step computed) if none is saved. "
                           "'calibration: …' uses one you made with MagCacheCalibrate."}),
                "threshold": ("FLOAT", {"default": 0.24, "min": 0.0, "max": THRESHOLD_MAX, "step": 0.01, "tooltip":
                              "Accumulated error allowed before the blocks must run again. Higher = faster, "
                              f"less faithful; 0 = never skip. FLUX: 0.24; Wan: 0.12-0.24 (at most {THRESHOLD_MAX})."}),
                "retention_ratio": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                    "Fraction of the first steps that always compute (they set the layout). FLUX: 0.1, Wan: 0.2."}),
                "max_skip_steps": ("INT", {"default": 4, "min": 0, "max": MAX_SKIPS_MAX, "tooltip":
                                   f"K: at most this many steps in a row are skipped. FLUX: 5, Wan: 4 (at most {MAX_SKIPS_MAX})."}),
                **window_and_cache_inputs(),
            },
            "optional": {
                "ratios": ("MAGCACHE_RATIOS", {"tooltip": "Your own ratio curve (from a 'MagCache Ratios' node); overrides the preset."}),
                "speed": (list(SPEED_CHOICES), {"default": "off", "tooltip": SPEED_TOOLTIP}),
                "skipped_steps": (list(SKIPPED_CHOICES), {"default": SKIPPED_DEFAULT, "tooltip": SKIPPED_TOOLTIP}),
                "first_blocks": ("INT", {"default": 0, "min": 0, "max": FIRST_BLOCKS_MAX, "tooltip": FIRST_BLOCKS_TOOLTIP}),
                "first_blocks_threshold": ("FLOAT", {"default": 0.2, "min": 0.0, "max": FIRST_BLOCKS_THRESHOLD_MAX,
                                                     "step": 0.01, "tooltip": FIRST_BLOCKS_THRESHOLD_TOOLTIP}),
                "min_steps": ("INT", {"default": MIN_STEPS, "min": 0, "max": MIN_STEPS_MAX, "tooltip": MIN_STEPS_TOOLTIP}),
            },
            "hidden": HIDDEN,
        }

    def apply(self, model, preset, threshold, retention_ratio, max_skip_steps, start_percent=0.0,
              end_percent=1.0, cache_device="main_device", ratios=None, speed="off", skipped_steps=SKIPPED_DEFAULT,
              first_blocks=0, first_blocks_threshold=0.2, unique_id=None,
              min_steps=MIN_STEPS):
        params = MagCacheParams(number("threshold", threshold, 0.0, THRESHOLD_MAX),
                                number("retention_ratio", retention_ratio, 0.0, 1.0),
                                number("max_skip_steps", max_skip_steps, 0, MAX_SKIPS_MAX, integer=True))
        start, end = window(start_percent, end_percent)
        offload = offload_device(cache_device)
        target = parse_speed(speed, "speed")
        min_steps = number("min_steps", min_steps, 0, MIN_STEPS_MAX, integer=True)
        extrapolate = extrapolate_form(skipped_steps)
        n_first = number("first_blocks", first_blocks, 0, FIRST_BLOCKS_MAX, integer=True)
        content = number("first_blocks_threshold", first_blocks_threshold, 0.0, FIRST_BLOCKS_THRESHOLD_MAX)
        strategy = detect(model)
        first = None
        if n_first:
            first = first_blocks_params(strategy, n_first, content, target)
        curves, label, recommended = resolve_curves(strategy, model, preset, ratios)
        if curves is None:
            config = AutoRun("magcache", strategy, label, params, start, end, offload, target=target,
                             extrapolate=extrapolate, first_blocks=first)
            label = "auto: a calibration of this model, made by its first run if none is saved"
        else:
            config = RunConfig("magcache", params, curves, start, end, offload, label=f"{strategy.title}, {label}",
                               target=target, extrapolate=extrapolate, first_blocks=first,
                               notice=f"auto: published curve {label}" if preset == "auto" and ratios is None else "")
        notices = []
        if recommended is not None and (recommended != params if target is None else
                                        recommended.max_skips != params.max_skips
                                        or recommended.retention_ratio != params.retention_ratio):
            notices.append(f"the preset recommends threshold {recommended.threshold}, retention "
                           f"{recommended.retention_ratio}, K {recommended.max_skips}")
        threshold = f"threshold {params.threshold}"
        if target is not None:
            plan, kinds = preview(target, params, curves)
            threshold = f"speed {speed} (threshold input ignored)"
            notices.append(f"planned at the curve's {plan.total_steps} steps ({kinds}): {plan.outcome()}; solved "
                           "again when sampling starts, for the run's steps, conds and window")
        settings = f"{threshold}, retention {params.retention_ratio}, K {params.max_skips}" + window_text(start, end)
        if extrapolate != "off":
            settings += ", skipped steps extrapolated"
        if first is not None:
            settings += f", first {first.blocks} block{'s' * (first.blocks > 1)} confirm (change < {first.threshold:g})"
        settings += min_steps_text(min_steps)
        log.info("MagCacheApply: %s (%s-level cache), %s, %s%s", strategy.title, strategy.level, label, settings,
                 "".join("; " + n for n in notices))
        patched = patch_model(model, strategy, config, reporter=Reporter(unique_id, "MagCacheApply", settings),
                              min_steps=min_steps)
        return NodeOutput((patched,), node_ui("magcache", config.label, settings, notices))


def min_steps_text(min_steps: int) -> str:
    """The few-step minimum for a settings line: empty at the default."""
    return "" if min_steps == MIN_STEPS else (", runs of any length" if min_steps == 0 else f", min_steps {min_steps}")


def first_blocks_params(strategy, n: int, threshold: float, target) -> FirstBlockParams:
    """The first-block-confirmed skip for ``strategy``, or an error naming the input that rules it out."""
    if strategy.level != "blocks":
        raise MagCacheInputError("first_blocks", f"{strategy.title} is cached as a whole model (ComfyUI gives it no "
                                                 "block patches), so there are no first blocks to run; set 0")
    if n >= len(strategy.block_keys):
        raise MagCacheInputError("first_blocks", f"is {n}, but {strategy.title} has {len(strategy.block_keys)} blocks; "
                                                 "at least one must remain to skip")
    if target is not None:
        raise MagCacheInputError("speed", "a speed target fixes the schedule before sampling, but with first_blocks > 0 "
                                          "the image decides which steps skip; set speed to off (or first_blocks to 0)")
    return FirstBlockParams(n, threshold, accumulate=FIRST_BLOCKS_ACCUMULATE, prior=FIRST_BLOCKS_PRIOR)


class MagCacheCalibrate:
    DESCRIPTION = ("Records this model's magnitude-ratio curve during one normal sampling run (nothing is "
                   "skipped) and saves it under a name that MagCacheApply's preset list then offers. Where the "
                   "model has a TeaCache input, it also fits a TeaCache polynomial, offered by TeaCacheApply.")
    CATEGORY = "MagCache"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model, recording; connect it to the sampler of the run to calibrate on.",)
    FUNCTION = "calibrate"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The model to calibrate (any model ComfyUI loads)."}),
            "calibration_name": ("STRING", {"default": "my_model", "tooltip":
                                 "Saved as <ComfyUI user dir>/magcache/calibrations/<name>.json (overwritten if it exists). "
                                 "Letters, digits, '_', '-', '.', spaces."}),
        }, "hidden": HIDDEN}

    def calibrate(self, model, calibration_name, unique_id=None):
        name = check_name(calibration_name)
        strategy = detect(model)
        calibration_store().path(name)               # fail now, not after sampling, on a bad name
        run = CalibrateRun(strategy, name)
        settings = f"saves {name!r} when sampling ends"
        patched = patch_model(model, strategy, run, reporter=Reporter(unique_id, "MagCacheCalibrate", settings))
        return NodeOutput((patched,), node_ui("calibrate", run.label, settings))


def _saver(store: CalibrationStore, name: str, fingerprint: dict | None = None):
    """Saves a calibration run's result; ``fingerprint`` (auto.py) lets 'auto' find it for the same run."""
    def save(run, strategy):
        stats = run.recorder.result()
        if not stats:
            raise RuntimeError(f"MagCacheCalibrate: no residual was recorded ({strategy.title}: the model's blocks "
                               "never went through the block patches, e.g. causal Wan's ar_video sampler); "
                               "calibrate with an ordinary sampler, calibration not saved")
        path, extra, tea = save_calibration(store, name, strategy.name, strategy.residual, run.num_steps, stats,
                                            strategy.supports_teacache, fingerprint)
        spans = ", ".join(f"{k}: {min(s['ratio'][1:] or [1]):.3f}-{max(s['ratio'][1:] or [1]):.3f}" for k, s in stats.items())
        log.info("MagCacheCalibrate: saved %r (%d steps; ratio range %s%s) to %s", name, run.num_steps, spans, tea, path)
        return calibration_details(name, path, strategy.name, run.num_steps, stats, extra.get("teacache"))
    return save


class MagCacheRatios:
    DESCRIPTION = "A ratio curve typed in by hand, for MagCacheApply's 'ratios' input."
    CATEGORY = "MagCache"
    RETURN_TYPES = ("MAGCACHE_RATIOS",)
    FUNCTION = "parse"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ratios": ("STRING", {"multiline": True, "default": "[1.0, 1.1, 1.05, 1.0, 0.98, 0.95]",
                "tooltip": "A JSON list with one ratio per step, or {\"cond\": [...], \"uncond\": [...]}. "
                           "Any length: it is resampled to the run's step count."})}}

    def parse(self, ratios):
        if not isinstance(ratios, str):
            raise MagCacheInputError("ratios", f"expected text, got {type(ratios).__name__}")
        text = ratios.strip()
        try:
            value = parse_json(text, "ratios", "the ratios text")
        except json.JSONDecodeError:
            try:
                value = [float(v) for v in text.replace("\n", ",").split(",") if v.strip()]
            except ValueError:
                raise MagCacheInputError("ratios", "not a JSON list/object nor comma-separated numbers") from None
        return (RatioCurves.from_json(value, input_name="ratios"),)


NODE_CLASS_MAPPINGS = {
    "MagCacheApply": MagCacheApply,
    "MagCacheCalibrate": MagCacheCalibrate,
    "MagCacheRatios": MagCacheRatios,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "MagCacheApply": "MagCache Apply",
    "MagCacheCalibrate": "MagCache Calibrate",
    "MagCacheRatios": "MagCache Ratios",
}
