"""The diffusers API (``diffusers_api/``) on tiny diffusers 0.42 transformers in their real pipelines (FLUX, Wan,
Qwen-Image; from config, random weights), against diffusers' own ``apply_mag_cache``, against the plain
transformer, and with calibration files going to and from the nodes in real ComfyUI."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from comfyui_magcache.diffusers_api import SUPPORTED, apply_magcache, apply_teacache, calibrate
from comfyui_magcache.magcache_core import COND, MagCacheInputError, MagCacheParams, RatioCurves, computed_steps
from comfyui_magcache.magcache_core.storage import curves_of
from comfyui_magcache.nodes.magcache_nodes import MagCacheApply, MagCacheCalibrate, calibration_store, resolve_curves
from comfyui_magcache.nodes.teacache_nodes import TeaCacheApply, resolve_coefficients
from comfyui_magcache.strategies import detect
from comfyui_magcache.strategies.base import BlockStrategy
from comfyui_magcache.strategies.flux import FLUX_DEV_28, FluxStrategy
from comfyui_magcache.strategies.qwen_image import QWEN_IMAGE_40
from comfyui_magcache.strategies.wan import WAN21_T2V_1_3B

mag_cache = pytest.importorskip("diffusers.hooks.mag_cache")
from diffusers import FlowMatchEulerDiscreteScheduler  # noqa: E402
from tiny_diffusers import BlockSteps, tiny  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ["flux", "wan", "qwen"]
CFG = {"flux": False, "wan": True, "qwen": True}          # Wan and Qwen: cond and uncond, two calls per step


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    return tiny(request.param)


def snapshot(module: torch.nn.Module):
    """Everything a hook could leave on a module tree: each module's attribute names, its torch hooks, the diffusers
    hooks in its registry; and the weights."""
    hook_dicts = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                  "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")
    tree = {name: (sorted(m.__dict__), [len(getattr(m, d)) for d in hook_dicts],
                   list(m.__dict__["_diffusers_hook"]._hook_order) if "_diffusers_hook" in m.__dict__ else None)
            for name, m in module.named_modules()}
    return tree, {k: v.clone() for k, v in module.state_dict().items()}


def same_state(a, b) -> bool:
    return a[0] == b[0] and a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])


# -- 1. the same steps and outputs as diffusers' apply_mag_cache ---------------------------------------------------
# (curve, steps, threshold, retention, K) per family: FLUX's published setting; Wan's and Qwen's cond curves with CFG.
SETTINGS = {"flux": (FLUX_DEV_28, 28, 0.24, 0.1, 5), "wan": (WAN21_T2V_1_3B[0::2], 20, 0.12, 0.2, 4),
            "qwen": (QWEN_IMAGE_40[0::2], 20, 0.3, 0.2, 3)}


def diffusers_magcache_run(family):
    """diffusers' own MagCache on a fresh tiny transformer of the family: (steps computed, output)."""
    curve, steps, threshold, retention, k = SETTINGS[family]
    theirs = tiny(family)
    mag_cache.apply_mag_cache(theirs.transformer, mag_cache.MagCacheConfig(
        mag_ratios=list(curve), threshold=threshold, retention_ratio=retention, max_skip_steps=k,
        num_inference_steps=steps))
    with BlockSteps(theirs) as seen:
        out = theirs.run(steps, CFG[family], callback_on_step_end=seen.callback)
    return seen.steps, out


