"""The pack inside real ComfyUI 0.3.75: tiny FLUX and Wan 2.1 built from ComfyUI's own classes."""
import contextlib
import copy
import json
import os

import pytest
import torch

import comfy.model_management
import comfy.patcher_extension
from comfyui_magcache.magcache_core import MagCacheInputError
from comfyui_magcache.nodes.magcache_nodes import (MagCacheApply, MagCacheCalibrate, MagCacheRatios,
                                                   calibration_store)
from comfyui_magcache.nodes.patching import KEY, RUN_KEY, BlockPatch
from tiny_models import sample, tiny_flux, tiny_wan

APPLY, CALIBRATE, RATIOS = MagCacheApply(), MagCacheCalibrate(), MagCacheRatios()


def apply(model, preset="auto", threshold=0.24, retention=0.2, k=4, **kw):
    return APPLY.apply(model, preset, threshold, retention, k, **kw)[0]


def custom(obj):
    return RATIOS.parse(json.dumps(obj))[0]


class BlockSteps:
    """Which denoising steps ran the first transformer block, seen from inside the real block."""

    def __init__(self, model):
        dm = model.model.diffusion_model
        block = dm.double_blocks[0] if hasattr(dm, "double_blocks") else dm.blocks[0]
        self.calls = []
        self.handle = block.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        to = kwargs["transformer_options"]
        sig = to["sample_sigmas"].tolist()
        self.calls.append((sig.index(float(to["sigmas"][0])), tuple(to["cond_or_uncond"])))

    @property
    def steps(self):
        return sorted({s for s, _ in self.calls})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture(scope="module")
def flux():
    return tiny_flux()


@pytest.fixture(scope="module")
def wan():
    return tiny_wan()


@contextlib.contextmanager
def force_split(model):
    """Make ComfyUI run cond and uncond as separate forwards (its batching asks memory_required)."""
    old = model.model.memory_usage_factor
    model.model.memory_usage_factor = 1e12
    try:
        yield model
    finally:
        model.model.memory_usage_factor = old


# -- 1. exactness when nothing is skipped -------------------------------------------------------
@pytest.mark.parametrize("make", [tiny_flux, tiny_wan], ids=["flux", "wan"])
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_threshold_zero_and_calibration_are_bit_identical(make, cfg, tmp_path):
    model = make()
    ref = sample(model, steps=6, cfg=cfg)
    preset = "flux" if make is tiny_flux else "wan2.1_t2v_1.3B"
    assert torch.equal(sample(apply(model, preset, threshold=0.0, retention=0.0), steps=6, cfg=cfg), ref)
    cal = CALIBRATE.calibrate(model, f"exact_{make.__name__}_{int(cfg)}")[0]
    assert torch.equal(sample(cal, steps=6, cfg=cfg), ref)
    assert not torch.equal(sample(apply(model, preset, threshold=0.5, retention=0.0), steps=6, cfg=cfg), ref)


# -- 2. the schedule inside real sampling ---------------------------------------------------------
def test_flux_schedule_28_steps_matches_hand_formula(flux):
    with BlockSteps(flux) as seen:
        sample(apply(flux, "flux", 0.24, 0.1, 5), steps=28, cfg=1.0)
    assert seen.steps == [0, 1, 3, 6, 10, 16, 22, 26]
    assert len(seen.calls) == 8                       # one forward per computed step, none when skipped


def test_wan_interpolated_50_to_20_with_cfg(wan):
    with BlockSteps(wan) as seen:
        sample(apply(wan, "wan2.1_t2v_1.3B", 0.12, 0.2, 4), steps=20, cfg=5.0)
    assert seen.steps == [0, 1, 2, 3, 8, 13, 16, 18, 19]     # test_core: by hand from the 20-step curve
    assert all(set(k) == {0, 1} for _, k in seen.calls)      # cond and uncond batched together


@pytest.mark.parametrize("split", [False, True], ids=["batched", "split"])
def test_cfg_case_each_cond_on_its_own_curve(wan, split):
    ratios = custom({"cond": [1, 1, 1, 1, 1, 1.5, 1, 1], "uncond": [1, 1.05, 1.05, 1.3, 1, 1, 1, 1]})
    with force_split(wan) if split else contextlib.nullcontext(wan) as model:
        with BlockSteps(model) as seen:
            sample(apply(model, threshold=0.2, retention=0.0, k=3, ratios=ratios), steps=8, cfg=4.0)
    assert seen.steps == [0, 3, 5]                            # test_core: cond [0,4,5], uncond [0,3,7], both [0,3,5]
    assert {len(k) for _, k in seen.calls} == ({1} if split else {2})


