"""Target speed (magcache_core/target.py): the solved threshold against a brute-force search, the run
state following the plan, and MagCacheApply's ``speed`` input inside real ComfyUI.

The brute force here shares nothing with the solver but the reference rule (``decision.py``): it lists
every accumulated error the rule could ever compare (every cond, every last computed step, every run
length up to K + 1), tries a threshold at and just above each, and scores each schedule with its own
error function (the definition in target.py's docstring)."""
import logging
import math
from dataclasses import replace
from fractions import Fraction

import pytest
import torch

from comfyui_magcache.magcache_core import (COND, UNCOND, MagCacheInputError, MagCacheParams, MagCacheRule,
                                            RatioCurves, RunConfig, RunState, computed_steps)
from comfyui_magcache.magcache_core.target import parse_speed, schedules, solve
from comfyui_magcache.nodes.magcache_nodes import MagCacheApply
from comfyui_magcache.strategies.flux import FLUX_DEV_28
from comfyui_magcache.strategies.wan import WAN21_T2V_1_3B
from test_comfy_magcache import BlockSteps
from tiny_models import sample, tiny_flux

FLUX_PARAMS = MagCacheParams(0.24, 0.1, 5)        # the authors' FLUX settings (the threshold is ignored)


# -- the brute force -------------------------------------------------------------------------------
def reference_run(params, curves, n, kinds, offset=0, run_steps=None, window=None):
    """The steps a run computes with the reference rule: the run's first step always computes (no
    residual yet), as do steps outside ``window`` (one bool per step of the run)."""
    run_steps = n - offset if run_steps is None else run_steps
    rule = MagCacheRule(params, curves, n)
    out = []
    for i in range(run_steps):
        s = offset + i
        if not rule.decide(s, kinds, True if window is None else window[i]) or i == 0:
            out.append(s)
            rule.reset()
    return tuple(out)


def schedule_error(computed, curves, kinds, steps):
    """Sum over skipped steps of the worst cond's |1 - product of the ratios since the last computed step|."""
    total, prod = 0.0, {}
    for s in steps:
        if s in computed:
            prod = {k: 1.0 for k in kinds}
            continue
        for k in kinds:
            prod[k] *= curves[k][s]
        total += max(abs(1.0 - prod[k]) for k in kinds)
    return total


def every_compared_error(curves, kinds, steps, max_skips):
    values = set()
    for k in kinds:
        for last in steps:
            ratio, err = 1.0, 0.0
            for s in [t for t in steps if t > last][:max_skips + 1]:
                ratio *= curves[k][s]
                err += abs(1.0 - ratio)
                values.add(err)
    return values


def brute_force(target, params, curves, n, kinds, offset=0, run_steps=None, window=None):
    """{schedule: error} over every threshold at or just above a comparable error, and the best pick."""
    run_steps = n - offset if run_steps is None else run_steps
    steps = range(offset, offset + run_steps)
    thresholds = {0.0, 1e9}
    for v in every_compared_error(curves, kinds, steps, params.max_skips):
        thresholds |= {v, math.nextafter(v, math.inf)}
    found = {}
    for t in sorted(thresholds):
        c = reference_run(replace(params, threshold=t), curves, n, kinds, offset, run_steps, window)
        found.setdefault(c, schedule_error(c, curves, kinds, steps))
    meeting = {c: e for c, e in found.items() if len(c) * target <= run_steps}
    return found, meeting


# -- the solver against it --------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["1.5x", "2x", "2.5x", "3x"])
def test_flux_28_steps_least_error_schedule_meeting_the_target(target):
    curves = {COND: FLUX_DEV_28}
    plan = solve(target, FLUX_PARAMS, curves, 28)
    found, meeting = brute_force(parse_speed(target), FLUX_PARAMS, curves, 28, (COND,))
    assert plan.met and len(plan.computed) * parse_speed(target) <= 28
    assert plan.error == pytest.approx(min(meeting.values()), abs=1e-12)
    assert plan.computed in meeting and meeting[plan.computed] == pytest.approx(plan.error, abs=1e-12)
    # The reported threshold gives the schedule with the plain rule (as if typed into the threshold input).
    assert tuple(computed_steps(replace(FLUX_PARAMS, threshold=plan.threshold), curves, 28)) == plan.computed
    # The solver's walk finds exactly the schedules the brute force finds.
    assert {s.computed for s in schedules(FLUX_PARAMS, curves, 28, (COND,))} == set(found)