@pytest.mark.parametrize("family", FAMILIES)
def test_same_steps_and_output_as_diffusers_mag_cache(family):
    curve, steps, threshold, retention, k = SETTINGS[family]
    their_steps, their_out = diffusers_magcache_run(family)
    ours = tiny(family)
    plain = ours.run(steps, CFG[family])
    # The two known rule differences, lined up: diffusers rounds the first skippable step (ours floors) and skips
    # while err <= threshold (ours <): a retention whose floor is diffusers' rounding, the threshold one ulp up.
    lined_up = (int(retention * steps + 0.5) + 0.5) / steps
    # skipped_steps "reuse": diffusers' MagCache adds the last residual as it is (our default extrapolates)
    with apply_magcache(ours.transformer, ratios=list(curve), threshold=math.nextafter(threshold, 1.0),
                        retention_ratio=lined_up, max_skip_steps=k, scheduler=ours.scheduler,
                        skipped_steps="reuse") as cache, BlockSteps(ours) as seen:
        out = ours.run(steps, CFG[family], callback_on_step_end=seen.callback)
    # The default (extrapolate): the same steps computed, another output.
    with apply_magcache(ours.transformer, ratios=list(curve), threshold=math.nextafter(threshold, 1.0),
                        retention_ratio=lined_up, max_skip_steps=k, scheduler=ours.scheduler) as extrapolating:
        extrapolated = ours.run(steps, CFG[family])
    assert extrapolating.last_run.computed == their_steps and not torch.allclose(extrapolated, out, rtol=1e-4)
    print(f"\n{family}: diffusers {their_steps}, ours lined up {seen.steps}, "
          f"max |ours - diffusers| {(out - their_out).abs().max().item():.3g}")
    assert seen.steps == cache.last_run.computed == their_steps
    assert len(their_steps) < steps                                # something was skipped
    calls_per_step = 2 if CFG[family] else 1
    assert len(seen.head) == calls_per_step * len(their_steps)      # and skipped for every cond of the step
    assert torch.allclose(out, their_out, rtol=1e-6, atol=1e-7)    # measured: bit-identical on all three
    assert not torch.allclose(out, plain, rtol=1e-3, atol=1e-4)    # (the cache did change the output)


def test_flux_default_rule_differs_from_diffusers_only_where_pinned():
    """Our default, the authors' rule: at 0.24 / 0.1 / K 5, 28 steps, FLUX computes [0, 1, 3, 6, 10, 16, 22, 26],
    diffusers [0, 1, 2, 5, 9, 15, 21, 26] (test_diffusers_second_opinion.py): 0.1 x 28 = 2.8 floors to 2, rounds to 3."""
    their_steps, _ = diffusers_magcache_run("flux")
    ours = tiny("flux")
    with apply_magcache(ours.transformer, "flux", scheduler=ours.scheduler) as cache, BlockSteps(ours) as seen:
        ours.run(28, callback_on_step_end=seen.callback)
    assert cache.config.params == MagCacheParams(0.24, 0.1, 5)       # the preset's recommended settings
    assert seen.steps == cache.last_run.computed == [0, 1, 3, 6, 10, 16, 22, 26]
    assert their_steps == [0, 1, 2, 5, 9, 15, 21, 26]


def test_presets_are_the_strategies():
    """One source of truth: a preset's curve and settings are the very objects in strategies/."""
    model = tiny("flux")
    with apply_magcache(model.transformer, "flux", scheduler=model.scheduler) as cache:
        assert cache.config.curves is FluxStrategy.presets["flux"].curves
    with apply_teacache(model.transformer, "flux", scheduler=model.scheduler) as cache:
        assert cache.config.params == FluxStrategy.tea_presets["flux"].params
        assert cache.config.params.coefficients is FluxStrategy.tea_presets["flux"].params.coefficients


# -- 2. nothing skipped: bit-identical, and remove() leaves the transformer as it was ------------------------------
@pytest.mark.parametrize("model, method", [(f, m) for f in FAMILIES for m in ("magcache 0", "teacache 0", "calibrate")
                                           if (f, m) != ("qwen", "teacache 0")],      # no TeaCache input, as in ComfyUI
                         indirect=["model"])