# -- 3. the residual path -----------------------------------------------------------------------
@pytest.mark.parametrize("make", [tiny_flux, tiny_wan], ids=["flux", "wan"])
def test_skipped_step_is_final_layer_of_input_plus_stored_residual(make):
    model = make()
    dm = model.model.diffusion_model
    embed, head = (dm.img_in, dm.final_layer) if hasattr(dm, "img_in") else (dm.patch_embedding, dm.head)
    log = []
    h1 = embed.register_forward_hook(lambda m, a, out: log.append(["in", out.detach().clone()]))
    h2 = head.register_forward_pre_hook(lambda m, a: log.append(["head", a[0].detach().clone()]))
    try:
        with BlockSteps(model) as blocks:
            # cond and uncond differ, so per-cond residuals matter; skip steps 1, 2 and 4, 5 (flat curve, K 2).
            sample(apply(model, threshold=0.5, retention=0.0, k=2, ratios=custom([1.0] * 6), skipped_steps="reuse"),
                   steps=6, cfg=3.0)
    finally:
        h1.remove(), h2.remove()
    assert blocks.steps == [0, 3]
    calls = [(log[i][1], log[i + 1][1]) for i in range(0, len(log), 2)]
    assert [log[i][0] for i in range(0, len(log), 2)] == ["in"] * 6 and len(calls) == 6
    if calls[0][0].ndim == 5:                          # Wan embeds to (B, C, T, H, W); blocks see tokens
        calls = [(x.flatten(2).transpose(1, 2), h) for x, h in calls]
    residual = None
    for step, (x_in, head_in) in enumerate(calls):
        if step in (0, 3):                             # computed: remember what the blocks added
            residual = head_in - x_in
            assert residual.abs().max() > 0
        else:                                          # skipped: head sees input + the stored residual
            assert torch.equal(head_in, x_in + residual), step
    assert not torch.equal(calls[0][1] - calls[0][0], calls[3][1] - calls[3][0])


# -- 4. CFG batching, two samplers, interrupts, resolution ---------------------------------------
@pytest.mark.parametrize("make", [tiny_flux, tiny_wan], ids=["flux", "wan"])
def test_batched_and_split_cfg_give_the_same_result(make):
    model = make()
    patched = apply(model, threshold=0.5, retention=0.0, k=3, ratios=custom([1.0, 1.05, 1.0, 0.95, 1.0, 1.0, 1.1, 1.0]))
    batched = sample(patched, steps=8, cfg=4.0)
    with force_split(patched) as split:
        with BlockSteps(split) as seen:
            separate = sample(split, steps=8, cfg=4.0)
    assert {len(k) for _, k in seen.calls} == {1} and len(seen.steps) < 8
    torch.testing.assert_close(separate, batched, rtol=1e-5, atol=1e-5)   # same math, other batch shapes
    assert (sample(model, steps=8, cfg=4.0) - batched).abs().max() > 1e-4  # and something was skipped


def test_two_samplers_sharing_one_patched_model_do_not_share_state(flux):
    """ComfyUI runs a graph's samplers one after another; each must see a fresh run."""
    ratios = custom([1.0] * 8)
    patched = apply(flux, threshold=0.5, retention=0.0, k=3, ratios=ratios)
    fresh = lambda: apply(flux, threshold=0.5, retention=0.0, k=3, ratios=ratios)  # noqa: E731
    a = sample(patched, steps=8, seed=10)
    b = sample(patched, steps=5, seed=11, size=24)                   # other seed, steps, resolution
    a_again = sample(patched, steps=8, seed=10)
    assert torch.equal(a, sample(fresh(), steps=8, seed=10)) and torch.equal(a_again, a)
    assert torch.equal(b, sample(fresh(), steps=5, seed=11, size=24))
    assert RUN_KEY not in patched.model_options["transformer_options"]


def test_interrupted_run_leaves_nothing_behind(flux):
    patched = apply(flux, threshold=0.5, retention=0.0, k=3, ratios=custom([1.0] * 8))
    before = copy.copy(patched.model_options["transformer_options"])
    ref = sample(patched, steps=8)

    def interrupt(step, *_):
        if step == 3:
            raise comfy.model_management.InterruptProcessingException()
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        sample(patched, steps=8, callback=interrupt)
    assert RUN_KEY not in patched.model_options["transformer_options"]
    assert patched.model_options["transformer_options"].keys() == before.keys()
    assert torch.equal(sample(patched, steps=8), ref)


def test_new_resolution_after_old_one(wan):
    patched = apply(wan, threshold=0.5, retention=0.0, k=3, ratios=custom([1.0] * 6))
    sample(patched, steps=6, size=16)
    fresh = apply(wan, threshold=0.5, retention=0.0, k=3, ratios=custom([1.0] * 6))
    assert torch.equal(sample(patched, steps=6, size=24), sample(fresh, steps=6, size=24))


