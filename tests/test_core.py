"""magcache_core on its own: the rule, interpolation, statistics, residual store, storage."""
import json
import os

import pytest
import torch

from comfyui_magcache.magcache_core import (COND, UNCOND, CalibrationRecorder, MagCacheInputError, MagCacheParams,
                                            MagCacheRule, RatioCurves, ResidualStore, RunConfig, RunState,
                                            computed_steps, nearest_interp, validate_ratios)
from comfyui_magcache.magcache_core.storage import CalibrationStore, check_name, curves_of
from comfyui_magcache.strategies.flux import FLUX_DEV_28
from comfyui_magcache.strategies.wan import WAN21_I2V_720P_14B, WAN21_T2V_1_3B


def test_core_imports_no_comfyui():
    root = os.path.join(os.path.dirname(__file__), "..", "magcache_core")
    for f in os.listdir(root):
        if f.endswith(".py"):
            src = open(os.path.join(root, f)).read()
            assert "import comfy" not in src and "from comfy" not in src and "folder_paths" not in src, f


# -- the rule ----------------------------------------------------------------------------------
def test_flux_published_schedule_28_steps():
    # By hand from the rule: steps 0,1 are retained (int(28*0.1)=2); then e.g. step 2: ratio 1.11719,
    # err 0.117 < 0.24 skip; step 3: ratio 1.11719*1.07812=1.2045, err 0.117+0.2045 >= 0.24 compute...
    assert computed_steps(MagCacheParams(0.24, 0.1, 5), {COND: FLUX_DEV_28}, 28) == [0, 1, 3, 6, 10, 16, 22, 26]


def test_interpolated_schedule_50_step_curve_at_20_steps():
    curves = RatioCurves.interleaved(WAN21_T2V_1_3B)
    cond20 = curves.for_steps(COND, 20)
    # nearest_interp(50 -> 20) picks source steps round(j * 49/19):
    assert cond20[:4] == [1.0, 0.99791, 0.99634, 0.99578] and cond20[-1] == 0.81838
    assert computed_steps(MagCacheParams(0.24, 0.2, 4), {COND: cond20}, 20) == [0, 1, 2, 3, 8, 13, 18]
    both = {COND: cond20, UNCOND: curves.for_steps(UNCOND, 20)}
    assert computed_steps(MagCacheParams(0.12, 0.2, 4), both, 20, kinds=(COND, UNCOND)) == [0, 1, 2, 3, 8, 13, 16, 18, 19]


@pytest.mark.parametrize("curve, steps, params, rounded, truncated", [
    (WAN21_T2V_1_3B, 25, (0.12, 0.2, 4), [0, 1, 2, 3, 4, 9, 14, 18, 21, 23, 24], [0, 1, 2, 3, 4, 9, 14, 19, 22, 24]),
    (WAN21_I2V_720P_14B, 30, (0.04, 0.1, 4), [0, 1, 2, 5, 8, 12, 15, 18, 20, 22, 24, 25, 26, 27, 28, 29],
     [0, 1, 2, 5, 8, 12, 15, 18, 20, 22, 24, 26, 27, 28, 29]),
])
def test_rounding_resample_differs_from_the_comfy_nodes_truncation(curve, steps, params, rounded, truncated):
    """The README's example: our nearest_interp (the authors' scripts) against the authors' ComfyUI node,
    which reads entry int(step * (L - 1) / (N - 1)); the rule is ours in both."""
    curves = RatioCurves.interleaved(curve)
    length = len(curves.curve(COND))
    ours = {k: curves.for_steps(k, steps) for k in (COND, UNCOND)}
    node = {k: [curves.curve(k)[int(j * (length - 1) / (steps - 1))] for j in range(steps)] for k in (COND, UNCOND)}
    assert computed_steps(MagCacheParams(*params), ours, steps, kinds=(COND, UNCOND)) == rounded
    assert computed_steps(MagCacheParams(*params), node, steps, kinds=(COND, UNCOND)) == truncated


CFG_CURVES = {COND: [1, 1, 1, 1, 1, 1.5, 1, 1], UNCOND: [1, 1.05, 1.05, 1.3, 1, 1, 1, 1]}


def test_cfg_step_skips_only_if_every_cond_allows():
    p = MagCacheParams(0.2, 0.0, 3)
    # cond alone: K=3 forces step 4, ratio 1.5 forces step 5.
    assert computed_steps(p, CFG_CURVES, 8, kinds=(COND,)) == [0, 4, 5]
    # uncond alone: accumulated 1.05*1.05*1.3 fails at step 3; K=3 forces step 7.
    assert computed_steps(p, CFG_CURVES, 8, kinds=(UNCOND,)) == [0, 3, 7]
    # together: 3 (uncond fails), 5 (cond fails); both reset on each computed step.
    assert computed_steps(p, CFG_CURVES, 8, kinds=(COND, UNCOND)) == [0, 3, 5]