def test_nothing_skipped_is_bit_identical_and_remove_restores(model, method, tmp_path):
    cfg = CFG[model.family]
    reference = model.run(10, cfg)
    before = snapshot(model.transformer)          # after a plain run: the pipeline's own registry is there
    if method == "magcache 0":
        preset = {"flux": "flux", "wan": "wan2.1_t2v_1.3B", "qwen": "qwen_image"}[model.family]
        handle = apply_magcache(model.transformer, preset, threshold=0.0, scheduler=model.scheduler)
    elif method == "teacache 0":
        handle = apply_teacache(model.transformer, coefficients=[1.0, 0.0], rel_l1_thresh=0.0, scheduler=model.scheduler)
    else:
        handle = calibrate(model.transformer, tmp_path / "tiny.json", scheduler=model.scheduler)
    with handle:
        assert not same_state(snapshot(model.transformer), before)   # (the snapshot sees hooks)
        assert torch.equal(model.run(10, cfg), reference)
        assert torch.equal(model.run(10, cfg), reference)             # a second run of the same handle
    assert [r.computed for r in handle.runs] == [list(range(10))] * 2
    assert same_state(snapshot(model.transformer), before)
    assert torch.equal(model.run(10, cfg), reference)
    if method == "calibrate":
        doc = json.loads((tmp_path / "tiny.json").read_text())
        assert handle.last_run.saved == str(tmp_path / "tiny.json")
        assert doc["model"] == {"flux": "flux", "wan": "wan", "qwen": "qwen_image"}[model.family]
        assert set(doc["mag_ratios"]) == ({"cond", "uncond"} if cfg else {"cond"})
        assert all(len(c) == 10 for c in doc["mag_ratios"].values())
        assert ("teacache" in doc) == (model.family != "qwen")


def test_skipping_changes_the_output_and_remove_restores_it(model):
    """The positive control of the test above: a threshold that skips changes the output; remove() restores it."""
    cfg = CFG[model.family]
    reference = model.run(10, cfg)
    before = snapshot(model.transformer)
    curve = {"flux": FLUX_DEV_28, "wan": WAN21_T2V_1_3B[0::2], "qwen": QWEN_IMAGE_40[0::2]}[model.family]
    with apply_magcache(model.transformer, ratios=curve, threshold=0.5, retention_ratio=0.0, scheduler=model.scheduler) as h:
        assert not torch.equal(model.run(10, cfg), reference)
    assert len(h.last_run.computed) < 10
    assert same_state(snapshot(model.transformer), before)
    assert torch.equal(model.run(10, cfg), reference)


def test_residuals_kept_in_cpu_memory_give_the_same_result():
    model = tiny("wan")
    outs = []
    for device in (None, "cpu"):
        with apply_magcache(model.transformer, "wan2.1_t2v_1.3B", threshold=0.3, scheduler=model.scheduler,
                            cache_device=device) as cache:
            outs.append(model.run(12, cfg=True))
        assert len(cache.last_run.computed) < 12
    assert torch.equal(*outs)


def test_apply_and_remove_without_running_restores_a_fresh_transformer():
    model = tiny("wan")                          # never run: no diffusers registry anywhere yet
    before = snapshot(model.transformer)
    apply_magcache(model.transformer, "wan2.1_t2v_1.3B", scheduler=model.scheduler).remove()
    assert same_state(snapshot(model.transformer), before)
    assert not any("_diffusers_hook" in m.__dict__ or "forward" in m.__dict__ for m in model.transformer.modules())


# -- the step of each call ---------------------------------------------------------------------------------------
def manual_loop(model: "tiny", steps, mode, start=0, dtype=torch.float32):
    """Wan's denoising loop written out: cond and uncond as the pipeline runs them ("contexts"), uncond first
    ("contexts reversed"), the same two calls without cache_context ("calls"), or batched into one call as
    torch.cat([uncond, cond]) ("batched")."""
    t_model, sched = model.transformer, model.scheduler
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 4, 2, 4, 4, generator=g)
    cond, uncond = torch.randn(1, 6, 32, generator=g), torch.randn(1, 6, 32, generator=g)
    sched.set_begin_index(start)
    for t in sched.timesteps[start:]:
        ts = t.expand(1)
        if mode == "batched":
            both = t_model(hidden_states=torch.cat([x, x]), timestep=torch.cat([ts, ts]),
                           encoder_hidden_states=torch.cat([uncond, cond]), return_dict=False)[0]
            v_uncond, v_cond = both.chunk(2)
        else:
            preds = {}
            order = (("uncond", uncond), ("cond", cond)) if mode == "contexts reversed" else (("cond", cond), ("uncond", uncond))
            for name, emb in order:
                if mode.startswith("contexts"):
                    with t_model.cache_context(name):
                        preds[name] = t_model(hidden_states=x, timestep=ts, encoder_hidden_states=emb, return_dict=False)[0]
                else:
                    preds[name] = t_model(hidden_states=x, timestep=ts, encoder_hidden_states=emb, return_dict=False)[0]
            v_cond, v_uncond = preds["cond"], preds["uncond"]
        x = sched.step(v_uncond + 5.0 * (v_cond - v_uncond), t, x, return_dict=False)[0]
    return x


