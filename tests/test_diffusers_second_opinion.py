"""diffusers 0.42's ``diffusers.hooks.mag_cache`` as a second opinion on our MagCache rule.

A tiny diffusers ``FluxTransformer2DModel`` (random weights) runs under ``apply_mag_cache`` the way
``FluxPipeline`` drives it: one call per step inside ``transformer.cache_context("cond")``. A forward
hook inside the first and the last transformer block records the steps on which the blocks really ran.

What the two implementations share and where they differ (diffusers/hooks/mag_cache.py, 0.42.1):
  * the same accumulators and the same indexing: ratio[step_index], step_index counting from 0
    (lines 202-213) -- at retention 0 and wherever floor == round the computed steps are identical;
  * the first step that may skip: diffusers ``int(retention_ratio * num_inference_steps + 0.5)``
    (line 208, rounds) against the authors' ``int(num_steps * retention_ratio)`` (floors), which we
    follow: 0.1 x 28 = 2.8 -> diffusers 3, us 2. That alone explains the FLUX 28-step lists;
  * the threshold test: diffusers skips while ``accumulated_err <= threshold`` (line 217), we (and
    the authors) while ``accumulated_err < threshold``. It only shows when the error hits the
    threshold exactly, pinned below with dyadic ratios;
  * ``nearest_interp``: the same formula, but diffusers multiplies a float32 grid (lines 77-79) where
    we (and the authors' numpy code) work in float64; they disagree only on exact half-way ties.
"""
from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from comfyui_magcache.magcache_core import COND, UNCOND, MagCacheParams, MagCacheRule, RatioCurves, computed_steps, nearest_interp
from comfyui_magcache.strategies.flux import FLUX_DEV_28
from comfyui_magcache.strategies.wan import WAN21_I2V_480P_14B, WAN21_T2V_1_3B

mag_cache = pytest.importorskip("diffusers.hooks.mag_cache")
from tiny_diffusers import flux_transformer as tiny_diffusers_flux  # noqa: E402

# The published FLUX setting (authors' example workflow): threshold 0.24, retention 0.1, K 5, 28 steps.
OURS_FLUX_28 = [0, 1, 3, 6, 10, 16, 22, 26]
DIFFUSERS_FLUX_28 = [0, 1, 2, 5, 9, 15, 21, 26]


def diffusers_computed_steps(ratios, threshold, retention, max_skips, num_steps, runs=1):
    """Run diffusers' MagCache on a tiny FLUX for ``runs`` whole denoising loops; per run, the steps
    on which the blocks computed (seen by hooks inside the first and the last block)."""
    model = tiny_diffusers_flux()
    mag_cache.apply_mag_cache(model, mag_cache.MagCacheConfig(
        mag_ratios=list(ratios), threshold=threshold, retention_ratio=retention,
        max_skip_steps=max_skips, num_inference_steps=num_steps))
    step = [None]
    head_ran, tail_ran = [], []
    # Submodules inside the head / tail blocks: their forward runs only when the block computes.
    model.transformer_blocks[0].attn.register_forward_hook(lambda m, a, o: head_ran.append(step[0]))
    model.single_transformer_blocks[-1].attn.register_forward_hook(lambda m, a, o: tail_ran.append(step[0]))

    g = torch.Generator().manual_seed(1)
    side = 4
    latents = torch.randn(1, side * side, 16, generator=g)
    prompt = torch.randn(1, 6, 32, generator=g)
    pooled = torch.randn(1, 24, generator=g)
    img_ids = torch.zeros(side * side, 3)
    img_ids[:, 1] = torch.arange(side * side) // side
    img_ids[:, 2] = torch.arange(side * side) % side
    txt_ids = torch.zeros(6, 3)
    sigmas = torch.linspace(1.0, 0.0, num_steps + 1)          # decreasing, as a flow-matching schedule
    per_run = []
    with torch.no_grad():
        for r in range(runs):
            x = latents.clone()
            for i in range(num_steps):
                step[0] = (r, i)
                with model.cache_context("cond"):              # as FluxPipeline does around each call
                    v = model(hidden_states=x, encoder_hidden_states=prompt, pooled_projections=pooled,
                              timestep=sigmas[i].expand(1), img_ids=img_ids, txt_ids=txt_ids,
                              guidance=torch.full((1,), 3.5), return_dict=False)[0]
                assert torch.isfinite(v).all()
                x = x + (sigmas[i + 1] - sigmas[i]) * v
            per_run.append([i for (rr, i) in head_ran if rr == r])
    assert head_ran == tail_ran, "head and tail blocks must compute on the same steps"
    return per_run if runs > 1 else per_run[0]


