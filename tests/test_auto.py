"""``preset: auto`` on models without published numbers, in real ComfyUI: the first run of a model, sampler
and schedule calibrates itself (every step computed, output that of the uncached model) and saves under an
automatic name; the next runs skip with it; another checkpoint, weight patch, step count, scheduler or sampler
does not reuse it. Tiny Wan 2.1 (width 64: no published curve at that width), a tiny SD1.5 UNet (whole model)."""
import json
import logging

import pytest
import torch

import folder_paths
from comfyui_magcache.magcache_core import MagCacheInputError, MagCacheParams, computed_steps
from comfyui_magcache.magcache_core.fingerprint import Fingerprint
from comfyui_magcache.magcache_core.storage import curves_of
from comfyui_magcache.nodes.auto import weights_fingerprint
from comfyui_magcache.nodes.magcache_nodes import MagCacheApply, MagCacheCalibrate, calibration_store
from comfyui_magcache.nodes.teacache_nodes import TeaCacheApply
import tiny_zoo

WAN = "wan21_t2v"
THRESHOLD, RETENTION, K = 0.3, 0.2, 3     # the tiny Wan's 8-step curve skips a few steps with these


@pytest.fixture(autouse=True)
def store(tmp_path):
    """Each test its own calibration folder (ComfyUI's user directory), so nothing is found from another test."""
    old = folder_paths.get_user_directory()
    folder_paths.set_user_directory(str(tmp_path))
    try:
        yield calibration_store()
    finally:
        folder_paths.set_user_directory(old)


def auto(model, threshold=THRESHOLD):
    return MagCacheApply().apply(model, "auto", threshold, RETENTION, K)[0]


class Computed:
    """The steps at which the model's first transformer block (the whole model, for a UNet) really ran,
    seen by a hook on the module itself, not through the pack."""

    def __init__(self, model):
        dm = model.model.diffusion_model
        self.module = dm.blocks[0] if hasattr(dm, "blocks") else dm
        self.sigmas = []

    def _hook(self, module, args, kwargs):
        to = kwargs.get("transformer_options") or {}
        self.sigmas.append(float(to["sigmas"][0]))
        self.schedule = to["sample_sigmas"].tolist()

    def __enter__(self):
        self.handle = self.module.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    @property
    def steps(self) -> int:
        return len(set(self.sigmas))

    @property
    def indices(self) -> list[int]:
        return sorted({self.schedule.index(s) for s in self.sigmas})


def run(model, name=WAN, steps=8, **kw):
    """(output, number of steps the blocks computed)."""
    with Computed(model) as seen:
        out = tiny_zoo.sample(model, name, steps=steps, **kw)
    return out, seen.steps


def autos(store):
    return [n for n in store.names() if n.startswith("auto-")]


# -- the three cases -----------------------------------------------------------------------------------
def test_first_run_calibrates_and_saves_next_run_skips(store, caplog):
    model = tiny_zoo.build(WAN)
    ref = tiny_zoo.sample(model, WAN, steps=8)
    patched = auto(model)
    with caplog.at_level(logging.INFO, logger="comfyui-magcache"):
        first, computed = run(patched)
    assert computed == 8 and torch.equal(first, ref)              # a calibration run: the uncached model
    [name] = autos(store)
    assert name.startswith("auto-wan-")
    assert f"calibrating this run (every step computed), saved as {name!r}" in caplog.text
    doc = json.load(open(store.path(name)))
    assert doc["steps"] == 8 and doc["fingerprint"]["sampler"] == "euler" and doc["fingerprint"]["steps"] == 8
    assert len(doc["mag_ratios"]["cond"]) == 8 and "teacache" in doc

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="comfyui-magcache"):
        second, computed = run(patched)
    assert 1 < computed < 8                                        # now it skips
    assert f"using calibration {name!r} (made on this model, euler, 8 steps)" in caplog.text
    assert autos(store) == [name]                                  # nothing new saved
    # ... exactly as the same calibration picked by hand
    by_hand = MagCacheApply().apply(model, f"calibration: {name}", THRESHOLD, RETENTION, K)[0]
    assert torch.equal(second, tiny_zoo.sample(by_hand, WAN, steps=8))
    # A model with a published curve still uses it, and saves nothing.
    flux = tiny_zoo.build("flux")
    with caplog.at_level(logging.INFO, logger="comfyui-magcache"):
        tiny_zoo.sample(auto(flux), "flux", steps=8)
    assert "flux (auto: FLUX.1 dev-class" in caplog.text and autos(store) == [name]