def at_steps(curves: dict, steps: int) -> dict:
    """Each kind's curve resampled to ``steps`` (as a run reads it)."""
    rc = RatioCurves.from_json(curves)
    return {kind: rc.for_steps(kind, steps) for kind in (0, 1)}


def test_cfg_looped_with_and_without_contexts_and_batched_decide_alike():
    model = tiny("wan")
    curves = {"cond": WAN21_T2V_1_3B[0::2], "uncond": WAN21_T2V_1_3B[1::2]}
    outs, computed = {}, {}
    for mode in ("contexts", "calls", "batched"):
        with apply_magcache(model.transformer, ratios=curves, threshold=0.12, retention_ratio=0.2, max_skip_steps=4,
                            scheduler=model.scheduler, batched_cfg=mode == "batched") as cache:
            outs[mode] = manual_loop(model, 20, mode)
        computed[mode] = cache.runs[-1].computed
    print(f"\ncomputed {computed}")
    expected = computed_steps(MagCacheParams(0.12, 0.2, 4), at_steps(curves, 20), 20, kinds=(0, 1))
    assert computed["contexts"] == computed["calls"] == computed["batched"] == expected
    assert expected == [0, 1, 2, 3, 8, 13, 16, 18, 19]       # as in ComfyUI (test_comfy_magcache: Wan, 20 steps)
    assert torch.equal(outs["contexts"], outs["calls"])            # the same calls, told apart by order
    assert torch.allclose(outs["batched"], outs["contexts"], rtol=1e-4, atol=1e-5)


def test_cache_context_names_the_cond_whatever_the_order(tmp_path):
    """With cache_context, the uncond called first is still the uncond: calibrating uncond-first and cond-first
    loops gives the same 'cond' and 'uncond' curves (which differ from each other). The transformer has run a
    pipeline before, so diffusers' registry had cached where its contexts go before the hooks came."""
    model = tiny("wan")
    model.run(2, cfg=True)
    curves = {}
    for mode in ("contexts", "contexts reversed", "calls"):
        with calibrate(model.transformer, tmp_path / f"{mode}.json", scheduler=model.scheduler):
            manual_loop(model, 8, mode)
        curves[mode] = json.loads((tmp_path / f"{mode}.json").read_text())["mag_ratios"]
    assert curves["contexts"]["cond"] != curves["contexts"]["uncond"]
    assert curves["contexts reversed"] == curves["contexts"]
    # Without names, calls are told apart by order: the uncond-first loop would swap them (here: cond first).
    assert curves["calls"] == curves["contexts"]


def test_a_loop_that_starts_later_is_located_in_the_whole_schedule():
    """img2img-style: the loop runs steps 6..19 of a 20-step schedule; the curve is read at those steps."""
    model = tiny("wan")
    curves = {"cond": WAN21_T2V_1_3B[0::2], "uncond": WAN21_T2V_1_3B[1::2]}
    with apply_magcache(model.transformer, ratios=curves, threshold=0.12, retention_ratio=0.2, max_skip_steps=4,
                        scheduler=model.scheduler) as cache:
        manual_loop(model, 20, "contexts", start=6)
    # Its first step computes (nothing cached yet) and starts the accumulators afresh, as a step outside a window.
    whole = computed_steps(MagCacheParams(0.12, 0.2, 4), at_steps(curves, 20), 20, kinds=(0, 1), window=lambda s: s > 6)
    assert cache.last_run.steps == list(range(6, 20))
    assert cache.last_run.computed == [s for s in whole if s >= 6]


