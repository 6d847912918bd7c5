"""Kandinsky 5's block patches get an ``original_block`` that raises TypeError (ComfyUI 0.33 calls the block
with keywords its forward does not take); the pack runs the block itself (strategies/kandinsky5.py), for its
own patch and for any patch set on the block before it."""
import pytest
import torch

from comfyui_magcache.nodes.magcache_nodes import MagCacheApply, MagCacheRatios
import tiny_zoo

pytestmark = pytest.mark.skipif("kandinsky5_image" not in tiny_zoo.ZOO, reason="this ComfyUI has no Kandinsky 5")


def test_comfyui_original_block_cannot_run_the_block():
    """The reason for the strategy's original_block: if ComfyUI fixes this, the workaround can go."""
    model = tiny_zoo.build("kandinsky5_image").clone()
    model.set_model_patch_replace(lambda args, extra: extra["original_block"](args), "dit", "double_block", 0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'x'"):
        tiny_zoo.sample(model, "kandinsky5_image", steps=1)


def test_patches_set_before_magcache_run_the_block_through_the_pack():
    model = tiny_zoo.build("kandinsky5_image")
    ref = tiny_zoo.sample(model, "kandinsky5_image", steps=3)
    calls = []

    def foreign(args, extra):
        calls.append(1)
        return extra["original_block"](args)
    with_foreign = model.clone()
    with_foreign.set_model_patch_replace(foreign, "dit", "double_block", 1)
    ratios = MagCacheRatios().parse("[1.0, 1.0, 1.0]")[0]
    patched = MagCacheApply().apply(with_foreign, "auto", 0.0, 0.0, 2, ratios=ratios)[0]
    assert torch.equal(tiny_zoo.sample(patched, "kandinsky5_image", steps=3), ref)
    assert len(calls) >= 3                                # every step (cond and uncond may be one call)
