"""TeaCache in the core: the rule on hand-made modulated inputs, and its use of the shared run state."""
import numpy as np
import pytest
import torch

from comfyui_magcache.magcache_core import (COND, UNCOND, RunConfig, RunState, TeaCacheParams, TeaCacheRule,
                                            poly1d, relative_l1, teacache_schedule)
from comfyui_magcache.magcache_core.run import RunState as RunStateFromModule

# Relative L1 changes chosen as powers of two, so every sum below is exact.
D = [0.125, 0.125, 0.25, 0.0625, 0.0625, 0.0625, 0.25, 0.125, 0.125]


def inputs_with_changes(changes, start=None):
    """x_0, x_1, ... with mean|x_t - x_{t-1}| / mean|x_{t-1}| == changes[t-1] exactly."""
    x = torch.ones(2, 8, dtype=torch.float64) if start is None else start
    out = [x]
    for d in changes:
        x = x * (1 + d)
        out.append(x)
    return out


def test_relative_l1_and_poly1d_match_their_definitions():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    expected = np.abs(a.numpy() - b.numpy()).mean() / np.abs(b.numpy()).mean()
    assert float(relative_l1(a, b)) == pytest.approx(expected, rel=1e-6)
    coeffs = [498.651651, -283.781631, 55.8554382, -3.82021401, 0.264230861]   # the FLUX polynomial
    for x in (0.0, 0.01, 0.1, 0.37):
        assert poly1d(coeffs, x) == pytest.approx(float(np.poly1d(coeffs)(x)), rel=1e-12)


def test_relative_l1_per_entry_and_in_bfloat16_stays_on_the_float64_definition():
    """The distance runs in the inputs' own dtype with float32 sums (no float copies): per entry of a batch it is
    each entry's own distance, and in bfloat16 it is within 0.5 % of the float64 value of the same inputs."""
    g = torch.Generator().manual_seed(1)
    prev = torch.randn(3, 64, 96, generator=g, dtype=torch.float64)
    cur = prev + torch.randn(3, 64, 96, generator=g, dtype=torch.float64) * torch.tensor([0.01, 0.1, 0.5]).view(3, 1, 1)

    def exact(c, p):
        return float((c - p).abs().mean() / p.abs().mean())

    want = [exact(cur[i], prev[i]) for i in range(3)]
    per_entry = relative_l1(cur, prev, 3)
    assert per_entry.shape == (3,) and per_entry.tolist() == pytest.approx(want, rel=1e-12)
    assert relative_l1(cur, prev).shape == () and float(relative_l1(cur, prev)) == pytest.approx(exact(cur, prev), rel=1e-12)
    c16, p16 = cur.bfloat16(), prev.bfloat16()
    got = relative_l1(c16, p16, 3)
    assert got.dtype == torch.float32
    assert got.tolist() == pytest.approx([exact(c16[i].double(), p16[i].double()) for i in range(3)], rel=5e-3)


def test_decide_all_decides_each_entry_by_the_rule_written_out_here():
    """One call's entries decided together (one host read) decide as the published rule says for each alone:
    checked against the rule written out below in float64, per entry, with skips and computes both occurring."""
    g = torch.Generator().manual_seed(2)
    base = torch.rand(2, 4, 8, generator=g, dtype=torch.float64) + 0.5
    steps = [base * (1 + 0.02 * t) + 0.01 * t * torch.rand(2, 4, 8, generator=g, dtype=torch.float64)
             for t in range(10)]
    faster = [base[1] * (1 + 0.06 * t) for t in range(10)]           # the uncond drifts three times as fast
    entries = {"c": [x[0] for x in steps], "u": faster}

    def by_hand(xs, thresh, last):
        acc, out = 0.0, []
        for t, x in enumerate(xs):
            if t == 0 or t >= last:
                acc = 0.0
                out.append(False)
                continue
            acc += float((x - xs[t - 1]).abs().mean() / xs[t - 1].abs().mean())
            out.append(acc < thresh)
            if acc >= thresh:
                acc = 0.0
        return out

    rule = TeaCacheRule(TeaCacheParams(0.1, (1.0, 0.0)), 0, 9)
    got = [rule.decide_all(s, [("c", entries["c"][s]), ("u", entries["u"][s])]) for s in range(10)]
    for i, key in enumerate(entries):
        want = by_hand(entries[key], 0.1, 9)
        assert [g_[i] for g_ in got] == want, key
        assert True in want and want.count(False) > 2          # both branches of the rule are exercised
    assert [g_[0] for g_ in got] != [g_[1] for g_ in got]        # the entries decide apart: no shared state


def test_schedule_by_hand_identity_polynomial():
    # thresh 0.3: acc .125 skip, .25 skip, .5 compute | .0625, .125, .1875 skip, .4375 compute | .125 skip | last
    xs = inputs_with_changes(D)
    assert teacache_schedule(TeaCacheParams(0.3, (1.0, 0.0)), xs) == [0, 3, 7, 9]
    # The same with the polynomial 2x and twice the threshold.
    assert teacache_schedule(TeaCacheParams(0.6, (2.0, 0.0)), xs) == [0, 3, 7, 9]


def test_schedule_by_hand_quadratic_and_offset():
    # 16 d^2 + 0.0625: d=.125 -> .3125, d=.25 -> 1.0625, d=.0625 -> .125
    xs = inputs_with_changes(D)
    p = TeaCacheParams(0.5, (16.0, 0.0, 0.0625))
    # s1 .3125 skip, s2 .625 compute | s3 1.0625 compute | s4 .125, s5 .25, s6 .375 skip, s7 1.4375 compute | s8 .3125 skip | s9 last
    assert teacache_schedule(p, xs) == [0, 2, 3, 7, 9]