def test_bfloat16_timesteps_are_located_exactly():
    """FluxPipeline passes ``t.to(latents.dtype) / 1000``: in bfloat16 at 100 steps (shift 3) the nearest timestep
    is the wrong one for 7 steps, and two steps pass the same value (the scheduler's position tells them apart);
    every step is still found, once."""
    model = tiny("flux")
    model.pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    model.transformer.to(torch.bfloat16)
    with apply_magcache(model.transformer, "flux", threshold=0.0, scheduler=model.scheduler) as cache:
        model.run(100, dtype=torch.bfloat16)
    ts = model.scheduler.timesteps
    rounded = (ts.to(torch.bfloat16) / 1000).float() * 1000
    assert sum(int((ts - r).abs().argmin()) != i for i, r in enumerate(rounded)) == 7       # why it matters
    assert len(set(rounded.tolist())) == 99
    assert cache.last_run.steps == cache.last_run.computed == list(range(100))


def test_a_new_pipeline_call_is_a_new_run(model):
    """Each pipeline call is one run (its own residuals), however many calls per step and whatever the steps."""
    with apply_magcache(model.transformer, "flux" if model.family == "flux" else
                        ("wan2.1_t2v_1.3B" if model.family == "wan" else "qwen_image"), scheduler=model.scheduler) as cache:
        for steps in (12, 12, 7):
            model.run(steps, CFG[model.family])
    assert [r.steps for r in cache.runs] == [list(range(12)), list(range(12)), list(range(7))]
    assert cache.runs[0].computed == cache.runs[1].computed


# -- 3. calibration files: the same format as the nodes, both ways -----------------------------------------------
@pytest.fixture
def comfy_folder():
    """The nodes' calibration folder (conftest puts it in a temp user directory)."""
    store = calibration_store()
    os.makedirs(store.folder, exist_ok=True)
    made = []
    yield store, made
    for name in made:
        path = store.path(name)
        if os.path.exists(path):
            os.unlink(path)


def comfy_steps(model, preset, threshold, retention, k, steps):
    """The steps MagCacheApply (real ComfyUI, tiny ComfyUI FLUX) computes with ``preset``, seen from inside its block."""
    from tiny_models import sample
    patched = MagCacheApply().apply(model, preset, threshold, retention, k)[0]
    ran = []
    block = patched.model.diffusion_model.double_blocks[0]

    def hook(module, args, kwargs):
        to = kwargs["transformer_options"]
        ran.append(to["sample_sigmas"].tolist().index(float(to["sigmas"][0])))
    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        sample(patched, steps=steps, cfg=1.0)
    finally:
        handle.remove()
    return sorted(set(ran))


def test_calibration_made_here_loads_in_comfyui_nodes(comfy_folder):
    from tiny_models import tiny_flux
    store, made = comfy_folder
    made.append("from diffusers")
    model = tiny("flux")
    with calibrate(model.transformer, os.path.join(store.folder, "from diffusers.json"), scheduler=model.scheduler):
        model.run(28)
    doc = store.load("from diffusers")                     # the nodes' store, the nodes' validation
    assert doc["model"] == "flux" and doc["steps"] == 28 and len(doc["teacache"]["coefficients"]) == 5
    assert "calibration: from diffusers" in MagCacheApply.INPUT_TYPES()["required"]["preset"][0]
    assert "calibration: from diffusers" in TeaCacheApply.INPUT_TYPES()["required"]["preset"][0]
    comfy_flux = tiny_flux()
    comfy_curves = resolve_curves(detect(comfy_flux), comfy_flux, "calibration: from diffusers", None)[0]
    comfy_poly = resolve_coefficients(detect(comfy_flux), comfy_flux, "calibration: from diffusers")[0]
    path = store.path("from diffusers")
    with apply_magcache(model.transformer, calibration=path, threshold=0.05, retention_ratio=0.1, max_skip_steps=3,
                        scheduler=model.scheduler) as here:
        model.run(28)
    with apply_teacache(model.transformer, calibration=path, scheduler=model.scheduler) as tea:
        pass
    assert here.config.curves == comfy_curves == curves_of(doc)
    assert tuple(comfy_poly) == tea.config.params.coefficients == tuple(doc["teacache"]["coefficients"])
    rule = computed_steps(MagCacheParams(0.05, 0.1, 3), {COND: doc["mag_ratios"]["cond"]}, 28)
    in_comfy = comfy_steps(comfy_flux, "calibration: from diffusers", 0.05, 0.1, 3, 28)
    print(f"\nthe diffusers calibration at 0.05 / 0.1 / K 3: diffusers {here.last_run.computed}, ComfyUI {in_comfy}")
    assert here.last_run.computed == in_comfy == rule
    assert len(rule) < 28