def test_other_checkpoint_of_the_same_architecture_calibrates_anew(store):
    a, b = tiny_zoo.build(WAN, seed=0), tiny_zoo.build(WAN, seed=1)
    run(auto(a))
    [name_a] = autos(store)
    out, computed = run(auto(b))
    assert computed == 8 and torch.equal(out, tiny_zoo.sample(b, WAN, steps=8))
    name_b = (set(autos(store)) - {name_a}).pop()
    assert name_a.split("-")[2] != name_b.split("-")[2]            # the weights part of the name
    assert run(auto(a))[1] < 8 and run(auto(b))[1] < 8             # each its own


def test_the_same_weights_loaded_twice_share_the_calibration(store):
    run(auto(tiny_zoo.build(WAN, seed=0)))
    assert run(auto(tiny_zoo.build(WAN, seed=0)))[1] < 8           # another object, same checkpoint: reused


def test_weight_patch_changes_the_fingerprint_whether_or_not_it_is_applied(store):
    base = tiny_zoo.build(WAN, seed=0)
    key = "diffusion_model.blocks.0.self_attn.q.weight"
    weight = base.model.diffusion_model.blocks[0].self_attn.q.weight
    original = weight.detach().clone()
    delta = torch.randn(weight.shape, generator=torch.Generator().manual_seed(5)) * 0.05

    def lora(strength):
        m = base.clone()
        assert m.add_patches({key: ("diff", (delta,))}, strength) == [key]
        return m
    plain, patched, stronger = weights_fingerprint(base), weights_fingerprint(lora(1.0)), weights_fingerprint(lora(0.5))
    assert len({plain, patched, stronger}) == 3

    run(auto(base))
    assert len(autos(store)) == 1
    with_lora = lora(1.0)
    out, computed = run(auto(with_lora))                           # not the base model's calibration
    assert computed == 8 and len(autos(store)) == 2
    # ComfyUI has now patched the weight in place (it keeps the model loaded); the fingerprints read the
    # originals it backed up, so they do not depend on what is loaded.
    assert not torch.equal(base.model.diffusion_model.blocks[0].self_attn.q.weight, original)
    assert weights_fingerprint(base) == plain and weights_fingerprint(with_lora) == patched
    assert torch.equal(out, tiny_zoo.sample(with_lora, WAN, steps=8))
    assert run(auto(with_lora))[1] < 8 and run(auto(base))[1] < 8


@pytest.mark.parametrize("change", [dict(steps=10), dict(scheduler="karras"), dict(sampler="dpmpp_2m"),
                                    dict(sampler="euler_ancestral"), dict(denoise=0.75)],
                         ids=["steps", "scheduler", "sampler", "ancestral", "denoise"])
def test_other_steps_scheduler_or_sampler_do_not_reuse(store, change):
    model = tiny_zoo.build(WAN)
    patched = auto(model)
    run(patched)
    assert run(patched)[1] < 8
    kw = {"steps": 8, **change}
    out, computed = run(patched, **kw)
    steps = kw["steps"]
    assert computed == steps and torch.equal(out, tiny_zoo.sample(model, WAN, **kw))
    assert len(autos(store)) == 2
    assert run(patched, **kw)[1] < steps                           # and that one is then reused


def test_part_of_a_schedule_reads_its_calibration_as_a_whole_run(store):
    """denoise 0.75: the sampler runs the last 8 steps of a 10-step schedule. The calibration records those 8 steps,
    so the next run reads the 8 ratios as they are (not resampled to 10 and read from step 2)."""
    model = tiny_zoo.build(WAN)
    params = MagCacheParams(0.03, 0.0, 5)     # read from step 2 of the curve resampled to 10, it would differ
    patched = MagCacheApply().apply(model, "auto", params.threshold, params.retention_ratio, params.max_skips)[0]
    run(patched, denoise=0.75)
    [name] = autos(store)
    curves = curves_of(store.load(name))
    assert curves.length == 8
    with Computed(model) as seen:
        tiny_zoo.sample(patched, WAN, steps=8, denoise=0.75)
    expected = computed_steps(params, {k: curves.curve(k) for k in (0, 1)}, 8, kinds=(0, 1))
    assert seen.indices == expected and len(expected) < 8


def test_auto_uses_a_calibration_made_by_hand_on_the_same_run(store, caplog):
    model = tiny_zoo.build(WAN)
    tiny_zoo.sample(MagCacheCalibrate().calibrate(model, "mine")[0], WAN, steps=8)
    with caplog.at_level(logging.INFO, logger="comfyui-magcache"):
        assert run(auto(model))[1] < 8
    assert "using calibration 'mine'" in caplog.text and autos(store) == []


