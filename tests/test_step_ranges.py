"""Partial runs index the whole schedule: KSamplerAdvanced step ranges (Wan 2.2's two models) and denoise < 1."""
import logging

import pytest
import torch

import comfy.sample
import comfy.samplers
from comfyui_magcache.magcache_core import COND, UNCOND, MagCacheParams, MagCacheRule
from comfyui_magcache.nodes.magcache_nodes import MagCacheApply
from comfyui_magcache.nodes.schedule import locate
from comfyui_magcache.strategies.wan import WanStrategy
from comfy_server import parse_runs
from test_comfy_magcache import BlockSteps
from tiny_models import conds, latent, tiny_wan

PARAMS = MagCacheParams(0.12, 0.2, 4)
PRESET = "wan2.2_t2v_14B"


def advanced(model, steps, start, end, noise_seed=3, lat=None, add_noise=True):
    """What KSamplerAdvanced does: sample a step range of a ``steps``-step schedule."""
    lat = latent(model) if lat is None else lat
    noise = comfy.sample.prepare_noise(lat, noise_seed) if add_noise else torch.zeros_like(lat)
    pos, neg = conds(model)
    return comfy.sample.sample(model, noise, steps, 4.0, "euler", "simple", pos, neg, lat, start_step=start,
                               last_step=end, force_full_denoise=end >= steps, disable_pbar=True, seed=noise_seed)


def expected(num_steps, first, last):
    """The rule over the whole curve, for a model that starts (without a residual) at ``first``."""
    curves = WanStrategy.presets[PRESET].curves
    rule = MagCacheRule(PARAMS, lambda k: curves.for_steps(k, num_steps), num_steps)
    out = []
    for s in range(first, last):
        if not rule.decide(s, (COND, UNCOND)) or s == first:
            out.append(s)
            rule.reset()
    return out


@pytest.mark.parametrize("sched", ["simple", "beta", "karras"])
def test_locate_finds_slices_of_comfy_schedules(sched):
    ms = tiny_wan().model.model_sampling
    full = comfy.samplers.calculate_sigmas(ms, sched, 20)
    assert locate(ms, full) == (0, 20)
    assert locate(ms, full[:11]) == (0, 20)                 # high-noise part: steps 0-9
    assert locate(ms, full[10:]) == (10, 20)                # low-noise part: steps 10-19
    zeroed = full[5:13].clone()
    zeroed[-1] = 0                                          # force_full_denoise zeroes the last sigma
    assert locate(ms, zeroed) == (5, 20)
    assert locate(ms, torch.tensor([0.9, 0.5, 0.0])) == (0, 2)   # custom sigmas: a whole run of their own


def test_wan22_two_models_each_read_their_part_of_the_curve(caplog):
    high, low = tiny_wan(seed=0), tiny_wan(seed=7)
    apply = lambda m: MagCacheApply().apply(m, PRESET, PARAMS.threshold, PARAMS.retention_ratio, PARAMS.max_skips)[0]  # noqa: E731
    with caplog.at_level(logging.INFO, logger="comfyui-magcache"):
        with BlockSteps(high) as seen_high:
            mid = advanced(apply(high), 20, 0, 10)
        with BlockSteps(low) as seen_low:
            advanced(apply(low), 20, 10, 10000, lat=mid, add_noise=False)
    assert seen_high.steps == expected(20, 0, 10)
    assert [s + 10 for s in seen_low.steps] == expected(20, 10, 20)
    # The summary lines the server tests read (tests/comfy_server.py) parse for step ranges too.
    runs = parse_runs(caplog.text)
    assert [(r["method"], r["part"], r["steps"], r["total"]) for r in runs] == [
        ("magcache", (0, 9, 20), expected(20, 0, 10), 10), ("magcache", (10, 19, 20), expected(20, 10, 20), 10)]
    # Not what a 10-step run of its own would do: the low-noise model reads the curve's second half.
    assert [s + 10 for s in seen_low.steps] != [s + 10 for s in expected(10, 0, 10)]


def test_denoise_below_one_reads_the_end_of_the_curve():
    model = tiny_wan()
    patched = MagCacheApply().apply(model, PRESET, PARAMS.threshold, PARAMS.retention_ratio, PARAMS.max_skips)[0]
    pos, neg = conds(model)
    lat = latent(model)
    with BlockSteps(model) as seen:
        comfy.sample.sample(patched, comfy.sample.prepare_noise(lat, 3), 10, 4.0, "euler", "simple", pos, neg, lat,
                            denoise=0.5, disable_pbar=True, seed=3)
    assert [s + 10 for s in seen.steps] == expected(20, 10, 20)