def test_flux_dense_threshold_sweep_finds_no_other_schedule():
    walk = {s.computed for s in schedules(FLUX_PARAMS, {COND: FLUX_DEV_28}, 28, (COND,))}
    swept = {tuple(computed_steps(replace(FLUX_PARAMS, threshold=i / 4000), {COND: FLUX_DEV_28}, 28))
             for i in range(0, 8001)}
    assert swept <= walk and len(walk) > 20


def test_out_of_reach_uses_the_fastest_the_settings_allow():
    params = MagCacheParams(0.0, 0.1, 2)
    plan = solve("10x", params, {COND: FLUX_DEV_28}, 28)
    found, meeting = brute_force(Fraction(10), params, {COND: FLUX_DEV_28}, 28, (COND,))
    fewest = min(len(c) for c in found)
    assert not meeting and not plan.met
    assert len(plan.computed) == fewest and plan.fastest == pytest.approx(28 / fewest)
    assert plan.error == pytest.approx(min(e for c, e in found.items() if len(c) == fewest), abs=1e-12)
    assert "out of reach" in plan.describe() and f"{28 / fewest:.2f}x is the fastest" in plan.describe()


def test_cfg_partial_run_with_window_against_brute_force():
    """Wan's cond and uncond curves resampled to 30 steps, a run of steps 8-29 with a window."""
    curves = RatioCurves.interleaved(WAN21_T2V_1_3B)
    n, offset, run_steps = 30, 8, 22
    per_kind = {k: curves.for_steps(k, n) for k in (COND, UNCOND)}
    window = [i < 19 for i in range(run_steps)]               # the last 3 steps of the run compute
    params = MagCacheParams(0.0, 0.2, 3)
    for target in (Fraction(3, 2), Fraction(2), Fraction(5, 2)):
        plan = solve(target, params, per_kind, n, (UNCOND, COND), offset, run_steps, window)
        found, meeting = brute_force(target, params, per_kind, n, (COND, UNCOND), offset, run_steps, window)
        assert plan.met == bool(meeting)
        if meeting:
            assert plan.error == pytest.approx(min(meeting.values()), abs=1e-12) and plan.computed in meeting
        assert reference_run(replace(params, threshold=plan.threshold), per_kind, n, (COND, UNCOND), offset,
                             run_steps, window) == plan.computed


@pytest.mark.parametrize("split", [False, True], ids=["batched", "split"])
def test_run_state_solves_once_and_follows_the_plan(split):
    """RunState solves at the run's second step with the conds seen, and computes exactly the plan."""
    curves = RatioCurves.interleaved(WAN21_T2V_1_3B)
    n = 20
    sig = [1 - i / n for i in range(n + 1)]
    cfg = RunConfig("magcache", MagCacheParams(5.0, 0.2, 4), curves, target=Fraction(2))
    run = RunState(cfg, sig)
    x = torch.zeros(1, 4, 2)
    for step in range(n):
        calls = [(["c"], [COND]), (["u"], [UNCOND])] if split else [(["c", "u"], [COND, UNCOND])]
        for keys, kinds in calls:
            ctx = run.begin_call(sig[step], keys, kinds)
            xin = x.repeat(len(keys), 1, 1)
            run.enter_blocks(ctx, xin)
            if not ctx.skip:
                run.leave_blocks(ctx, xin + 1)
            run.end_call(ctx)
    expected = solve(Fraction(2), cfg.params, {k: curves.for_steps(k, n) for k in (COND, UNCOND)}, n, (COND, UNCOND))
    assert run.plan == expected and tuple(sorted(run.computed_steps)) == expected.computed
    assert len(expected.computed) * 2 <= n and run.rule.params.threshold == expected.threshold
    assert f"speed 2x: solved threshold {expected.threshold:g}" in run.summary()