def test_old_files_without_fingerprint_still_load_and_are_not_matched(store):
    model = tiny_zoo.build(WAN)
    tiny_zoo.sample(MagCacheCalibrate().calibrate(model, "old")[0], WAN, steps=8)
    path = store.path("old")
    doc = json.load(open(path))
    del doc["fingerprint"]
    json.dump(doc, open(path, "w"))
    assert run(MagCacheApply().apply(model, "calibration: old", THRESHOLD, RETENTION, K)[0])[1] < 8
    assert run(auto(model))[1] == 8 and len(autos(store)) == 1     # not known to be of this model: calibrate


def test_unreadable_auto_file_is_recalibrated(store, caplog):
    model = tiny_zoo.build(WAN)
    run(auto(model))
    [name] = autos(store)
    open(store.path(name), "w").write("{not json")
    with caplog.at_level(logging.WARNING, logger="comfyui-magcache"):
        assert run(auto(model))[1] == 8
    assert "unreadable" in caplog.text and run(auto(model))[1] < 8


def test_whole_model_strategy_unet(store):
    """Any model: a UNet goes to the generic whole-model strategy, which has no published curve."""
    unet = tiny_zoo.build("sd15")
    ref = tiny_zoo.sample(unet, "sd15", steps=8)
    patched = MagCacheApply().apply(unet, "auto", 0.5, 0.0, 2)[0]
    out, computed = run(patched, "sd15")
    assert computed == 8 and torch.equal(out, ref)
    assert [n.split("-")[1] for n in autos(store)] == ["generic"]
    assert run(patched, "sd15")[1] < 8


# -- TeaCache ------------------------------------------------------------------------------------------
def tea_auto(model, thresh=0.3):
    return TeaCacheApply().apply(model, "auto", thresh)[0]


def test_teacache_auto_calibrates_then_uses_the_fit(store, caplog):
    model = tiny_zoo.build(WAN)        # width 64: no published TeaCache coefficients
    ref = tiny_zoo.sample(model, WAN, steps=8)
    patched = tea_auto(model)
    out, computed = run(patched)
    assert computed == 8 and torch.equal(out, ref)
    [name] = autos(store)
    with caplog.at_level(logging.INFO, logger="comfyui-magcache"):
        out, computed = run(patched)
    assert computed < 8 and f"no published TeaCache coefficients for Wan T2V WanModel (width 64" in caplog.text
    assert f"using calibration {name!r}" in caplog.text
    fitted = TeaCacheApply().apply(model, f"calibration: {name}", 0.3)[0]
    assert torch.equal(out, tiny_zoo.sample(fitted, WAN, steps=8))
    # MagCache 'auto' on the same run finds the same calibration.
    assert run(auto(model))[1] < 8 and autos(store) == [name]


def test_teacache_auto_without_a_fit_computes_every_step(store, caplog):
    model = tiny_zoo.build(WAN)
    # 4 steps with CFG 1 give 3 indicator changes: too few to fit a polynomial; the MagCache curve is saved.
    run(auto(model), steps=4, cfg=1.0)
    [name] = autos(store)
    assert "teacache" not in store.load(name) and "at least 6" in store.load(name)["teacache_error"]
    with caplog.at_level(logging.INFO, logger="comfyui-magcache"):
        out, computed = run(tea_auto(model, 2.0), steps=4, cfg=1.0)
    assert computed == 4 and torch.equal(out, tiny_zoo.sample(model, WAN, steps=4, cfg=1.0))
    assert "has no TeaCache fit" in caplog.text and "this run computes every step" in caplog.text


def test_teacache_auto_on_a_model_without_teacache_input_says_so():
    with pytest.raises(MagCacheInputError, match=r"^model: .*has no TeaCache input.*MagCacheApply"):
        tea_auto(tiny_zoo.build("sd15"))


# -- the fingerprint itself -----------------------------------------------------------------------------
def digest(named):
    fp = Fingerprint()
    for name, t in named:
        fp.add_tensor(name, t)
    return fp.hexdigest()


def test_fingerprint_reads_values_not_layout_and_sees_sampled_changes():
    g = torch.Generator().manual_seed(0)
    big, small = torch.randn(300, 200, generator=g), torch.randn(7, generator=g)
    base = digest([("a", big), ("b", small)])
    assert digest([("a", big.t().contiguous().t()), ("b", small)]) == base      # non-contiguous, same values
    assert digest([("a", big.to(torch.float16)), ("b", small)]) != base        # dtype
    assert digest([("b", small), ("a", big)]) != base                          # names and order
    changed = big.clone()
    changed.view(-1)[-1 - (big.numel() - 32) % 7] += 1                         # in the last run read
    assert digest([("a", changed), ("b", small)]) != base
    tiny = small.clone()
    tiny[3] = 0                                                                # small tensors are read whole
    assert digest([("a", big), ("b", tiny)]) != base
    assert digest([("a", big.to(torch.float8_e4m3fn))]) != digest([("a", (big * 2).to(torch.float8_e4m3fn))])
