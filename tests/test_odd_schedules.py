"""What real graphs do to the schedule (issue "Robustness", items 2, 4, 5): model-sampling patches on the first run
after a load, calibration on schedules it cannot use, split schedules of samplers that drop the penultimate sigma,
hand-made sigmas that match no scheduler."""
import json
import logging
import os
import sys

import pytest
import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
from comfy_extras.nodes_model_advanced import ModelSamplingFlux, ModelSamplingSD3
from comfyui_magcache.nodes.magcache_nodes import MagCacheApply, MagCacheCalibrate, calibration_store
from comfyui_magcache.nodes.schedule import locate
from test_comfy_magcache import BlockSteps
from test_step_ranges import PARAMS, PRESET, advanced, expected
from tiny_models import conds, latent, tiny_flux, tiny_wan


def apply(model, preset=PRESET, **kw):
    return MagCacheApply().apply(model, preset, PARAMS.threshold, PARAMS.retention_ratio, PARAMS.max_skips, **kw)[0]


def custom_sigmas(model, sigmas, sampler="euler", cfg=4.0, seed=3):
    """What SamplerCustom does with a SIGMAS input."""
    lat = latent(model)
    noise = comfy.sample.prepare_noise(lat, seed)
    pos, neg = conds(model)
    return comfy.sample.sample_custom(model, noise, cfg, comfy.samplers.sampler_object(sampler), sigmas, pos, neg,
                                      lat, disable_pbar=True, seed=seed)


def fresh_load():
    """As after ComfyUI loads a model anew: nothing left loaded (object patches unapplied)."""
    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()


# -- item 2: the first run after a model loads equals later runs ------------------------------------------------

@pytest.mark.parametrize("patch", ["sd3_on_wan", "flux_on_flux"])
def test_model_sampling_patch_first_run_equals_second_run(patch):
    if patch == "sd3_on_wan":
        base = tiny_wan(seed=11)
        patched = ModelSamplingSD3().patch(base, shift=3.0)[0]
        model = apply(patched, start_percent=0.15)
        run = lambda: advanced(model, 20, 10, 10000)              # noqa: E731 - steps 10-19 of 20
    else:
        base = tiny_flux(seed=11)
        patched = ModelSamplingFlux().patch(base, max_shift=1.5, base_shift=0.3, width=1024, height=1024)[0]
        model = MagCacheApply().apply(patched, "flux", 0.24, 0.1, 5, start_percent=0.2)[0]
        run = lambda: advanced(model, 28, 6, 10000)               # noqa: E731 - steps 6-27 of 28
    fresh_load()
    with BlockSteps(base) as first:
        out1 = run()
    with BlockSteps(base) as second:
        out2 = run()
    assert first.steps == second.steps
    assert torch.equal(out1, out2)
    if patch == "sd3_on_wan":                                       # and it is the right part of the curve
        ms = patched.get_model_object("model_sampling")
        window_start = float(ms.percent_to_sigma(0.15))
        sig = comfy.samplers.calculate_sigmas(ms, "simple", 20)[10:]
        assert float(sig[0]) <= window_start                         # the whole slice lies inside the window
        assert [s + 10 for s in first.steps] == expected(20, 10, 20)


# -- item 4: Calibrate on schedules it cannot use warns, keeps the image, names the reason ------------------------

def _calibrate(model, name):
    path = calibration_store().path(name)
    if os.path.exists(path):
        os.remove(path)
    return MagCacheCalibrate().calibrate(model, name)[0]


ODD = {
    "one_step": lambda m: custom_sigmas(m, torch.tensor([1.0, 0.0])),
    "single_sigma": lambda m: custom_sigmas(m, torch.tensor([1.0])),
    "duplicated_sigmas": lambda m: custom_sigmas(m, torch.tensor([1.0, 0.8, 0.8, 0.4, 0.0])),
    "rising_sigmas": lambda m: custom_sigmas(m, torch.tensor([1.0, 0.5, 0.7, 0.2, 0.0])),
    "dpm_fast": lambda m: custom_sigmas(m, comfy.samplers.calculate_sigmas(m.model.model_sampling, "simple", 6), "dpm_fast"),
    "dpm_adaptive": lambda m: custom_sigmas(m, comfy.samplers.calculate_sigmas(m.model.model_sampling, "simple", 6),
                                            "dpm_adaptive"),
}
REASON = {"one_step": "1 step", "single_sigma": "nothing to sample", "duplicated_sigmas": "not strictly decreasing",
          "rising_sigmas": "not strictly decreasing", "dpm_fast": "dpm_fast", "dpm_adaptive": "dpm_adaptive"}