@pytest.mark.parametrize("bad", ["fast", "0.5x", "0", "-2x", "1000x", "nan", True, [2]])
def test_bad_speed_names_the_input(bad):
    with pytest.raises(MagCacheInputError) as e:
        parse_speed(bad)
    assert str(e.value).startswith("speed:")


def test_speed_values():
    assert parse_speed("off") is None and parse_speed(None) is None
    assert parse_speed("1.5x") == Fraction(3, 2) and parse_speed("2.5") == Fraction(5, 2) and parse_speed(3) == 3


# -- inside ComfyUI -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flux():
    return tiny_flux()


@pytest.mark.parametrize("speed", ["1.5x", "2x", "2.5x", "3x"])
def test_comfy_flux_28_steps_meets_the_target(flux, speed, caplog):
    plan = solve(speed, FLUX_PARAMS, {COND: FLUX_DEV_28}, 28)
    with caplog.at_level(logging.INFO, logger="comfyui-magcache"):
        with BlockSteps(flux) as seen:
            sample(MagCacheApply().apply(flux, "flux", 0.5, 0.1, 5, speed=speed)[0], steps=28, size=8)
    assert len(seen.steps) * parse_speed(speed) <= 28
    assert tuple(seen.steps) == plan.computed and len(seen.calls) == len(plan.computed)
    text = caplog.text
    assert f"speed {speed} (threshold input ignored)" in text           # the node, before the run ...
    assert f"planned at the curve's 28 steps (cond): {plan.outcome()}" in text
    assert f"speed {speed} at 28 steps: {plan.outcome()}" in text          # ... when sampling starts ...
    assert f"computed {len(plan.computed)}/28 steps {list(plan.computed)}" in text   # ... and after
    assert f"speed {speed}: solved threshold {plan.threshold:g}" in text


def test_comfy_solved_threshold_typed_in_gives_the_same_run(flux):
    plan = solve("2x", FLUX_PARAMS, {COND: FLUX_DEV_28}, 28)
    with BlockSteps(flux) as seen:
        sample(MagCacheApply().apply(flux, "flux", plan.threshold, 0.1, 5)[0], steps=28, size=8)
    assert tuple(seen.steps) == plan.computed


def test_comfy_out_of_reach_is_logged(flux, caplog):
    with caplog.at_level(logging.INFO, logger="comfyui-magcache"):
        with BlockSteps(flux) as seen:
            sample(MagCacheApply().apply(flux, "flux", 0.24, 0.1, 2, speed="3x")[0], steps=28, size=8)
    assert seen.steps == [0, 1, 4, 7, 10, 13, 16, 19, 22, 25]             # K 2: every 3rd step, 2.8x
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("3x is out of reach with retention 0.1 and K 2: 2.80x is the fastest" in m for m in warned)


# -- TeaCache: best effort ------------------------------------------------------------------------------
from comfyui_magcache.magcache_core import TeaCacheParams, TeaCacheRule  # noqa: E402
from comfyui_magcache.magcache_core.target import tea_outcome, tea_simulate  # noqa: E402
from comfyui_magcache.nodes.teacache_nodes import TeaCacheApply  # noqa: E402
from test_teacache_core import drive, inputs_with_changes  # noqa: E402

CHANGES = {"c": [0.125, 0.125, 0.25, 0.0625, 0.0625, 0.0625, 0.25, 0.125, 0.125],
           "u": [0.0625, 0.0625, 0.0625, 0.25, 0.0625, 0.0625, 0.0625, 0.0625, 0.0625]}
QUADRATIC = (16.0, 0.0, 0.0625)                        # a polynomial with a constant term, as published ones have


def measured(params, changes=CHANGES):
    """The distances TeaCache's rule records for hand-made inputs, and its schedule (a step computes when
    any entry must, as a batched call does)."""
    rule = TeaCacheRule(params, 0, 9)
    xs = {k: inputs_with_changes(v) for k, v in changes.items()}
    computed = [s for s in range(10) if not all([rule.decide(s, k, xs[k][s]) for k in changes])]
    return rule.distances, tuple(computed)