def test_calibration_made_in_comfyui_loads_here(comfy_folder):
    from tiny_models import sample, tiny_flux
    store, made = comfy_folder
    made.append("from comfyui")
    comfy_flux = tiny_flux()
    sample(MagCacheCalibrate().calibrate(comfy_flux, "from comfyui")[0], steps=20, cfg=1.0)
    path = store.path("from comfyui")
    doc = store.load("from comfyui")
    model = tiny("flux")
    with apply_magcache(model.transformer, calibration=path, threshold=0.05, retention_ratio=0.1, max_skip_steps=3,
                        scheduler=model.scheduler) as here:
        model.run(20)
    with apply_teacache(model.transformer, calibration=path, rel_l1_thresh=0.3, scheduler=model.scheduler) as tea:
        pass
    comfy_curves = resolve_curves(detect(comfy_flux), comfy_flux, "calibration: from comfyui", None)[0]
    assert here.config.curves == comfy_curves == curves_of(doc)
    assert tea.config.params.coefficients == tuple(doc["teacache"]["coefficients"])
    rule = computed_steps(MagCacheParams(0.05, 0.1, 3), {COND: doc["mag_ratios"]["cond"]}, 20)
    in_comfy = comfy_steps(comfy_flux, "calibration: from comfyui", 0.05, 0.1, 3, 20)
    print(f"\nthe ComfyUI calibration at 0.05 / 0.1 / K 3: diffusers {here.last_run.computed}, ComfyUI {in_comfy}")
    assert here.last_run.computed == in_comfy == rule
    assert len(rule) < 20


def test_calibration_of_another_model_or_broken_file_is_refused(comfy_folder, tmp_path):
    store, made = comfy_folder
    made.append("wan made")
    wan = tiny("wan")
    with calibrate(wan.transformer, os.path.join(store.folder, "wan made.json"), scheduler=wan.scheduler):
        wan.run(6, cfg=True)
    flux = tiny("flux")
    before = snapshot(flux.transformer)
    with pytest.raises(MagCacheInputError, match=r"^calibration: calibration 'wan made' was made on a wan model, this "
                                                 r"transformer is FLUX\.1"):
        apply_magcache(flux.transformer, calibration=store.path("wan made"), scheduler=flux.scheduler)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({**json.loads(Path(store.path("wan made")).read_text()), "version": 7}))
    with pytest.raises(MagCacheInputError, match=r"^calibration: calibration file .*broken\.json is invalid: 'version'"):
        apply_magcache(wan.transformer, calibration=broken, scheduler=wan.scheduler)
    assert same_state(snapshot(flux.transformer), before)


def test_a_calibration_stopped_early_is_not_saved(tmp_path):
    model = tiny("flux")
    with calibrate(model.transformer, tmp_path / "partial.json", scheduler=model.scheduler) as handle:
        model.run(10, callback_on_step_end=lambda pipe, i, t, kw: (setattr(pipe, "_interrupt", i == 4) or {}))
    assert handle.last_run.saved is None and "saw 5 of the schedule's 10 steps" in handle.last_run.notice
    assert not (tmp_path / "partial.json").exists()