# -- the published FLUX setting: the two lists, and why they differ ------------------------------
def test_flux_28_ours_and_diffusers_and_why():
    ours = computed_steps(MagCacheParams(0.24, 0.1, 5), {COND: FLUX_DEV_28}, 28)
    first_run, second_run = diffusers_computed_steps(FLUX_DEV_28, 0.24, 0.1, 5, 28, runs=2)
    print(f"\nours      (0.24 / 0.1 / K5, 28 steps): {ours}")
    print(f"diffusers (0.24 / 0.1 / K5, 28 steps): {first_run}")
    assert ours == OURS_FLUX_28
    assert first_run == DIFFUSERS_FLUX_28
    # diffusers resets its state after num_inference_steps calls (mag_cache.py 380-395): a second
    # loop on the same model decides the same.
    assert second_run == DIFFUSERS_FLUX_28

    # Why: the first skippable step. Ours floors, diffusers (mag_cache.py line 208) rounds.
    assert MagCacheRule(MagCacheParams(0.24, 0.1, 5), {COND: FLUX_DEV_28}, 28).first_skippable == 2
    assert int(0.1 * 28 + 0.5) == 3
    # Our rule with a retention whose floor is 3 reproduces diffusers' list exactly, so nothing else
    # (indexing of the curve, accumulators, K) differs on this curve.
    assert MagCacheRule(MagCacheParams(0.24, 0.11, 5), {COND: FLUX_DEV_28}, 28).first_skippable == 3
    assert computed_steps(MagCacheParams(0.24, 0.11, 5), {COND: FLUX_DEV_28}, 28) == DIFFUSERS_FLUX_28


def test_our_flux_curve_is_diffusers_flux_curve():
    assert len(mag_cache.FLUX_MAG_RATIOS) == len(FLUX_DEV_28) == 28
    assert torch.allclose(mag_cache.FLUX_MAG_RATIOS, torch.tensor(FLUX_DEV_28), rtol=0, atol=1e-6)


# -- settings where floor == round: the full lists must agree -----------------------------------
@pytest.mark.parametrize("retention, expected", [
    (0.0, [0, 2, 5, 9, 15, 21, 26]),                       # 0 both: any curve-indexing shift would show
    (0.15, [0, 1, 2, 3, 6, 10, 16, 22, 26]),               # 4.2: floor 4, round 4
    (0.25, [0, 1, 2, 3, 4, 5, 6, 10, 16, 22, 26]),         # 7.0: 7 and 7
])
def test_flux_28_agree_where_floor_equals_round(retention, expected):
    assert int(28 * retention) == int(retention * 28 + 0.5)
    ours = computed_steps(MagCacheParams(0.24, retention, 5), {COND: FLUX_DEV_28}, 28)
    theirs = diffusers_computed_steps(FLUX_DEV_28, 0.24, retention, 5, 28)
    print(f"\nretention {retention}: ours {ours}  diffusers {theirs}")
    assert ours == theirs == expected


def test_flux_28_retention_02_floor_and_round_differ():
    # 0.2 x 28 = 5.6: we start skipping at step 5, diffusers at 6.
    ours = computed_steps(MagCacheParams(0.24, 0.2, 5), {COND: FLUX_DEV_28}, 28)
    theirs = diffusers_computed_steps(FLUX_DEV_28, 0.24, 0.2, 5, 28)
    print(f"\nretention 0.2: ours {ours}  diffusers {theirs}")
    assert ours == [0, 1, 2, 3, 4, 8, 14, 20, 26]
    assert theirs == [0, 1, 2, 3, 4, 5, 9, 15, 21, 26]
    assert computed_steps(MagCacheParams(0.24, 6 / 28 + 1e-9, 5), {COND: FLUX_DEV_28}, 28) == theirs