def test_k_limits_consecutive_skips_and_window():
    flat = {COND: [1.0] * 10}
    assert computed_steps(MagCacheParams(0.5, 0.0, 2), flat, 10) == [0, 3, 6, 9]
    assert computed_steps(MagCacheParams(0.5, 0.0, 0), flat, 10) == list(range(10))
    assert computed_steps(MagCacheParams(0.0, 0.0, 5), flat, 10) == list(range(10))   # threshold 0: never
    window = lambda s: 4 <= s <= 6                                                     # noqa: E731
    assert computed_steps(MagCacheParams(0.5, 0.0, 9), flat, 10, window=window) == [0, 1, 2, 3, 7, 8, 9]


def test_retention_floors_like_the_authors():
    rule = MagCacheRule(MagCacheParams(1.0, 0.1, 5), {COND: [1.0] * 28}, 28)
    assert rule.first_skippable == 2          # int(2.8); diffusers rounds to 3 (see README)


# -- ratios -------------------------------------------------------------------------------------
def test_nearest_interp_by_hand():
    assert nearest_interp([1, 2, 3, 4, 5], 3) == [1, 3, 5]
    assert nearest_interp([1, 2, 3, 4, 5], 2) == [1, 5]
    assert nearest_interp([1, 2, 3], 5) == [1, 1, 2, 3, 3]       # half to even: 0.5 -> 0, 1.5 -> 2
    assert nearest_interp([1, 2, 3], 1) == [3]
    assert nearest_interp([7, 8], 2) == [7, 8]


@pytest.mark.parametrize("bad, words", [
    ([], "empty"), ([1.0], "at least 2"), ([1.0, float("nan")], "finite"), ([1.0, float("inf")], "finite"),
    ([1.0, 0.0], "> 0"), ([1.0, -1.0], "> 0"), ("1,2", "list"), (3.0, "list"), ({"a": 1}, "list"),
    ([1.0, "2"], "number"), ([1.0, True], "number"), ([1.0, None], "number"),
])
def test_validate_ratios_rejects(bad, words):
    with pytest.raises(MagCacheInputError) as e:
        validate_ratios(bad, "ratios")
    assert str(e.value).startswith("ratios:") and words in str(e.value)


def test_ratio_curves_json_roundtrip_and_kinds():
    c = RatioCurves.from_json({"cond": [1, 1.1], "uncond": [1, 1.2]})
    assert c.curve(COND) == (1.0, 1.1) and c.curve(UNCOND) == (1.0, 1.2)
    assert RatioCurves.from_json(c.to_json()) == c
    single = RatioCurves.from_json([1, 1.1, 0.9])
    assert single.curve(UNCOND) == single.curve(COND) == (1.0, 1.1, 0.9)
    with pytest.raises(MagCacheInputError, match=r"ratios: expected keys"):
        RatioCurves.from_json({"positive": [1, 2]})
    with pytest.raises(MagCacheInputError, match=r"ratios.uncond: entry 1"):
        RatioCurves.from_json({"cond": [1, 2], "uncond": [1, -2]})
    with pytest.raises(MagCacheInputError, match="even length"):
        RatioCurves.interleaved([1, 1, 1])


# -- run state ----------------------------------------------------------------------------------
def test_step_index_exact_and_between():
    run = RunState(RunConfig("calibrate"), [1.0, 0.75, 0.5, 0.25, 0.0])
    assert [run.step_index(s) for s in (1.0, 0.75, 0.5, 0.25)] == [0, 1, 2, 3]
    assert run.step_index(0.6) == 1 and run.step_index(0.1) == 3 and run.step_index(2.0) == 0


def test_run_decides_once_per_step_for_split_calls():
    cfg = RunConfig("magcache", MagCacheParams(0.2, 0.0, 3), RatioCurves(per_kind={k: tuple(v) for k, v in CFG_CURVES.items()}))
    sig = [1 - i / 8 for i in range(9)]
    x = torch.zeros(1, 4, 2)
    for split in (False, True):
        run = RunState(cfg, sig)
        skipped = []
        for step in range(8):
            calls = [(["u"], [UNCOND]), (["c"], [COND])] if split else [(["u", "c"], [UNCOND, COND])]
            for keys, kinds in calls:
                ctx = run.begin_call(sig[step], keys, kinds)
                xin = x.repeat(len(keys), 1, 1)
                run.enter_blocks(ctx, xin)
                if not ctx.skip:
                    run.leave_blocks(ctx, xin + 1)
                else:
                    skipped.append(step)
                run.end_call(ctx)
        assert sorted(run.computed_steps) == [0, 3, 5], split
        assert sorted(set(skipped)) == [1, 2, 4, 6, 7]


