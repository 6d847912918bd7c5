"""Few-step schedules (issue 11, part 4): MagCacheApply and TeaCacheApply compute every step of a schedule shorter
than their min_steps and say why, before sampling (the report the node is sent: tests/test_server.py); longer runs (and a short part of a long schedule) still cache;
min_steps 0 caches any run. On the reference model, in real ComfyUI."""
import json
import logging

import pytest
import torch

import comfy.sample
from comfyui_magcache.nodes.magcache_nodes import MagCacheApply, MagCacheCalibrate, MagCacheRatios
from comfyui_magcache.nodes.schedule import MIN_STEPS, too_few_steps
from comfyui_magcache.nodes.teacache_nodes import TeaCacheApply
from comfyui_magcache_demo import reference
from quality import RowCounter

from calibrate_reference import OUT as SHIPPED_CALIBRATION

PROMPT, SEED = "a blue triangle", 3


@pytest.fixture(scope="module")
def model():
    return reference.load()


@pytest.fixture(scope="module")
def ratios():
    return MagCacheRatios().parse(json.dumps(json.loads(SHIPPED_CALIBRATION.read_text())["mag_ratios"]))[0]


@pytest.fixture(scope="module")
def tea_preset(model):
    """A TeaCache polynomial of the reference model: MagCacheCalibrate on one 20-step run."""
    reference.sample(MagCacheCalibrate().calibrate(model, "few step tea")[0], "a white ring", 999, 20)
    return "calibration: few step tea"


def rows_and_image(model, base, steps, cfg=4.0):
    counter = RowCounter(base)
    try:
        out = reference.sample(model, PROMPT, SEED, steps, cfg)
    finally:
        counter.close()
    return counter.rows, out


def aggressive(model, ratios, tea_preset, **kw):
    """Both nodes at settings that skip most steps wherever they may."""
    return {"MagCache": MagCacheApply().apply(model, "auto", 0.5, 0.0, 4, ratios=ratios, **kw)[0],
            "TeaCache": TeaCacheApply().apply(model, tea_preset, 2.0, **kw)[0]}


def test_the_default_minimum_covers_four_step_schedules():
    """4-step runs (the usual "lightning" setting) compute every step by default; 20-step runs cache."""
    assert 4 < MIN_STEPS <= 20
    assert too_few_steps(MIN_STEPS, MIN_STEPS) is None and too_few_steps(20, MIN_STEPS) is None
    assert too_few_steps(4, 0) is None
    assert "4-step schedule is below min_steps" in too_few_steps(4, MIN_STEPS)


@pytest.mark.parametrize("steps", [3, 4])
def test_a_few_step_run_computes_every_step_and_says_why(model, ratios, tea_preset, steps, caplog):
    uncached_rows, uncached = rows_and_image(model, model, steps)
    for name, patched in aggressive(model, ratios, tea_preset).items():
        with caplog.at_level(logging.WARNING, logger="comfyui-magcache"):
            caplog.clear()
            rows, out = rows_and_image(patched, model, steps)
        assert rows == uncached_rows and torch.equal(out, uncached), name
        warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert any(w.startswith(f"{name} [") and f"a {steps}-step schedule is below min_steps {MIN_STEPS}" in w
                   and w.endswith("this run computes every step") for w in warned), warned


def test_longer_runs_still_cache_and_min_steps_0_caches_a_few_step_run(model, ratios, tea_preset):
    uncached_20, _ = rows_and_image(model, model, 20)
    uncached_4, _ = rows_and_image(model, model, 4)
    for name, patched in aggressive(model, ratios, tea_preset).items():
        assert rows_and_image(patched, model, 20)[0] < uncached_20 * 0.75, name
    for name, patched in aggressive(model, ratios, tea_preset, min_steps=0).items():
        assert rows_and_image(patched, model, 4)[0] < uncached_4, name