# -- errors: named, before anything runs ---------------------------------------------------------------------------
@pytest.mark.parametrize("call, input_name, words", [
    (lambda m: apply_magcache(torch.nn.Linear(2, 2), "flux", scheduler=m.scheduler), "transformer",
     "torch.nn.modules.linear.Linear is not supported; supported diffusers transformers: FluxTransformer2DModel, "
     "WanTransformer3DModel, QwenImageTransformer2DModel"),
    (lambda m: apply_magcache(m.pipe, "flux", scheduler=m.scheduler), "transformer", "pass its transformer"),
    (lambda m: apply_magcache(m.transformer, "wan2.1_t2v_1.3B", scheduler=m.scheduler), "preset",
     "'wan2.1_t2v_1.3B' is a Wan 2.1 / 2.2 preset; this model is FLUX.1 (its presets: flux, flux_kontext)"),
    (lambda m: apply_magcache(m.transformer, "flux_dev", scheduler=m.scheduler), "preset",
     "unknown preset 'flux_dev'; choose a FLUX.1 preset (flux, flux_kontext) or ratios=[...] or calibration=<file>"),
    (lambda m: apply_magcache(m.transformer, scheduler=m.scheduler), "preset", "give exactly one of preset, ratios"),
    (lambda m: apply_magcache(m.transformer, "flux", ratios=[1.0, 1.0], scheduler=m.scheduler), "ratios",
     "got preset and ratios"),
    (lambda m: apply_magcache(m.transformer, "flux", threshold=0.7, scheduler=m.scheduler), "threshold",
     "got 0.7; expected a number from 0.0 to 0.5"),
    (lambda m: apply_magcache(m.transformer, "flux", threshold=float("nan"), scheduler=m.scheduler), "threshold", "nan"),
    (lambda m: apply_magcache(m.transformer, "flux", max_skip_steps=2.5, scheduler=m.scheduler), "max_skip_steps",
     "a whole number"),
    (lambda m: apply_magcache(m.transformer, ratios=[1.0, -1.0], scheduler=m.scheduler), "ratios", "must be > 0"),
    (lambda m: apply_magcache(m.transformer, "flux", scheduler=None), "scheduler", "pipe.scheduler"),
    (lambda m: apply_magcache(m.transformer, "flux", scheduler=[1.0, 2.0]), "scheduler", "falling"),
    (lambda m: apply_magcache(m.transformer, "flux", cache_device="gpu", scheduler=m.scheduler), "cache_device", "'cpu'"),
    (lambda m: apply_magcache(m.transformer, "flux", skipped_steps="ratio", scheduler=m.scheduler), "skipped_steps",
     "got 'ratio'; expected one of reuse, extrapolate"),
    (lambda m: apply_teacache(m.transformer, "flux", skipped_steps=None, scheduler=m.scheduler), "skipped_steps",
     "expected one of reuse, extrapolate"),
    (lambda m: apply_teacache(m.transformer, "flux", rel_l1_thresh=3.0, scheduler=m.scheduler), "rel_l1_thresh",
     "from 0.0 to 2.0"),
    (lambda m: apply_teacache(m.transformer, coefficients=[1.0], scheduler=m.scheduler), "coefficients", "2-12 numbers"),
    (lambda m: apply_magcache(m.transformer, calibration="nowhere/none.json", scheduler=m.scheduler), "calibration",
     "no calibration named 'none'"),
    (lambda m: calibrate(m.transformer, "out/bad/..name.json", scheduler=m.scheduler), "path", "not a valid calibration name"),
    (lambda m: calibrate(m.transformer, "out/name.txt", scheduler=m.scheduler), "path", "<name>.json"),
])
def test_bad_inputs_are_named_before_anything_runs(call, input_name, words):
    model = tiny("flux")
    model.run(2)
    before = snapshot(model.transformer)
    with pytest.raises(MagCacheInputError) as e:
        call(model)
    assert e.value.input_name == input_name and words in str(e.value), str(e.value)
    assert same_state(snapshot(model.transformer), before)


def test_teacache_on_qwen_and_second_apply_are_refused():
    qwen = tiny("qwen")
    with pytest.raises(MagCacheInputError, match=r"^transformer: Qwen-Image has no TeaCache input"):
        apply_teacache(qwen.transformer, coefficients=[1.0, 0.0], scheduler=qwen.scheduler)
    with apply_magcache(qwen.transformer, "qwen_image", scheduler=qwen.scheduler):
        with pytest.raises(MagCacheInputError, match=r"^transformer: already has a comfyui-magcache cache"):
            apply_magcache(qwen.transformer, "qwen_image", scheduler=qwen.scheduler)
        qwen.run(4, cfg=True)                      # the first still works


def test_wrong_scheduler_is_a_clear_error():
    model = tiny("flux")
    other = FlowMatchEulerDiscreteScheduler(shift=3.0)
    other.set_timesteps(7)
    with apply_magcache(model.transformer, "flux", scheduler=other):
        with pytest.raises(MagCacheInputError, match=r"^scheduler: FluxTransformer2DModel was called at timestep "
                                                     r".*pass the scheduler that drives this pipeline"):
            model.run(12)


