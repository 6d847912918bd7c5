"""What real graphs do to the cache entries (issue "Robustness", items 1 and 3): area conds (the uncond copy
ComfyUI makes for an area cond carries the cond's uuid), Skip Layer Guidance and other extra model calls at the
same step, guiders with a third cond. A cache entry must mean one thing -- which cond, which role of the call --
however ComfyUI batches, splits, copies or repeats the calls."""
import json
import os

import pytest
import torch

import comfy.sample
import comfy.samplers
import node_helpers
from comfyui_magcache.nodes.magcache_nodes import MagCacheApply, MagCacheCalibrate, MagCacheRatios, calibration_store
from test_comfy_magcache import BlockSteps, force_split
from tiny_models import conds, latent, tiny_flux, tiny_wan

STEPS = 8


def flat(n=STEPS):
    return MagCacheRatios().parse(json.dumps([1.0] + [0.97] * (n - 1)))[0]


def magcache(model):
    """Skips about every other step at this curve (threshold 0.05, retention 0.2, K 2)."""
    return MagCacheApply().apply(model, "auto", 0.05, 0.2, 2, ratios=flat())[0]


def with_areas(cond, n):
    """``cond`` plus ``n`` area copies of it (ConditioningSetArea), left half / right half."""
    out = list(cond)
    for i in range(n):
        out += node_helpers.conditioning_set_values(cond, {"area": (2, 1, 0, i), "strength": 1.0,
                                                           "set_area_to_bounds": False})
    return out


def run(model, positive=None, negative=None, cfg=4.0, sampler="euler"):
    lat = latent(model)
    if positive is None:
        positive, negative = conds(model)
    noise = comfy.sample.prepare_noise(lat, 3)
    return comfy.sample.sample(model, noise, STEPS, cfg, sampler, "simple", positive, negative, lat,
                               disable_pbar=True, seed=3)


# -- item 1: area conds ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [tiny_wan, tiny_flux], ids=["wan", "flux"])
@pytest.mark.parametrize("areas", [1, 2])
def test_area_conds_batched_equals_split(make, areas):
    model = make(seed=4)
    pos, neg = conds(model)
    pos = with_areas(pos, areas)
    ref_b = run(model, pos, neg)
    with force_split(model) as split:
        ref_s = run(split, pos, neg)
    noise_floor = (ref_b - ref_s).abs().max().item()            # what ComfyUI itself gives batched vs split
    patched = magcache(model)
    with BlockSteps(model) as seen:
        out_b = run(patched, pos, neg)
    assert len(seen.steps) < STEPS                               # it did skip
    with force_split(patched) as split:
        out_s = run(split, pos, neg)
    assert (out_b - out_s).abs().max().item() <= max(10 * noise_floor, 1e-4)


def test_area_conds_calibration_batched_equals_split():
    model = tiny_wan(seed=4)
    pos, neg = conds(model)
    pos = with_areas(pos, 2)
    curves = []
    for split in (False, True):
        name = f"area {'split' if split else 'batched'}"
        cal = MagCacheCalibrate().calibrate(model, name)[0]
        if split:
            with force_split(cal) as m:
                run(m, pos, neg)
        else:
            run(cal, pos, neg)
        curves.append(json.load(open(calibration_store().path(name)))["mag_ratios"])
    for kind in curves[0]:
        assert curves[0][kind] == pytest.approx(curves[1][kind], abs=1e-4)


# -- item 3: Skip Layer Guidance and other extra model calls at one step ------------------------------------------

def slg(model, layer, scale):
    from comfy_extras.nodes_slg import SkipLayerGuidanceDiT
    out = SkipLayerGuidanceDiT.execute(model, scale, 0.0, 1.0, double_layers=str(layer), single_layers="")
    return out.result[0] if hasattr(out, "result") else out[0]


@pytest.mark.parametrize("layer", [0, 1])
def test_skip_layer_guidance_runs_and_batched_equals_split(layer):
    model = tiny_flux(seed=4)
    patched = slg(magcache(model), layer, 3.0)
    with BlockSteps(model) as seen:
        out_b = run(patched)
    assert torch.isfinite(out_b).all()
    with force_split(patched) as split:
        out_s = run(split)
    assert (out_b - out_s).abs().max().item() < 1e-4
    plain = magcache(model)
    with BlockSteps(model) as plain_seen:
        run(plain)
    # The extra SLG call computes where the step computes and skips where it skips: its own entry.
    assert sorted({s for s, _ in seen.calls}) == plain_seen.steps


def test_skip_layer_guidance_does_not_overwrite_the_real_conds_residual():
    """SLG at a tiny scale moves the output by about as much with the cache as without it."""
    model = tiny_flux(seed=4)
    base = run(model)
    moved_unpatched = (run(slg(model, 1, 1e-3)) - base).abs().max().item()
    cached = run(magcache(model))
    moved_cached = (run(slg(magcache(model), 1, 1e-3)) - cached).abs().max().item()
    assert moved_cached <= 10 * moved_unpatched + 1e-6, (moved_cached, moved_unpatched)


def test_extra_discarded_model_call_does_not_change_the_cached_output():
    model = tiny_wan(seed=4)
    cached = run(magcache(model))
    m = magcache(model)

    def wrapper(apply_model, args):
        out = apply_model(args["input"], args["timestep"], **args["c"])
        apply_model(args["input"] * 0.5, args["timestep"], **args["c"])     # an extra call after it, thrown away
        return out
    m.set_model_unet_function_wrapper(wrapper)
    assert torch.allclose(run(m), cached, atol=1e-5)


@pytest.mark.parametrize("guider", ["perpneg", "dualcfg"])
def test_third_cond_guiders_calibrate_saves_and_magcache_runs(guider):
    from comfy_extras import nodes_perpneg
    model = tiny_wan(seed=4)
    pos, neg = conds(model)
    empty = conds(model, seed=9)[0]
    name = f"third cond {guider}"
    path = calibration_store().path(name)
    if os.path.exists(path):
        os.remove(path)

    def sample_with(m):
        if guider == "perpneg":
            g = nodes_perpneg.Guider_PerpNeg(m)
            g.set_conds(pos, neg, empty)
            g.set_cfg(4.0, 1.0)
        else:
            from comfy_extras.nodes_custom_sampler import Guider_DualCFG
            g = Guider_DualCFG(m)
            g.set_conds(pos, empty, neg)
            g.set_cfg(4.0, 2.0)
        lat = latent(model)
        sigmas = comfy.samplers.calculate_sigmas(m.get_model_object("model_sampling"), "simple", STEPS)
        return g.sample(comfy.sample.prepare_noise(lat, 3), lat, comfy.samplers.sampler_object("euler"), sigmas,
                        disable_pbar=True, seed=3)
    ref = sample_with(model)
    out = sample_with(MagCacheCalibrate().calibrate(model, name)[0])
    assert torch.equal(out, ref)
    doc = json.load(open(path))
    assert len(doc["mag_ratios"]) == 3
    assert all(len(v) == STEPS for v in doc["mag_ratios"].values())
    applied = MagCacheApply().apply(model, f"calibration: {name}", 0.05, 0.2, 2)[0]
    assert torch.isfinite(sample_with(applied)).all()