def test_a_short_part_of_a_long_schedule_is_not_a_few_step_run(model, ratios, caplog):
    """KSamplerAdvanced steps 12-17 of 20: the schedule it is cut from has 20 steps, so the node caches there. (A
    part is placed in its schedule when that has at most 4x its steps, schedule.locate; a shorter part counts as a
    whole run of its own length, here as everywhere in the pack.)"""
    patched = MagCacheApply().apply(model, "auto", 0.5, 0.0, 4, ratios=ratios)[0]
    lat = reference.empty_latent()
    noise = comfy.sample.prepare_noise(lat, SEED)
    pos, neg = reference.conditioning(PROMPT), reference.conditioning("")
    with caplog.at_level(logging.INFO, logger="comfyui-magcache"):
        comfy.sample.sample(patched, noise, 20, 4.0, "euler", "simple", pos, neg, lat, start_step=12, last_step=18,
                            disable_pbar=True, seed=SEED)
    lines = [r.getMessage() for r in caplog.records]
    assert not any("min_steps" in line for line in lines)
    (run,) = [line for line in lines if "(steps 12-17 of 20): computed" in line]
    assert "skipped 0" not in run, run


def test_min_steps_is_checked_and_shown(model):
    from comfyui_magcache.magcache_core import MagCacheInputError
    with pytest.raises(MagCacheInputError, match=r"^min_steps: got -1"):
        MagCacheApply().apply(model, "auto", 0.2, 0.2, 4, min_steps=-1)
    out = TeaCacheApply().apply(model, "auto", 0.2, min_steps=0)
    assert out["ui"]["magcache"][0]["settings"].endswith(", runs of any length")
    out = MagCacheApply().apply(model, "auto", 0.2, 0.2, 4, min_steps=6)
    assert out["ui"]["magcache"][0]["settings"].endswith(", min_steps 6")


def test_the_benchmark_checks_the_default_against_its_measurements():
    """bench/quality.py few_step_verdict: a step count "gains without visible loss" when a calibrated MagCache or
    TeaCache point reaches 1.5x at >= 30 dB; the smallest min_steps leaving the failing counts uncached follows."""
    import quality

    def point(method, steps, speedup, psnr):
        return {"method": method, "setting": method, "threshold": 0.1, "steps": steps, "computed_speedup": speedup,
                "wall_speedup": 1.0, "psnr": psnr, "psnr_mean": psnr, "psnr_min": psnr, "ssim": 0.9, "mae": 0.01,
                "samples": 8, "per_sample_psnr": [psnr] * 8}
    few = {"steps": [4, 6, 8], "points": [
        point("MagCache", 4, 1.33, 37.0), point("MagCache", 4, 2.0, 23.0), point("LazyCache", 4, 1.6, 31.0),
        point("TeaCache", 6, 1.5, 34.8), point("MagCache", 8, 1.6, 34.5)]}
    v = quality.few_step_verdict(few, min_steps=5)
    assert [v["per_steps"][s]["gains_without_visible_loss"] for s in (4, 6, 8)] == [False, True, True]
    assert v["recommended_min_steps"] == 5 and v["nodes_agree"]
    assert not quality.few_step_verdict(few, min_steps=10)["nodes_agree"]
    assert "cannot gain without visible loss" in quality.verdict_text(v)


def test_the_nodes_minimum_agrees_with_the_committed_few_step_measurements():
    """docs/benchmarks/quality_shapes.json holds the few-step part measured on the distilled student
    (demo/models/magcache_shapes_wan_fewstep.safetensors): the nodes' MIN_STEPS is what it calls for, and the
    verdict counts the pack's extrapolated variants (the nodes' default) as the pack's own."""
    import quality

    few = json.loads((quality.ROOT / "docs" / "benchmarks" / "quality_shapes.json").read_text())["few_step"]
    assert few["model"] == "magcache_shapes_wan_fewstep.safetensors" and few["steps"] == [4, 6, 8]
    v = quality.few_step_verdict(few, min_steps=MIN_STEPS)
    assert v["nodes_agree"] and v["recommended_min_steps"] == MIN_STEPS, v
    assert "extrapolated" in v["per_steps"][6]["method"]
    only_reuse = dict(few, points=[p for p in few["points"] if "extrapolated" not in p["method"]])
    assert not quality.few_step_verdict(only_reuse, min_steps=MIN_STEPS)["per_steps"][6]["gains_without_visible_loss"]
