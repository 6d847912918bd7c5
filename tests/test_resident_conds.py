"""A cached run's conds go to the sampling device once, before the first model call (nodes/resident_conds.py):
ComfyUI's per-call copies from pageable host memory made every model call wait for the GPU.

The suite runs on the CPU, where the conds already sit on the sampling device; the ``meta`` device stands in
for a GPU (tensors move there, keeping shape and dtype, without memory). On a GPU, ``bench/gpu_last_percent.py``
checks the rest: ``--count-copies`` counts the pageable host-to-device copies of a run, and threshold 0's
``max_abs_diff_vs_unpatched`` shows the output unchanged."""
import pytest
import torch

import comfy.conds
import comfy.patcher_extension
import comfy.sampler_helpers
import comfy.samplers
from comfyui_magcache.nodes import patching, resident_conds
from comfyui_magcache.nodes.magcache_nodes import MagCacheApply
from comfyui_magcache.nodes.schedule import MIN_STEPS
from tiny_models import conds, latent, sample, tiny_flux

META = torch.device("meta")


def processed(model):
    """The guider's conds as ComfyUI has them while sampling: converted and processed by its own code."""
    pos, neg = conds(model)
    raw = {"positive": comfy.sampler_helpers.convert_cond(pos), "negative": comfy.sampler_helpers.convert_cond(neg)}
    lat = latent(model)
    return comfy.samplers.process_conds(model.model, torch.randn_like(lat), raw, torch.device("cpu"), lat, seed=0)


def model_cond_tensors(cs):
    return {(name, i, k): c.cond for name, entries in cs.items() for i, e in enumerate(entries)
            for k, c in e["model_conds"].items() if isinstance(c.cond, torch.Tensor)}


def test_on_device_copies_every_host_cond_tensor_and_changes_nothing_it_was_given():
    cs = processed(tiny_flux(seed=1))
    extra = cs["positive"][0]["model_conds"]
    extra["test_refs"] = comfy.conds.CONDList([torch.ones(1, 16, 2, 2), torch.ones(1, 16, 4, 4)])  # Kontext-style
    extra["test_mixed"] = comfy.conds.CONDList([torch.ones(2), "not a tensor"])     # as it is
    extra["test_constant"] = comfy.conds.CONDConstant(3)                            # as it is
    extra["test_shape"] = comfy.conds.CONDNoiseShape(torch.ones(1, 16, 2, 2))
    before = model_cond_tensors(cs)
    objects = {k: dict(e["model_conds"]) for k, es in cs.items() for e in es}

    moved = resident_conds.on_device(cs, META)

    after = model_cond_tensors(moved)
    assert after.keys() == before.keys() and {"c_crossattn", "y", "guidance"} <= {k for _, _, k in after}
    for key, t in after.items():
        assert t.device == META and t.shape == before[key].shape and t.dtype == before[key].dtype, key
    for name, entries in moved.items():
        for new, old in zip(entries, cs[name]):
            for k, c in new["model_conds"].items():
                assert type(c) is type(old["model_conds"][k]), k
    refs = moved["positive"][0]["model_conds"]["test_refs"].cond
    assert isinstance(refs, list) and [r.device for r in refs] == [META, META]
    assert [r.shape for r in refs] == [r.shape for r in extra["test_refs"].cond]
    assert moved["positive"][0]["model_conds"]["test_mixed"] is extra["test_mixed"]
    assert moved["positive"][0]["model_conds"]["test_constant"] is extra["test_constant"]
    assert all(r.device.type == "cpu" for r in extra["test_refs"].cond)
    # what it was given is as it was: the same objects, on the CPU
    assert all(t.device.type == "cpu" for t in model_cond_tensors(cs).values())
    assert {k: dict(e["model_conds"]) for k, es in cs.items() for e in es} == objects
    assert resident_conds.on_device(cs, "cpu") is cs                   # nothing to move: the same dict
    assert resident_conds.on_device(moved, META) is moved


def run_wrapper(model, guider, transformer_options, noise):
    """Run ``model``'s SAMPLER_SAMPLE wrappers through ComfyUI's own executor, around a stand-in for the
    sampler that notes the guider's conds while it runs."""
    seen = {}

    def sampler_sample(guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar):
        seen["conds"] = guider.conds
        return noise

    options = {"transformer_options": transformer_options}
    wrappers = model.wrappers.get(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, {})
    executor = comfy.patcher_extension.WrapperExecutor.new_executor(
        sampler_sample, [w for ws in wrappers.values() for w in ws])
    executor.execute(guider, torch.linspace(1, 0, 5), {"model_options": options, "seed": 0}, None, noise, noise,
                     None, True)
    return seen["conds"]


def test_a_cached_run_samples_with_its_conds_on_the_sampling_device_and_gives_them_back():
    model = tiny_flux(seed=2)
    patched = MagCacheApply().apply(model, "flux", 0.24, 0.1, 5)[0]
    guider = comfy.samplers.CFGGuider(patched)
    guider.conds = processed(model)
    original = guider.conds
    noise = torch.empty(1, 16, 16, 16, device=META)

    during = run_wrapper(patched, guider, {patching.RUN_KEY: object()}, noise)
    assert during is not original
    assert all(t.device == META for t in model_cond_tensors(during).values())
    assert guider.conds is original                                     # given back when sampling ends
    assert all(t.device.type == "cpu" for t in model_cond_tensors(original).values())

    # A run the pack does not cache (no run in its options: a few-step schedule, an unusable sampler) and the
    # model without the pack: ComfyUI's conds as they are.
    assert run_wrapper(patched, guider, {}, noise) is original
    assert run_wrapper(model, guider, {patching.RUN_KEY: object()}, noise) is original


def test_the_conds_are_given_back_when_sampling_fails():
    model = tiny_flux(seed=2)
    patched = MagCacheApply().apply(model, "flux", 0.24, 0.1, 5)[0]
    guider = comfy.samplers.CFGGuider(patched)
    guider.conds = original = processed(model)

    def failing(guider, *args):
        raise RuntimeError("interrupted")

    wrappers = patched.wrappers[comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE]
    executor = comfy.patcher_extension.WrapperExecutor.new_executor(
        failing, [w for ws in wrappers.values() for w in ws])
    with pytest.raises(RuntimeError, match="interrupted"):
        executor.execute(guider, torch.linspace(1, 0, 5), {"model_options": {"transformer_options": {
            patching.RUN_KEY: object()}}}, None, torch.empty(1, device=META), None, None, True)
    assert guider.conds is original


def test_real_sampling_places_the_conds_of_the_runs_the_pack_caches_only(monkeypatch):
    """Through ComfyUI's own sampling: the wrapper sees the run (once per sampling, with the sampling device) for
    a cached run, and does nothing for the model without the pack or a run the pack leaves alone."""
    calls = []
    real = resident_conds.on_device

    def spy(cs, device):
        calls.append((sorted(cs), torch.device(device)))
        return real(cs, device)
    monkeypatch.setattr(resident_conds, "on_device", spy)
    model = tiny_flux(seed=4)
    sample(model, steps=6, cfg=2.0)
    assert calls == []                                                  # the model without the pack
    sample(MagCacheApply().apply(model, "flux", 0.24, 0.1, 5)[0], steps=6, cfg=2.0)
    assert calls == [(["negative", "positive"], torch.device("cpu"))]
    calls.clear()
    sample(MagCacheApply().apply(model, "flux", 0.24, 0.1, 5)[0], steps=MIN_STEPS - 1, cfg=2.0)
    assert calls == []                                 # a few-step run: computed in full, as without the node