# -- statistics, residuals, storage --------------------------------------------------------------
def test_calibration_statistics_by_hand():
    rec = CalibrationRecorder()
    r = torch.tensor([[[3.0, 4.0], [0.0, 1.0]]])          # token norms 5 and 1
    rec.record("a", COND, 0, r)
    rec.record("a", COND, 1, 2 * r)                        # same direction, twice the size
    rec.record("a", COND, 2, torch.tensor([[[-4.0, 3.0], [0.0, 3.0]]]))  # norms 5,3 vs 10,2; token 0 orthogonal
    rec.record("b", UNCOND, 0, r)
    rec.record("b", UNCOND, 1, r)
    out = rec.result()
    assert out["cond"]["ratio"] == [1.0, 2.0, 1.0]        # (0.5 + 1.5) / 2
    assert out["cond"]["std"] == [0.0, 0.0, 0.5]
    assert out["cond"]["cos"] == [0.0, 0.0, 0.5]          # (1 + 0) / 2
    assert out["uncond"]["ratio"] == [1.0, 1.0]


def test_residual_store_batches_and_rejects_other_shapes():
    s = ResidualStore()
    s.put_batch(["a", "b"], torch.stack([torch.ones(3, 2), 2 * torch.ones(3, 2)]))
    like = torch.zeros(2, 3, 2, dtype=torch.float64)
    got = s.get_batch(["b", "a"], like)
    assert got.dtype == torch.float64 and got[0].eq(2).all() and got[1].eq(1).all()
    assert s.get_batch(["a"], torch.zeros(1, 4, 2)) is None          # other resolution
    assert s.get_batch(["a", "zz"], like) is None                    # unknown cond
    off = ResidualStore(torch.device("cpu"))
    off.put_batch(["a"], torch.ones(1, 2))
    assert off.get_batch(["a"], torch.zeros(1, 2)).eq(1).all()


def test_offloading_store_reserves_the_host_buffer_when_it_stores_a_kept_residual():
    """A residual the next step uses stays on its device (keep), but its host buffer is allocated as it is stored:
    the host stores at the end of a computed step, while a GPU still runs that step's blocks, so the slow pinned
    allocation overlaps them instead of stalling the later step that offloads it. The buffer is then reused."""
    off = ResidualStore(torch.device("cpu"))
    r = torch.randn(2, 3, 4)
    off.put_batch([0, 1], r, keep=True)
    assert off.device_bytes() == r.numel() * r.element_size()          # still on the device, no copy made
    hosts = [off._res[e].host for e in (0, 1)]
    assert all(h is not None for h in hosts)                           # but its host buffer exists
    assert off.host_bytes() == r.numel() * r.element_size()
    off.offload([0, 1])
    assert off.device_bytes() == 0 and [off._res[e].host for e in (0, 1)] == hosts     # the same buffers
    assert torch.equal(off.get_batch([0, 1], torch.zeros(2, 3, 4)), r)
    off.put_batch([0, 1], 2 * r)                                       # the next computed step: offloaded at once
    assert [off._res[e].host for e in (0, 1)] == hosts and off.host_bytes() == r.numel() * r.element_size()


@pytest.mark.parametrize("name", ["../evil", "a/b", "a\\b", "", " ", ".hidden", "..", "a..b", "x" * 65, "/etc/passwd",
                                  "name.", "C:evil", "a\x00b", 5])
def test_bad_calibration_names(name, tmp_path):
    store = CalibrationStore(str(tmp_path / "cal"))
    with pytest.raises(MagCacheInputError) as e:
        store.path(name)
    assert str(e.value).startswith("calibration_name:")
    assert not (tmp_path / "evil.json").exists() and not os.path.exists(str(tmp_path / "cal"))


def test_storage_roundtrip_atomic_and_validated(tmp_path):
    store = CalibrationStore(str(tmp_path))
    stats = {"cond": {"ratio": [1.0, 1.1, 0.9], "std": [0, 0.1, 0.1], "cos": [0, 0.2, 0.1]}}
    path = store.save("My flux-1.0", "flux", 3, stats)
    assert os.path.basename(path) == "My flux-1.0.json" and os.listdir(tmp_path) == ["My flux-1.0.json"]
    doc = store.load("My flux-1.0")
    curves = curves_of(doc)
    assert curves.curve(COND) == (1.0, 1.1, 0.9) and doc["model"] == "flux" and doc["steps"] == 3
    assert store.names() == ["My flux-1.0"]
    doc["mag_ratios"]["cond"][1] = -1
    (tmp_path / "broken.json").write_text(json.dumps(doc))
    with pytest.raises(MagCacheInputError, match="entry 1"):
        store.load("broken")
    (tmp_path / "garbage.json").write_text("{not json")
    with pytest.raises(MagCacheInputError, match="unreadable"):
        store.load("garbage")
    with pytest.raises(MagCacheInputError, match="no calibration named 'missing'"):
        store.load("missing")
    with pytest.raises(MagCacheInputError, match="3 ratios for 4 steps"):
        store.save("short", "flux", 4, stats)
    assert check_name("  ok name ") == "ok name"