# -- 5. calibration -----------------------------------------------------------------------------
def test_calibrate_at_50_then_apply_at_20(wan):
    calibrating = CALIBRATE.calibrate(wan, "tiny wan 50")[0]
    sample(calibrating, steps=50, cfg=4.0)
    path = calibration_store().path("tiny wan 50")
    doc = json.load(open(path))
    assert doc["model"] == "wan" and doc["steps"] == 50
    assert set(doc["mag_ratios"]) == {"cond", "uncond"}
    cond, uncond = doc["mag_ratios"]["cond"], doc["mag_ratios"]["uncond"]
    assert len(cond) == len(uncond) == 50 and cond[0] == 1.0 and cond != uncond
    assert all(r > 0 for r in cond) and len(doc["stats"]["cond"]["cos"]) == 50
    assert "calibration: tiny wan 50" in MagCacheApply.INPUT_TYPES()["required"]["preset"][0]

    from comfyui_magcache.magcache_core import MagCacheParams, RatioCurves, computed_steps
    curves = RatioCurves.from_json(doc["mag_ratios"])
    expected = computed_steps(MagCacheParams(0.3, 0.2, 3), {k: curves.for_steps(k, 20) for k in (0, 1)}, 20, kinds=(0, 1))
    with BlockSteps(wan) as seen:
        sample(apply(wan, "calibration: tiny wan 50", 0.3, 0.2, 3), steps=20, cfg=4.0)
    assert seen.steps == expected and len(expected) < 20


def test_calibration_not_saved_when_interrupted(wan):
    calibrating = CALIBRATE.calibrate(wan, "interrupted one")[0]

    def interrupt(step, *_):
        raise comfy.model_management.InterruptProcessingException()
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        sample(calibrating, steps=4, callback=interrupt)
    assert not os.path.exists(calibration_store().path("interrupted one"))


# -- 7. bad input -------------------------------------------------------------------------------
def _snapshot(model):
    return (repr(model.model_options), {k: {kk: list(vv) for kk, vv in v.items()} for k, v in model.wrappers.items()})


@pytest.mark.parametrize("kwargs, input_name", [
    (dict(preset="no_such_preset"), "preset"),
    (dict(preset="wan2.1_t2v_1.3B"), "preset"),             # a Wan preset on FLUX
    (dict(preset="calibration: ../../etc/passwd"), "preset"),
    (dict(preset="calibration: never_made"), "preset"),
    (dict(threshold=float("nan")), "threshold"),
    (dict(threshold=-0.1), "threshold"),
    (dict(retention=1.5), "retention_ratio"),
    (dict(k=2.5), "max_skip_steps"),
    (dict(start_percent=0.8, end_percent=0.2), "end_percent"),
    (dict(cache_device="tpu"), "cache_device"),
    (dict(ratios=[1.0, 1.1]), "ratios"),                    # a raw list, not MAGCACHE_RATIOS
])
def test_bad_apply_inputs_name_the_input_and_leave_model_untouched(flux, kwargs, input_name):
    before = _snapshot(flux)
    with pytest.raises(MagCacheInputError) as e:
        apply(flux, **kwargs)
    assert str(e.value).startswith(input_name + ":"), str(e.value)
    assert _snapshot(flux) == before


@pytest.mark.parametrize("text, words", [("[]", "empty"), ("[1.0, NaN]", "finite"), ("[1.0, 0.0]", "> 0"),
                                         ("[1.0, -2]", "> 0"), ('"1.0"', "list"), ("{\"x\": [1]}", "keys"),
                                         ("one, two", "comma-separated"), ("7", "list")])
def test_bad_ratios_text(text, words):
    with pytest.raises(MagCacheInputError) as e:
        RATIOS.parse(text)
    assert str(e.value).startswith("ratios") and words in str(e.value)


def test_calibrate_bad_inputs_name_the_input():
    # 'auto' on models without a published curve: tests/test_auto.py.
    with pytest.raises(MagCacheInputError, match=r"^model: expected a ComfyUI MODEL, got str"):
        CALIBRATE.calibrate("unet", "x")
    with pytest.raises(MagCacheInputError, match=r"^calibration_name: "):
        CALIBRATE.calibrate(tiny_wan(), "../escape")


def test_calibration_from_other_architecture_is_refused(flux, wan):
    sample(CALIBRATE.calibrate(wan, "wan only")[0], steps=3)
    with pytest.raises(MagCacheInputError, match="made on a wan model, this model is FLUX.1"):
        apply(flux, "calibration: wan only")


# -- composition --------------------------------------------------------------------------------
def test_reapplying_replaces_and_foreign_block_patches_are_kept(flux):
    calls = []

    def foreign(args, extra):
        calls.append(1)
        out = extra["original_block"](args)
        return {"img": out["img"] * 1.01, "txt": out["txt"]}
    with_foreign = flux.clone()
    with_foreign.set_model_patch_replace(foreign, "dit", "double_block", 0)
    ref = sample(with_foreign, steps=5)
    twice = apply(apply(with_foreign, "flux", threshold=0.4), "flux", threshold=0.0)
    assert len(twice.get_wrappers(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, KEY)) == 1
    patch = twice.model_options["transformer_options"]["patches_replace"]["dit"][("double_block", 0)]
    assert isinstance(patch, BlockPatch) and patch.prev is foreign
    calls.clear()
    assert torch.equal(sample(twice, steps=5), ref) and len(calls) == 5


def test_cpu_offload_gives_the_same_result(flux):
    ratios = custom([1.0] * 6)
    a = sample(apply(flux, threshold=0.5, retention=0.0, k=2, ratios=ratios), steps=6)
    b = sample(apply(flux, threshold=0.5, retention=0.0, k=2, ratios=ratios, cache_device="cpu"), steps=6)
    assert torch.equal(a, b)