# -- the threshold comparison: `<` (authors, ours) vs `<=` (diffusers) ---------------------------
def test_threshold_hit_exactly_shows_lt_vs_le():
    # Dyadic ratios: every accumulated error is exact in float32 and float64. At step 1 the error is
    # |1 - 1.25| = 0.25 == threshold: diffusers skips (<=), we compute (<).
    curve = [1.0, 1.25, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    ours = computed_steps(MagCacheParams(0.25, 0.0, 5), {COND: curve}, 8)
    theirs = diffusers_computed_steps(curve, 0.25, 0.0, 5, 8)
    print(f"\nthreshold hit exactly: ours {ours}  diffusers {theirs}")
    assert ours == [0, 1, 7]          # 1: 0.25 < 0.25 fails; 2-6 skip (err 0); 7: K=5 reached
    assert theirs == [0, 2]           # 1: 0.25 <= 0.25 skips; 2: err 0.5 computes; 3-7 skip
    # Our rule with the threshold one ulp higher (`<` next-up == `<=`) reproduces diffusers.
    assert computed_steps(MagCacheParams(math.nextafter(0.25, 1.0), 0.0, 5), {COND: curve}, 8) == theirs


# -- nearest_interp ------------------------------------------------------------------------------
def _wan_halves():
    out = []
    for curve in (WAN21_T2V_1_3B, WAN21_I2V_480P_14B):
        rc = RatioCurves.interleaved(curve)
        out += [list(rc.curve(COND)), list(rc.curve(UNCOND))]
    return out


@pytest.mark.parametrize("src_len, n", [(50, 20), (50, 30), (28, 50), (40, 1), (100, 7), (28, 20), (20, 28),
                                        (50, 50), (2, 9), (9, 2)])
def test_nearest_interp_indices_agree(src_len, n):
    ours = nearest_interp(list(range(src_len)), n)
    theirs = mag_cache.nearest_interp(torch.arange(src_len), n).tolist()
    assert ours == theirs
    assert len(ours) == n


@pytest.mark.parametrize("half", range(4))
@pytest.mark.parametrize("n", [1, 10, 20, 25, 30, 40, 50, 60])
def test_nearest_interp_wan_interleaved_halves_agree(half, n):
    src = _wan_halves()[half]
    ours = nearest_interp(src, n)
    theirs = mag_cache.nearest_interp(torch.tensor(src, dtype=torch.float64), n).tolist()
    assert ours == theirs


def test_nearest_interp_disagrees_only_on_exact_ties():
    # diffusers rounds grid * scale with a float32 grid (mag_cache.py 77-79), we in float64 as the
    # authors' numpy code; j * (L-1)/(n-1) may be exactly k + 1/2, and the two roundings of that
    # product can land on either side. Every disagreement is such a tie; pinned for L in 20/28/40/50.
    mismatches = {}
    for src_len in (20, 28, 40, 50):
        for n in range(1, 101):
            ours = nearest_interp(list(range(src_len)), n)
            theirs = mag_cache.nearest_interp(torch.arange(src_len), n).tolist()
            for j, (a, b) in enumerate(zip(ours, theirs)):
                if a != b:
                    exact = Fraction(j * (src_len - 1), n - 1)
                    assert exact.denominator == 2 and abs(a - b) == 1, (src_len, n, j, a, b)
                    mismatches[(src_len, n, j)] = (a, b)
    assert mismatches == {(28, 39, 19): (14, 13), (28, 77, 38): (14, 13), (40, 75, 37): (19, 20),
                          (50, 43, 27): (32, 31), (50, 71, 45): (31, 32), (50, 83, 41): (24, 25),
                          (50, 85, 54): (32, 31)}
