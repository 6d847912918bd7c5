"""MagCacheCalibrate also fits a TeaCache polynomial (where the model has a TeaCache indicator), and
TeaCacheApply offers it as 'calibration: <name>'."""
import json

import numpy as np
import pytest
import torch

from comfyui_magcache.magcache_core import CalibrationRecorder, MagCacheInputError, fit_coefficients, relative_l1
from comfyui_magcache.magcache_core.storage import CalibrationStore
from comfyui_magcache.nodes.magcache_nodes import MagCacheCalibrate, calibration_store
from comfyui_magcache.nodes.teacache_nodes import TeaCacheApply
import tiny_zoo


# -- the statistics and the fit (no ComfyUI) ---------------------------------------------------------
def test_recorder_records_relative_l1_of_residual_and_indicator():
    rec = CalibrationRecorder()
    r0 = torch.tensor([[[1.0, -2.0], [3.0, 4.0]]])
    ind0 = torch.tensor([[2.0, 2.0, 2.0, 2.0]])
    rec.record_input("c", 0, 0, ind0)
    rec.record("c", 0, 0, r0)
    rec.record_input("c", 0, 1, ind0 * 1.25)        # |d| / |prev| = 0.25
    rec.record("c", 0, 1, r0 * 1.5)                  # residual grows by half: l1 0.5, ratio 1.5
    ind0[0, 0] = 100.0                               # the recorder keeps its own copy
    rec.record_input("c", 0, 2, torch.tensor([[2.5, 2.5, 2.5, 0.0]]))    # vs 2.5 each: |d| = 2.5/4, prev 2.5
    rec.record("c", 0, 2, r0 * 1.5)
    s = rec.result()["cond"]
    assert s["input_l1"] == [0.0, 0.25, 0.25]
    assert s["l1"] == [0.0, 0.5, 0.0]
    assert s["ratio"] == [1.0, 1.5, 1.0]


def test_recorder_without_indicator_has_no_input_l1():
    rec = CalibrationRecorder()
    for step in range(3):
        rec.record("u", 1, step, torch.ones(1, 2, 3) * (step + 1))
    assert "input_l1" not in rec.result()["uncond"]


def test_fit_recovers_a_known_polynomial():
    coefficients = [3.0, -2.0, 0.5, 0.1, 0.01]
    x = np.linspace(0.01, 0.3, 12)
    y = np.polyval(coefficients, x)
    stats = {"cond": {"input_l1": [0.0] + list(x[:6]), "l1": [0.0] + list(y[:6])},
             "uncond": {"input_l1": [0.0] + list(x[6:]), "l1": [0.0] + list(y[6:])}}
    fit = fit_coefficients(stats)
    assert fit["degree"] == 4 and fit["points"] == 12 and fit["rmse"] < 1e-6
    assert np.allclose(fit["coefficients"], coefficients, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("stats, words", [
    ({"cond": {"l1": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]}}, "no TeaCache indicator"),
    ({"cond": {"input_l1": [0.0, 0.1, 0.2], "l1": [0.0, 0.1, 0.2]}}, "at least 6"),
    ({"cond": {"input_l1": [0.0] + [0.1] * 7, "l1": [0.0] + [0.2] * 7}}, "same amount"),
])
def test_fit_refuses_what_it_cannot_fit(stats, words):
    with pytest.raises(ValueError, match=words):
        fit_coefficients(stats)


def test_store_refuses_bad_teacache_coefficients(tmp_path):
    store = CalibrationStore(str(tmp_path))
    stats = {"cond": {"ratio": [1.0, 0.9], "std": [0, 0], "cos": [0, 0], "l1": [0, 0.1]}}
    store.save("good", "flux", 2, stats, {"teacache": {"coefficients": [1.0, 0.0]}})
    assert store.teacache_names() == ["good"]
    for bad in ([1.0], [float("nan"), 1.0], "1, 2"):
        with pytest.raises(MagCacheInputError, match="teacache.coefficients"):
            store.save("bad", "flux", 2, stats, {"teacache": {"coefficients": bad}})
    store.save("plain", "flux", 2, stats)
    assert store.teacache_names() == ["good"]


# -- in ComfyUI ---------------------------------------------------------------------------------------
def test_calibration_records_the_real_modulated_input_and_fits_teacache():
    """The indicator changes the calibration stores are those of the tensor FLUX's first double block
    really feeds its qkv projection (read by a hook, not through the pack), per cond kind."""
    model = tiny_zoo.build("flux")
    block = model.model.diffusion_model.double_blocks[0]
    seen = []
    handle = block.img_attn.qkv.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    try:
        tiny_zoo.sample(MagCacheCalibrate().calibrate(model, "flux tea")[0], "flux", steps=8, cfg=3.0)
    finally:
        handle.remove()
    doc = calibration_store().load("flux tea")
    assert len(seen) == 8                                    # one CFG batch (uncond + cond) per step
    by_row = [[x.chunk(2)[i] for x in seen] for i in range(2)]
    expected = [[0.0] + [round(float(relative_l1(seq[t], seq[t - 1])), 6) for t in range(1, 8)] for seq in by_row]
    recorded = [doc["stats"]["cond"]["input_l1"], doc["stats"]["uncond"]["input_l1"]]
    for got, want in zip(sorted(recorded), sorted(expected)):
        assert np.allclose(got, want, rtol=1e-4, atol=2e-6), (got, want)
    fit = doc["teacache"]
    assert len(fit["coefficients"]) == 5 and fit["points"] == 14
    assert fit["coefficients"] == fit_coefficients(doc["stats"])["coefficients"]

    listed = TeaCacheApply.INPUT_TYPES()["required"]["preset"][0]
    assert "calibration: flux tea" in listed
    patched = TeaCacheApply().apply(model, "calibration: flux tea", 0.3)[0]
    out = tiny_zoo.sample(patched, "flux", steps=8, cfg=3.0)
    assert torch.isfinite(out).all()
    # Threshold 0 with the fitted polynomial is the uncached model, bit for bit.
    exact = tiny_zoo.sample(TeaCacheApply().apply(model, "calibration: flux tea", 0.0)[0], "flux", steps=8, cfg=3.0)
    assert torch.equal(exact, tiny_zoo.sample(model, "flux", steps=8, cfg=3.0))


def test_teacache_calibration_errors_name_the_preset():
    flux, wan = tiny_zoo.build("flux"), tiny_zoo.build("wan21_t2v")
    tiny_zoo.sample(MagCacheCalibrate().calibrate(wan, "wan tea")[0], "wan21_t2v", steps=8, cfg=3.0)
    with pytest.raises(MagCacheInputError, match=r"^preset: .*made on a wan model, this model is FLUX.1"):
        TeaCacheApply().apply(flux, "calibration: wan tea", 0.3)
    with pytest.raises(MagCacheInputError, match=r"^preset: no calibration named 'nothing'"):
        TeaCacheApply().apply(flux, "calibration: nothing", 0.3)
    # A calibration saved without a fit (an older file): clear advice.
    path = calibration_store().path("wan tea")
    doc = json.load(open(path))
    del doc["teacache"]
    json.dump(doc, open(path, "w"))
    with pytest.raises(MagCacheInputError, match="has no TeaCache polynomial"):
        TeaCacheApply().apply(wan, "calibration: wan tea", 0.3)
    assert "calibration: wan tea" not in TeaCacheApply.INPUT_TYPES()["required"]["preset"][0]