@pytest.mark.parametrize("coeffs", [(1.0, 0.0), QUADRATIC])
@pytest.mark.parametrize("cap", [None, 2])
def test_tea_simulate_is_the_rule(coeffs, cap):
    for t in [i / 40 for i in range(0, 80)]:
        distances, computed = measured(TeaCacheParams(t, coeffs, cap))
        reference, _ = measured(TeaCacheParams(1.0, coeffs, cap))     # the distances do not depend on it
        assert tea_simulate(t, reference, range(10), cap)[0] == computed, t


def test_tea_outcome_against_brute_force():
    distances, _ = measured(TeaCacheParams(1.0, QUADRATIC))
    for target in (Fraction(3, 2), Fraction(2), Fraction(5, 2), Fraction(5)):
        out = tea_outcome(target, 0.3, "the input", range(10), 10, distances)
        sums = {0.0, 1e9}
        for dist in distances.values():
            steps = sorted(dist)
            for i in range(len(steps)):
                acc = 0.0
                for s in steps[i:]:
                    acc += dist[s]
                    sums |= {acc, math.nextafter(acc, math.inf)}
        found = {}
        for t in sorted(sums):
            c, e, _ = tea_simulate(t, distances, range(10))
            found.setdefault(c, e)
        meeting = {c: e for c, e in found.items() if len(c) * target <= 10}
        got = tea_simulate(out.suggested, distances, range(10))
        assert out.suggested_met == bool(meeting)
        if meeting:
            assert got[1] == pytest.approx(min(meeting.values()), abs=1e-12) and got[0] in meeting
        else:
            assert len(got[0]) == min(len(c) for c in found)
        assert out.suggested_speedup == pytest.approx(10 / len(got[0]))


def test_tea_run_state_reports_and_the_next_run_starts_from_the_solve():
    """Content that does not change with the schedule (hand-made inputs): the second run hits the target."""
    mods = {k: [m[:1] for m in inputs_with_changes(v)] for k, v in CHANGES.items()}
    g = torch.Generator().manual_seed(0)
    entries = {k: (kind, [torch.randn(1, 8, dtype=torch.float64, generator=g) for _ in range(10)])
               for k, kind in (("c", COND), ("u", UNCOND))}
    sig = [1 - i / 10 for i in range(11)]
    cfg = RunConfig("teacache", TeaCacheParams(0.1, QUADRATIC), target=Fraction(2))
    first = RunState(cfg, sig)
    drive(first, sig, entries, False, mods)
    out1 = first.plan
    assert out1.used == 0.1 and out1.source == "the input" and out1.computed == len(first.computed_steps)
    assert not out1.met and out1.suggested_met and "short of 2x" in first.summary()
    first.release()
    assert cfg.memo == {(10, 0, 10): out1.suggested}
    second = RunState(cfg, sig)
    drive(second, sig, entries, False, mods)
    out2 = second.plan
    assert out2.used == out1.suggested and out2.source == "solved by the previous run"
    assert out2.met and len(second.computed_steps) * 2 <= 10 and "meeting 2x" in second.summary()


def test_comfy_teacache_speed_reports_what_it_reached(flux, caplog):
    patched = TeaCacheApply().apply(flux, "flux", 0.05, speed="2x")[0]
    reached = []
    for _ in range(2):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="comfyui-magcache"):
            with BlockSteps(flux) as seen:
                sample(patched, steps=20, size=8)
        line = next(r.getMessage() for r in caplog.records if "best effort" in r.getMessage() and "reached" in r.getMessage())
        reached.append(line)
        assert f"reached {20 / len(seen.steps):.2f}x" in line
    assert "rel_l1_thresh 0.05 (the input)" in reached[0]
    suggested = reached[0].split("measured distances rel_l1_thresh ")[1].split(" ")[0]
    assert f"rel_l1_thresh {suggested} (solved by the previous run)" in reached[1]
    print(reached)


def test_comfy_teacache_speed_needs_a_starting_threshold(flux):
    with pytest.raises(MagCacheInputError, match="rel_l1_thresh: is 0"):
        TeaCacheApply().apply(flux, "flux", 0.0, speed="2x")