@pytest.mark.parametrize("case", list(ODD))
def test_calibrate_odd_schedule_warns_and_returns_the_image(case, caplog):
    model = tiny_wan(seed=5)
    ref = ODD[case](model)
    cal = _calibrate(model, f"odd {case}")
    with caplog.at_level(logging.WARNING, logger="comfyui-magcache"):
        out = ODD[case](cal)
    assert torch.equal(out, ref)                                     # the image, exactly as uncached
    assert not os.path.exists(calibration_store().path(f"odd {case}"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(REASON[case] in w and f"odd {case}" in w for w in warnings), warnings


@pytest.mark.parametrize("case", ["duplicated_sigmas", "rising_sigmas", "single_sigma"])
def test_magcache_odd_schedule_computes_every_step_with_a_warning(case, caplog):
    model = tiny_wan(seed=5)
    ref = ODD[case](model)
    with caplog.at_level(logging.WARNING, logger="comfyui-magcache"):
        out = ODD[case](apply(model))
    assert torch.equal(out, ref)
    assert any(REASON[case] in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_calibrate_behind_easycache_warns_and_keeps_the_image(caplog):
    from comfy_extras.nodes_easycache import EasyCacheNode
    model = tiny_wan(seed=5)
    easy = EasyCacheNode.execute(model, 0.5, 0.0, 1.0, False).result[0]      # skips model calls on its own
    cal = _calibrate(easy, "behind easycache")
    ref_model = easy
    ref = advanced(ref_model, 12, 0, 12)
    with caplog.at_level(logging.WARNING, logger="comfyui-magcache"):
        out = advanced(cal, 12, 0, 12)
    assert torch.equal(out, ref)
    saved = os.path.exists(calibration_store().path("behind easycache"))
    warned = any("behind easycache" in r.getMessage() and "not saved" in r.getMessage()
                 for r in caplog.records if r.levelno >= logging.WARNING)
    assert saved != warned                                           # saved it, or said why not


# -- item 5: split schedules of samplers that drop the penultimate sigma -----------------------------------------

@pytest.mark.parametrize("sampler", ["uni_pc", "dpm_2"])
def test_split_schedule_of_penultimate_dropping_sampler_reads_the_unsplit_steps(sampler, caplog):
    model = tiny_wan(seed=2)
    patched = apply(model)
    steps = 20

    def adv(start, end, lat, add_noise):
        noise = comfy.sample.prepare_noise(lat, 3) if add_noise else torch.zeros_like(lat)
        pos, neg = conds(model)
        return comfy.sample.sample(patched, noise, steps, 4.0, sampler, "simple", pos, neg, lat, start_step=start,
                                   last_step=end, force_full_denoise=end >= steps, disable_pbar=True, seed=3)
    with BlockSigmas(model) as whole:
        adv(0, 10000, latent(model), True)
    with caplog.at_level(logging.INFO, logger="comfyui-magcache"), BlockSigmas(model) as first:
        mid = adv(0, 10, latent(model), True)
        adv(10, 10000, mid, False)
    # Both halves sit in the 20-step schedule this sampler made, as steps 0-9 and 10-19 ...
    runs = [r.getMessage() for r in caplog.records if "computed" in r.getMessage()]
    assert "(steps 0-9 of 20)" in runs[0] and "(steps 10-19 of 20)" in runs[1], runs
    # ... so the first half reads the curve as the unsplit run does and computes the same steps.
    split_at = comfy.samplers.KSampler(model, steps, "cpu", sampler, "simple").sigmas[10].item()
    assert [s for s in first.sigmas if s > split_at] == [s for s in whole.sigmas if s > split_at]


class BlockSigmas(BlockSteps):
    """The sigmas at which the first block ran (2nd-order samplers call between schedule sigmas too)."""

    def _hook(self, module, args, kwargs):
        self.calls.append(round(float(kwargs["transformer_options"]["sigmas"][0]), 6))

    @property
    def sigmas(self):
        return sorted(set(self.calls), reverse=True)


class CountCalls:
    """Counts calls of one function through the interpreter's profile hook (nothing in ComfyUI is replaced)."""

    def __init__(self, fn):
        self.code, self.count = fn.__code__, 0

    def _profile(self, frame, event, arg):
        if event == "call" and frame.f_code is self.code:
            self.count += 1

    def __enter__(self):
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)


def test_hand_made_sigmas_are_located_once_not_on_every_run():
    ms = tiny_wan().model.model_sampling
    sigmas = torch.linspace(0.97, 0.013, 90).pow(1.3)                 # matches no scheduler of this model
    sigmas = torch.cat([sigmas, torch.zeros(1)])
    with CountCalls(comfy.samplers.calculate_sigmas) as first:
        assert locate(ms, sigmas) == (0, 90)
    with CountCalls(comfy.samplers.calculate_sigmas) as again:
        for _ in range(3):
            assert locate(ms, sigmas) == (0, 90)
    assert first.count > 0 and again.count == 0
