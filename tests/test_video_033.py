"""ComfyUI 0.33 video models beyond the zoo checks: causal Wan's autoregressive sampler, whose forward
calls the blocks directly (per chunk, and at sigma 0 to fill its KV cache) and so never reaches the
block patches."""
import logging

import pytest
import torch

import comfy.sample
import comfy.samplers
from comfyui_magcache.nodes.magcache_nodes import MagCacheApply, MagCacheCalibrate, MagCacheRatios
import tiny_zoo

pytestmark = pytest.mark.skipif("wan21_causal" not in tiny_zoo.ZOO, reason="ComfyUI 0.33 model")
STEPS = 4


def ar_sample(model, name="wan21_causal"):
    lat = torch.zeros((1,) + tuple(tiny_zoo.ZOO[name].latent_shape[1:]))     # 2 latent frames: 2 AR chunks
    # cfg 1: the distilled models run so (the sampler sizes its KV cache for the latent batch, not cond + uncond)
    positive, negative = tiny_zoo.conds(name)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", STEPS).cpu()
    sampler = comfy.samplers.ksampler("ar_video", {"num_frame_per_block": 1})
    return comfy.sample.sample_custom(model, comfy.sample.prepare_noise(lat, 3), 1.0, sampler, sigmas, positive,
                                      negative, lat, disable_pbar=True, seed=3)


def test_causal_wan_ar_sampler_computes_every_call_and_says_so(caplog):
    model = tiny_zoo.build("wan21_causal")
    ref = ar_sample(model)
    flat = MagCacheRatios().parse("[1.0, 1.0, 1.0, 1.0]")[0]
    # would skip steps 1, 2 (min_steps 0: a 4-step run is cached, not left uncached as a few-step schedule)
    forced = MagCacheApply().apply(model, "auto", 0.5, 0.0, 2, ratios=flat, min_steps=0)[0]
    with caplog.at_level(logging.INFO, logger="comfyui-magcache"):
        out = ar_sample(forced)
    assert torch.equal(out, ref)
    text = caplog.text
    assert "ran without going through its block patches" in text
    assert f"computed {STEPS}/{STEPS} steps" in text and "skipped 0" in text
    assert "model calls bypassed the block patches and computed in full" in text


def test_causal_wan_ar_sampler_cannot_be_calibrated(caplog):
    """Nothing goes through the block patches there: the calibration warns and is not saved; the image is kept."""
    import logging
    import os
    from comfyui_magcache.nodes.magcache_nodes import calibration_store
    path = calibration_store().path("causal ar")
    if os.path.exists(path):
        os.remove(path)
    model = MagCacheCalibrate().calibrate(tiny_zoo.build("wan21_causal"), "causal ar")[0]
    with caplog.at_level(logging.WARNING, logger="comfyui-magcache"):
        out = ar_sample(model)
    assert torch.isfinite(out).all()
    assert any("not saved" in r.getMessage() and "no residual was recorded" in r.getMessage() and "ar_video" in
               r.getMessage() for r in caplog.records)
    assert not os.path.exists(path)