def test_max_consecutive_skips():
    xs = inputs_with_changes(D)
    # cap 2: s1, s2 skip; s3 computes; s4, s5 skip; s6 capped -> compute; s7 .25 skip; s8 .375 compute; s9 last
    assert teacache_schedule(TeaCacheParams(0.3, (1.0, 0.0), max_skips=2), xs) == [0, 3, 6, 8, 9]
    assert teacache_schedule(TeaCacheParams(0.3, (1.0, 0.0), max_skips=0), xs) == list(range(10))
    assert teacache_schedule(TeaCacheParams(0.0, (1.0, 0.0)), xs) == list(range(10))       # threshold 0: never


def test_previous_input_updates_on_skipped_steps_too():
    # With the previous input kept only on computed steps, step 2 would measure 0.265625 from step 0.
    rule = TeaCacheRule(TeaCacheParams(0.3, (1.0, 0.0)), 0, 9)
    xs = inputs_with_changes(D)
    for s in range(3):
        rule.decide(s, "k", xs[s])
    assert rule.distances["k"] == {1: 0.125, 2: 0.125}


def test_window_and_first_last_steps_compute():
    xs = inputs_with_changes(D)
    rule = TeaCacheRule(TeaCacheParams(10.0, (1.0, 0.0)), 0, 9)
    got = [s for s in range(10) if not rule.decide(s, "k", xs[s], in_window=s < 5)]
    assert got == [0, 5, 6, 7, 8, 9]          # generous threshold: only the window and the ends compute


class Blocks:
    """Stand-in for a transformer: out = 2 * x + step (per entry), counting calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, step, keys, x):
        self.calls.append((step, tuple(keys)))
        return 2 * x + step


def drive(run, sig, entries, split, mods):
    """Run 10 steps; entries: key -> (kind, stream at each step); mods: key -> modulated inputs."""
    blocks, outs = Blocks(), {k: [] for k in entries}
    for step in range(10):
        calls = [[k] for k in entries] if split else [list(entries)]
        for keys in calls:
            kinds = [entries[k][0] for k in keys]
            ctx = run.begin_call(sig[step], keys, kinds)
            x = torch.cat([entries[k][1][step] for k in keys])
            run.enter_blocks(ctx, x, torch.cat([mods[k][step] for k in keys]))
            if ctx.skip:
                y = ctx.skip_out
            else:
                y = blocks(step, keys, ctx.stream_in)
                mixed = run.leave_blocks(ctx, y)
                y = y if mixed is None else mixed
            run.end_call(ctx)
            for k, chunk in zip(keys, y.chunk(len(keys))):
                outs[k].append(chunk)
    return blocks, outs


def test_run_state_per_cond_decisions_batched_equals_split():
    cond_mod = inputs_with_changes(D)                                       # computes [0, 3, 7, 9]
    uncond_mod = inputs_with_changes([0.0625] * 3 + [0.25] + [0.0625] * 5)  # computes [0, 4, 9]: acc .4375 at s4, then .25 at s8
    mods = {"c": [m[:1] for m in cond_mod], "u": [m[:1] for m in uncond_mod]}
    g = torch.Generator().manual_seed(0)
    streams = {k: [torch.randn(1, 8, dtype=torch.float64, generator=g) for _ in range(10)] for k in "cu"}
    entries = {"c": (COND, streams["c"]), "u": (UNCOND, streams["u"])}
    sig = [1 - i / 10 for i in range(11)]
    cfg = RunConfig("teacache", TeaCacheParams(0.3, (1.0, 0.0)))
    results = {}
    for split in (False, True):
        run = RunState(cfg, sig)
        blocks, outs = drive(run, sig, entries, split, mods)
        results[split] = (blocks.calls, outs, sorted(run.computed_steps))
    split_calls, split_outs, _ = results[True]
    batch_calls, batch_outs, batch_steps = results[False]
    assert sorted({s for s, k in split_calls if k == ("c",)}) == [0, 3, 7, 9]
    assert sorted({s for s, k in split_calls if k == ("u",)}) == [0, 4, 9]
    assert batch_steps == [0, 3, 4, 7, 9]              # the batch runs the blocks when any entry must
    for k in "cu":                                         # ... and each entry gets what it would get alone
        for a, b in zip(split_outs[k], batch_outs[k]):
            assert torch.equal(a, b)
    # A skipped entry's output is its stream plus the residual of its last computed step.
    x5, x3 = streams["c"][5], streams["c"][3]
    assert torch.equal(batch_outs["c"][5], x5 + (2 * x3 + 3 - x3))


def test_run_state_offset_indexes_the_whole_schedule():
    full = [1 - i / 8 for i in range(9)]
    run = RunState(RunConfig("calibrate"), full[4:], offset=4, total_steps=8)
    assert [run.step_index(s) for s in full[4:8]] == [4, 5, 6, 7]
    with pytest.raises(ValueError, match="outside a 8-step schedule"):
        RunStateFromModule(RunConfig("calibrate"), full[2:], offset=4, total_steps=8)


def test_threshold_zero_never_skips_even_with_a_negative_polynomial():
    # The Wan 2.1 1.3B ret_mode polynomial is negative for small changes: raw accumulation would skip.
    coeffs = (-52186.2437, 9230.41404, -528.275948, 13.6987616, -0.0499875664)
    assert poly1d(coeffs, 0.001) < 0
    xs = inputs_with_changes([0.0009765625] * 9)
    assert teacache_schedule(TeaCacheParams(0.0, coeffs), xs) == list(range(10))
    assert teacache_schedule(TeaCacheParams(0.01, coeffs), xs) == [0, 9]
