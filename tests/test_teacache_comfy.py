"""TeaCache inside real ComfyUI: the indicator each strategy hands the rule is the tensor the model's
own first block computes, and the steps that run are the ones the published rule gives for the
modulated inputs the run actually saw (cond and uncond each on their own, a CFG batch computing
when either must).

The block-internal tensor is read by a hook on the real module (FLUX/HunyuanVideo: the input of
``img_attn.qkv``; LTX-Video: of ``attn1``), on an unpatched
re-run of each recorded model call, so it does not go through the pack's code at all.
"""
import pytest

from comfyui_magcache.magcache_core import TeaCacheParams, teacache_schedule
from comfyui_magcache.nodes.teacache_nodes import TeaCacheApply
from comfyui_magcache.strategies import detect
from test_architectures import Recorder, run_unpatched
import tiny_zoo

def internal_input(name, dm):
    """(module, getter): where the first block's modulated input shows up inside the real model."""
    if name in ("flux", "hunyuan_video"):
        return dm.double_blocks[0].img_attn.qkv, lambda args, kwargs: args[0]
    if name == "ltxv":
        return dm.transformer_blocks[0].attn1, lambda args, kwargs: args[0]
    raise KeyError(name)


# Not Wan: its published polynomials (fitted on e0 of trained models) are strongly negative for the large
# e0 changes of a random tiny model (-150 to -11000 at 30 steps), so every step but the first and last
# skips at any threshold and no partial schedule exists to compare. Wan's indicator is the ``vec`` its
# block patch receives, which ComfyUI passes to the block as ``e``.
CASES = [("flux", "flux", 1.0, 10), ("hunyuan_video", "hunyuan_video", 1.0, 10), ("ltxv", "ltxv", 3.0, 10)]


@pytest.mark.parametrize("name, preset, cfg, STEPS", CASES, ids=[c[0] for c in CASES])
def test_teacache_runs_the_steps_the_rule_gives_for_the_real_modulated_inputs(name, preset, cfg, STEPS):
    model = tiny_zoo.build(name)
    dm = model.model.diffusion_model
    s = detect(model)
    coeffs = s.tea_presets[preset].params.coefficients
    block = getattr(dm, s.double_blocks)[0]
    found = None
    for thresh in (0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2):     # the first that skips some steps but not all
        rec, block_calls = Recorder(), []
        # The recorder appends after a call returns: a block call during model call k sees k recorded calls.
        handle = block.register_forward_pre_hook(lambda mod, args: block_calls.append(len(rec.calls)))
        try:
            tiny_zoo.sample(TeaCacheApply().apply(rec.attach(model), preset, thresh)[0], name, steps=STEPS, cfg=cfg)
        finally:
            handle.remove()
        ran = sorted({rec.calls[i][0] for i in block_calls})          # steps whose blocks ran
        if 2 < len(ran) < STEPS - 1:
            found = thresh
            break
    assert found is not None, "no threshold gave a partial schedule"

    # The modulated input the real block computes, for every recorded call, by entry.
    module, getter = internal_input(name, dm)
    mods: dict = {}

    def hook(mod, args, kwargs):
        hook.value = getter(args, kwargs).detach().clone()
    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for step in range(STEPS):
            for conds_key, call in rec.at(step).items():
                run_unpatched(model, call, {})
                for kind, chunk in zip(conds_key, hook.value.chunk(len(conds_key))):
                    mods.setdefault(kind, []).append(chunk)
    finally:
        handle.remove()
    params = TeaCacheParams(found, coeffs)
    expected = sorted(set().union(*(teacache_schedule(params, seq) for seq in mods.values())))

    assert ran == expected
    assert 0 in expected and STEPS - 1 in expected and len(expected) < STEPS
