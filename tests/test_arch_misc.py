"""Hunyuan-DiT, Stable Audio, Hunyuan3D 2.1, SeedVR2 and MiniMax: what test_architectures.py cannot see
(TeaCache indicators read by hooks on the real modules; models that must stay whole-model cached)."""
import numpy as np
import pytest
import torch

from comfyui_magcache.magcache_core import relative_l1
from comfyui_magcache.nodes.magcache_nodes import MagCacheCalibrate, calibration_store
from comfyui_magcache.nodes.teacache_nodes import TeaCacheApply
from comfyui_magcache.strategies import detect
import tiny_zoo


def first_block_indicator_matches(name, module, steps=6, cfg=3.0):
    """Calibrate ``name`` while a hook reads the input of ``module`` (inside the first block); the indicator
    changes the calibration recorded must be those of that input, per batch row; then TeaCache at threshold
    0 on the fitted polynomial must be the uncached model, bit for bit."""
    model = tiny_zoo.build(name)
    seen = []
    handle = module(model.model.diffusion_model).register_forward_pre_hook(
        lambda mod, args: seen.append(args[0].detach().clone()))
    try:
        tiny_zoo.sample(MagCacheCalibrate().calibrate(model, f"{name} tea")[0], name, steps=steps, cfg=cfg)
    finally:
        handle.remove()
    doc = calibration_store().load(f"{name} tea")
    assert len(seen) == steps                                  # one CFG batch per step
    by_row = [[x.chunk(2)[i] for x in seen] for i in range(2)]
    expected = [[0.0] + [round(float(relative_l1(seq[t], seq[t - 1])), 6) for t in range(1, steps)] for seq in by_row]
    recorded = [doc["stats"]["cond"]["input_l1"], doc["stats"]["uncond"]["input_l1"]]
    for got, want in zip(sorted(recorded), sorted(expected)):
        assert np.allclose(got, want, rtol=1e-4, atol=2e-6), (got, want)
    assert "teacache" in doc
    exact = TeaCacheApply().apply(model, f"calibration: {name} tea", 0.0)[0]
    assert torch.equal(tiny_zoo.sample(exact, name, steps=steps, cfg=cfg), tiny_zoo.sample(model, name, steps=steps, cfg=cfg))


def test_hunyuan_dit_teacache_indicator_is_the_first_self_attention_input():
    first_block_indicator_matches("hunyuan_dit", lambda dm: dm.blocks[0].attn1)


def passthrough_patched(model, keys):
    """``model`` with a block patch on each key that only runs the original block."""
    m = model.clone()
    for kind, i in keys:
        m.set_model_patch_replace(lambda args, extra: extra["original_block"](args), "dit", kind, i)
    return m


@pytest.mark.skipif("stable_audio3" not in tiny_zoo.ZOO, reason="this ComfyUI has no Stable Audio 3")
@pytest.mark.parametrize("name, exact", [("stable_audio3", False), ("stable_audio3_nolocal", True)])
def test_stable_audio_block_patches_drop_local_conditioning(name, exact):
    """Why Stable Audio weights with to_local_embed are cached as a whole model: ComfyUI's block-patch path
    calls the layer without local_add_cond, so even a patch that only runs the block changes the output."""
    model = tiny_zoo.build(name)
    ref = tiny_zoo.sample(model, name, steps=2)
    got = tiny_zoo.sample(passthrough_patched(model, [("double_block", i) for i in range(2)]), name, steps=2)
    assert torch.equal(got, ref) == exact
    assert detect(model).name == ("stable_audio" if exact else "generic")


@pytest.mark.skipif("seedvr2" not in tiny_zoo.ZOO, reason="this ComfyUI has no SeedVR2")
def test_seedvr2_output_layer_needs_the_first_block():
    """Why SeedVR2's span starts at block 1: with every block passed through (as a skipped call would),
    the output adaLN misses what block 0 leaves in the model's per-call memo and the model fails; with
    block 0 running and the rest passed through, it runs."""
    model = tiny_zoo.build("seedvr2")
    keys = [("block", i) for i in range(4)]

    def through(model, skipped):
        m = model.clone()
        for kind, i in skipped:
            m.set_model_patch_replace(lambda args, extra: {k: args[k] for k in ("vid", "txt", "vid_shape", "txt_shape")},
                                      "dit", kind, i)
        return m
    with pytest.raises(RuntimeError, match="must match the size"):
        tiny_zoo.sample(through(model, keys), "seedvr2", steps=1)
    assert torch.isfinite(tiny_zoo.sample(through(model, keys[1:]), "seedvr2", steps=1)).all()
    assert detect(model).block_keys == keys[1:]


@pytest.mark.skipif(tiny_zoo.since("MiniMaxMusic3") is None, reason="this ComfyUI has no MiniMax Music 3")
def test_minimax_music3_goes_generic():
    """MiniMax Music 3's network has fixed full-size layers (no tiny version; built here on the meta device) and
    no block patches: the whole model is cached."""
    import comfy.model_patcher
    meta = torch.device("meta")
    model = tiny_zoo.since("MiniMaxMusic3")({"audio_model": "minimax_music3"}).get_model({}, device=meta)
    s = detect(comfy.model_patcher.ModelPatcher(model, load_device=meta, offload_device=meta))
    assert s.name == "generic" and s.level == "model"
