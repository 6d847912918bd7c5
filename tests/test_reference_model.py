"""The shipped reference model (demo/models/magcache_shapes_wan.safetensors): it loads through ComfyUI's
stock loader, samples what the stored reference image shows, follows its prompt's colour, and
MagCache at a mild setting stays above the PSNR the benchmark measured (docs/benchmarks/quality_shapes.json).
"""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import comfy.supported_models
from comfyui_magcache.nodes.magcache_nodes import MagCacheApply, MagCacheCalibrate
from comfyui_magcache_demo import reference, shapes

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_PNG = ROOT / "tests" / "data" / "reference_red_circle_seed0_20steps.png"
BENCH = ROOT / "docs" / "benchmarks" / "quality_shapes.json"
# The mild MagCache point checked against the benchmark: 20 steps, retention 0.1, K 2, threshold 0.04.
MILD = ("MagCache r0.1 K2", 0.04, 20)


@pytest.fixture(scope="module")
def model():
    return reference.load()


def test_weights_are_small_and_load_as_a_stock_wan_model(model):
    assert reference.MODEL_PATH.stat().st_size <= 10_000_000
    assert isinstance(model.model.model_config, comfy.supported_models.WAN21_T2V)
    dm = model.model.diffusion_model
    assert (dm.dim, len(dm.blocks), dm.blocks[0].ffn[0].out_features) == (256, 4, 512)
    assert sum(p.numel() for p in dm.parameters()) == 4_843_840


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def test_sample_matches_the_stored_reference_image(model):
    image = reference.decode(reference.sample(model, "a red circle", seed=0, steps=20, cfg=4.0))[0]
    stored = np.asarray(Image.open(REFERENCE_PNG).convert("RGB"))
    diff = np.abs(to_uint8(image).astype(int) - stored.astype(int))
    # Same weights, seed and sampler: only float rounding across CPUs may differ.
    assert diff.max() <= 3 and diff.mean() < 0.2, (diff.max(), diff.mean())


@pytest.mark.parametrize("color", ["red", "green", "blue", "yellow"])
def test_samples_take_the_colour_of_their_prompt(model, color):
    """The bright pixels (the shape) of "a <colour> square" are nearest to that colour of the palette."""
    palette = torch.tensor(list(shapes.COLORS.values()))
    for seed in (0, 1):
        image = reference.decode(reference.sample(model, f"a {color} square", seed=seed, steps=20))[0]
        bright = image.reshape(-1, 3)
        bright = bright[bright.max(1).values > 0.55]
        assert len(bright) > 20, "no shape drawn"
        nearest = (palette - bright.mean(0)).norm(dim=1).argmin()
        assert list(shapes.COLORS)[nearest] == color


def test_prompt_errors_name_the_input():
    from comfyui_magcache_demo.nodes import MagCacheShapesPrompt
    with pytest.raises(ValueError, match=r"^text: unknown word 'purple'"):
        MagCacheShapesPrompt().encode("a purple circle")
    cond = MagCacheShapesPrompt().encode("")[0]
    assert cond[0][0].shape == (1, 2, shapes.TEXT_WIDTH) and not cond[0][0].any()


def test_magcache_at_a_mild_threshold_stays_above_the_measured_psnr(model):
    """The benchmark's calibration run and the first samples of its evaluation set, repeated here:
    each image's PSNR to the uncached one matches what bench/quality.py recorded (within 0.5 dB)
    and none is below the floor measured over all 32 samples."""
    import metrics
    import quality

    method, threshold, steps = MILD
    bench = json.loads(BENCH.read_text())
    point = next(p for p in bench["points"]
                 if (p["setting"], p["threshold"], p["steps"]) == (method, threshold, steps))
    floor = min(point["per_sample_psnr"])
    calibrating = MagCacheCalibrate().calibrate(model, f"test shapes {steps}")[0]
    reference.sample(calibrating, quality.CALIBRATION_PROMPT, quality.CALIBRATION_SEED, steps, quality.CFG)
    patched = MagCacheApply().apply(model, f"calibration: test shapes {steps}", threshold, 0.1, 2,
                                    skipped_steps="reuse")[0]       # as the benchmark's "MagCache" rows
    prompts = reference.prompts(8)[:4]                  # the benchmark's first samples (seed 0)
    for i, text in enumerate(prompts):
        ref = reference.decode(reference.sample(model, text, 0, steps, quality.CFG))
        out = reference.decode(reference.sample(patched, text, 0, steps, quality.CFG))
        value = metrics.psnr(out, ref)[0]
        assert abs(value - point["per_sample_psnr"][i]) < 0.5, (text, value, point["per_sample_psnr"][i])
        assert value >= floor
    assert point["computed_speedup"] >= 1.4 and floor >= 18.0