def test_teacache_support_is_the_strategies():
    from comfyui_magcache.diffusers_api.architectures import ARCHITECTURES
    for arch in ARCHITECTURES.values():
        assert (arch.modulated is not None) == (arch.strategy.modulated_input is not BlockStrategy.modulated_input)
    assert SUPPORTED == ("FluxTransformer2DModel", "WanTransformer3DModel", "QwenImageTransformer2DModel")


# -- 4. imports: ComfyUI loading the pack imports no diffusers; the API runs without ComfyUI -----------------------
def run_python(code: str, cwd) -> dict:
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_comfyui_loading_the_pack_does_not_import_diffusers(tmp_path):
    """ComfyUI's own loader (nodes.load_custom_node) on this folder, in a fresh interpreter."""
    sys.path.insert(0, str(ROOT / "demo"))
    from comfyui_magcache_demo.tiny_wan import comfyui_path
    code = textwrap.dedent(f"""
        import asyncio, inspect, json, sys
        sys.path.insert(0, {str(comfyui_path())!r})
        import comfy.cli_args
        comfy.cli_args.args.cpu = True            # as conftest (bench/quality.py): no GPU here
        import nodes, folder_paths
        folder_paths.set_user_directory({str(tmp_path)!r})
        def diffusers_loaded():
            return sorted(m for m in sys.modules if m == "diffusers" or m.startswith("diffusers."))
        before = diffusers_loaded()
        loaded = nodes.load_custom_node({str(ROOT)!r})
        if inspect.isawaitable(loaded):
            loaded = asyncio.run(loaded)
        after = diffusers_loaded()
        ours = sorted(k for k, v in nodes.NODE_CLASS_MAPPINGS.items() if v.__module__.startswith({str(ROOT)!r}))
        import diffusers                          # the probe sees an import when there is one
        print(json.dumps({{"loaded": loaded, "ours": ours, "before": before, "after": after,
                          "probe": diffusers_loaded()[:1]}}))
    """)
    result = run_python(code, tmp_path)
    assert result["loaded"] is True
    assert result["ours"] == ["MagCacheApply", "MagCacheCalibrate", "MagCacheRatios", "TeaCacheApply"]
    assert result["before"] == [] and result["after"] == []
    assert result["probe"] == ["diffusers"]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- diffusers-example:start -->\s*```python\n(.*?)```\s*<!-- diffusers-example:end -->",
                      text, re.S)
    assert found, "README: the diffusers example between its markers"
    return found.group(1)


def test_readme_example_runs_without_comfyui(tmp_path):
    """The README's example, as a script outside ComfyUI: ComfyUI's modules cannot be imported at all, the package
    is imported as an installed one would be, and importing the API imports no diffusers."""
    code = textwrap.dedent(f"""
        import importlib.abc, importlib.util, json, sys
        class NoComfyUI(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("comfy", "folder_paths", "nodes", "comfy_extras", "comfy_api"):
                    raise ImportError("no ComfyUI here: " + name)
        sys.meta_path.insert(0, NoComfyUI())
        spec = importlib.util.spec_from_file_location("comfyui_magcache", {str(ROOT / "__init__.py")!r},
                                                      submodule_search_locations=[{str(ROOT)!r}])
        sys.modules["comfyui_magcache"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        import comfyui_magcache.diffusers_api
        api_alone = sorted(m for m in sys.modules if m.split(".")[0] == "diffusers")
    """) + readme_example() + textwrap.dedent("""
        print(json.dumps({"api_alone": api_alone, "nodes": hasattr(module, "NODE_CLASS_MAPPINGS"),
                          "computed": cache.last_run.computed,
                          "comfy": sorted(m for m in sys.modules if m.split(".")[0] in ("comfy", "folder_paths"))}))
    """)
    result = run_python(code, tmp_path)
    assert result["api_alone"] == [] and result["nodes"] is False and result["comfy"] == []
    assert len(result["computed"]) < 28
    assert (tmp_path / "calibrations" / "my_flux.json").exists()
