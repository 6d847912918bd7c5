"""The quality variants of issue 11: extrapolated residuals on skipped steps, and a skip the content confirms
(first_blocks), in magcache_core alone and inside real ComfyUI (tiny FLUX and Wan from ComfyUI's classes)."""
import contextlib
import json
from collections import Counter

import pytest
import torch

from comfyui_magcache.magcache_core import COND, UNCOND, MagCacheInputError, MagCacheParams, RatioCurves, ResidualStore
from comfyui_magcache.magcache_core import RunConfig, RunState
from comfyui_magcache.magcache_core.firstblock import FirstBlockParams, FirstBlockRule
from comfyui_magcache.nodes.magcache_nodes import MagCacheApply, MagCacheRatios
from comfyui_magcache.nodes.teacache_nodes import TeaCacheApply
from test_hot_path import no_cpu_clock_check  # noqa: F401 (a fixture)
from tiny_models import dynamo_counts, sample, tiny_flux, tiny_wan

APPLY = MagCacheApply()


def apply(model, preset="auto", threshold=0.24, retention=0.2, k=4, **kw):
    return APPLY.apply(model, preset, threshold, retention, k, **kw)[0]


def custom(obj):
    return MagCacheRatios().parse(json.dumps(obj))[0]


# -- the residual store and the run, by hand ------------------------------------------------------------------
def test_store_keeps_one_previous_residual_and_combines_per_key():
    s = ResidualStore(keep_previous=True)
    a0, a1 = torch.full((1, 3, 2), 1.0), torch.full((1, 3, 2), 4.0)
    b1 = torch.full((1, 3, 2), 10.0)
    s.put_batch(["a"], a0, at=(0, 1.0))
    s.put_batch(["a", "b"], torch.cat([a1, b1]), at=(2, 0.5))
    assert s.history("a") == ((2, 0.5), (0, 1.0)) and s.history("b") == ((2, 0.5), None)
    like = torch.zeros(2, 3, 2, dtype=torch.float64)
    got = s.get_batch(["a", "b"], like, [(1.5, -0.5), (1.5, -0.5)])      # b has no previous: b is ignored
    assert got.dtype == torch.float64
    assert torch.allclose(got[0], torch.full((3, 2), 1.5 * 4 - 0.5 * 1, dtype=torch.float64))
    assert torch.allclose(got[1], torch.full((3, 2), 1.5 * 10, dtype=torch.float64))
    assert torch.equal(s.get_batch(["a"], like[:1]), a1.double())         # no coefficients: the last one as it is
    s.put_batch(["a"], torch.zeros(1, 5, 2), at=(3, 0.2))                 # another shape: no history across it
    assert s.history("a") == ((3, 0.2), None)
    plain = ResidualStore()
    plain.put_batch(["a"], a0, at=(0, 1.0))
    plain.put_batch(["a"], a1, at=(1, 0.5))
    assert plain.history("a") == ((1, 0.5), None)                        # only extrapolation keeps the extra one


def drive(run, sigmas, streams, calls_of):
    """Runs the host protocol for each step: ``streams[step]`` is the blocks' input (one row per entry, cond then
    uncond), the blocks add ``step + 1`` times a fixed pattern. Returns (per step: the output of each call or None)."""
    outs = {}
    for step in range(len(sigmas) - 1):
        for keys, kinds in calls_of(step):
            rows = [i for i, k in enumerate(["c", "u"]) if k in keys]
            x = streams[step][rows]
            ctx = run.begin_call(sigmas[step], keys, kinds)
            run.enter_blocks(ctx, x)
            if ctx.skip:
                outs.setdefault(step, []).append(ctx.skip_out)
            else:
                out = x + (step + 1) * (torch.arange(x.numel(), dtype=x.dtype).reshape(x.shape) + 1) ** 0.5
                mixed = run.leave_blocks(ctx, out)
                outs.setdefault(step, []).append(out if mixed is None else mixed)
            run.end_call(ctx)
    return outs


@pytest.mark.parametrize("form", ["off", "step", "sigma", "ratio"])
def test_run_extrapolates_the_residual_on_skipped_steps(form):
    """Flat curve, K 2, retention 0: steps 0, 3, 6 compute. On 4 and 5 the residual is predicted from those of
    steps 0 and 3 (before step 3 there is one residual only: reused as it is)."""
    n = 8
    sig = [1.0, 0.9, 0.75, 0.6, 0.5, 0.3, 0.2, 0.1, 0.0]
    curve = [1.0, 1.0, 1.0, 1.0, 0.9, 0.8, 1.0, 1.0]
    cfg = RunConfig("magcache", MagCacheParams(0.5, 0.0, 2), RatioCurves.from_json(curve), extrapolate=form)
    g = torch.Generator().manual_seed(0)
    streams = [torch.randn(1, 4, 3, generator=g, dtype=torch.float64) for _ in range(n)]
    run = RunState(cfg, sig)
    outs = drive(run, sig, streams, lambda s: [(["c"], [COND])])
    assert sorted(run.computed_steps) == [0, 3, 6]
    r = {s: outs[s][0] - streams[s] for s in (0, 3)}
    for step in (4, 5):
        w = {"step": (step - 3) / 3, "sigma": (sig[step] - sig[3]) / (sig[3] - sig[0])}.get(form, 0.0)
        expected = r[3] + w * (r[3] - r[0])
        if form == "ratio":
            expected = r[3] * (0.9 if step == 4 else 0.9 * 0.8)
        torch.testing.assert_close(outs[step][0], streams[step] + expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(outs[1][0], streams[1] + r[0], rtol=0, atol=0)      # one residual: reused


def test_extrapolation_form_needs_a_curve_for_ratio():
    with pytest.raises(ValueError, match="ratio"):
        RunConfig("teacache", extrapolate="ratio")
    with pytest.raises(ValueError, match="extrapolate"):
        RunConfig("magcache", extrapolate="quadratic")


# -- the first-block rule, by hand ---------------------------------------------------------------------------
def test_first_block_rule_by_hand():
    rule = FirstBlockRule(FirstBlockParams(1, 0.1))
    # the prior (MagCache's step decision) must allow it; a None change (no reference yet) computes
    changes = [None, 0.0, 0.05, 0.09, 0.12, 0.01, 0.01]
    prior = [False, True, True, True, True, False, True]
    assert [rule.decide(s, "c", c, p) for s, (c, p) in enumerate(zip(changes, prior))] == \
        [False, True, True, True, False, False, True]
    acc = FirstBlockRule(FirstBlockParams(1, 0.1, accumulate=True))
    assert [acc.decide(s, "c", c, True) for s, c in enumerate([None, 0.04, 0.04, 0.04, 0.04])] == [False, True, True, False, True]
    never = FirstBlockRule(FirstBlockParams(1, 0.0))
    assert not any(never.decide(s, "c", 0.0, True) for s in range(10))


def drive_first_blocks(run, sig, probes):
    """A first-block run by hand, one entry: ``probes[step]`` is what the first block adds; the other blocks add 1."""
    computed = []
    for step in range(len(sig) - 1):
        x = torch.zeros(1, 2, 2, dtype=torch.float64)
        ctx = run.begin_call(sig[step], ["c"], [COND])
        run.enter_blocks(ctx, x)
        run.confirm_first_blocks(ctx, x + probes[step])
        if not ctx.skip:
            run.leave_blocks(ctx, x + probes[step] + 1)
            computed.append(step)
        run.end_call(ctx)
    return computed


@pytest.mark.parametrize("content, prior, expected", [
    (1.0, True, [0, 3, 5]),             # the content allows everything: MagCache's schedule (curve, K 2)
    (0.3, True, [0, 3, 4, 5, 6]),       # ... and vetoes 4 (first block 1 -> 1.5) and 6 (1.5 -> 1)
    (0.3, False, [0, 3, 4, 6]),         # without the curve's threshold step 5 skips: retention, K and the content
    (0.0, True, [0, 1, 2, 3, 4, 5, 6, 7]),
])
def test_run_first_blocks_prior_and_veto(content, prior, expected):
    sig = [1 - i / 8 for i in range(9)]
    curve = [1.0, 1.0, 1.0, 1.0, 1.0, 1.5, 1.0, 1.0]              # ratio 1.5 at step 5: MagCache computes it
    probes = [torch.full((1, 2, 2), v, dtype=torch.float64) for v in (1, 1, 1, 1, 1.5, 1.5, 1, 1)]
    cfg = RunConfig("magcache", MagCacheParams(0.2, 0.0, 2), RatioCurves.from_json(curve),
                    first_blocks=FirstBlockParams(1, content, prior=prior))
    run = RunState(cfg, sig, blocks=4)
    assert drive_first_blocks(run, sig, probes) == expected
    skipped = 8 - len(expected)
    assert run.block_pass_speedup(len(expected), skipped) == pytest.approx(32 / (4 * len(expected) + skipped))


# -- inside ComfyUI ------------------------------------------------------------------------------------------
class EveryBlock:
    """Per block of the model (in the order the strategy runs them): the (step, conds) of each call that ran it."""

    def __init__(self, model):
        dm = model.model.diffusion_model
        blocks = list(dm.double_blocks) + list(dm.single_blocks) if hasattr(dm, "double_blocks") else list(dm.blocks)
        self.calls = [[] for _ in blocks]
        self.handles = [b.register_forward_pre_hook(self._hook(i), with_kwargs=True) for i, b in enumerate(blocks)]

    def _hook(self, i):
        def hook(module, args, kwargs):
            to = kwargs["transformer_options"]
            sig = to["sample_sigmas"].tolist()
            self.calls[i].append((sig.index(float(to["sigmas"][0])), tuple(to["cond_or_uncond"])))
        return hook

    def steps(self, i):
        return sorted({s for s, _ in self.calls[i]})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


@contextlib.contextmanager
def force_split(model):
    old = model.model.memory_usage_factor
    model.model.memory_usage_factor = 1e12
    try:
        yield model
    finally:
        model.model.memory_usage_factor = old


@pytest.fixture(scope="module")
def flux():
    return tiny_flux()


@pytest.fixture(scope="module")
def wan():
    return tiny_wan()


@pytest.mark.parametrize("make", [tiny_flux, tiny_wan], ids=["flux", "wan"])
def test_comfy_extrapolated_skip_is_the_formula(make):
    """On a skipped step the head sees the blocks' input + r3 + w (r3 - r0), w = (step - 3) / 3, per cond."""
    model = make()
    dm = model.model.diffusion_model
    embed, head = (dm.img_in, dm.final_layer) if hasattr(dm, "img_in") else (dm.patch_embedding, dm.head)
    log = []
    h1 = embed.register_forward_hook(lambda m, a, out: log.append(out.detach().clone()))
    h2 = head.register_forward_pre_hook(lambda m, a: log.append(a[0].detach().clone()))
    try:
        patched = apply(model, threshold=0.5, retention=0.0, k=2, ratios=custom([1.0] * 8), skipped_steps="extrapolate")
        with EveryBlock(model) as blocks:
            sample(patched, steps=8, cfg=3.0)
    finally:
        h1.remove(), h2.remove()
    assert blocks.steps(0) == [0, 3, 6]
    calls = [(log[i], log[i + 1]) for i in range(0, len(log), 2)]
    if calls[0][0].ndim == 5:
        calls = [(x.flatten(2).transpose(1, 2), h) for x, h in calls]
    r0, r3 = calls[0][1] - calls[0][0], calls[3][1] - calls[3][0]
    assert (r3 - r0).abs().max() > 1e-3                                    # the two differ: the test can tell
    for step in (4, 5):
        w = (step - 3) / 3
        x, head_in = calls[step]
        torch.testing.assert_close(head_in, x + torch.lerp(r0, r3, 1 + w), rtol=1e-5, atol=1e-6)
        assert (head_in - (x + r3)).abs().max() > 1e-4                      # not the plain reuse
    torch.testing.assert_close(calls[1][1], calls[1][0] + r0, rtol=0, atol=0)   # one residual so far: reused


@pytest.mark.parametrize("make", [tiny_flux, tiny_wan], ids=["flux", "wan"])
@pytest.mark.parametrize("kw", [dict(threshold=0.0, skipped_steps="extrapolate"),
                                dict(threshold=0.0, first_blocks=1, first_blocks_threshold=0.5),
                                dict(threshold=0.5, first_blocks=1, first_blocks_threshold=0.0)],
                         ids=["extrapolate", "first_blocks prior 0", "first_blocks content 0"])
def test_comfy_threshold_zero_stays_bit_identical(make, kw):
    model = make()
    ref = sample(model, steps=6, cfg=3.0)
    preset = "flux" if make is tiny_flux else "wan2.1_t2v_1.3B"
    assert torch.equal(sample(apply(model, preset, retention=0.0, **kw), steps=6, cfg=3.0), ref)


def fb_apply(model, content, k=3, **kw):
    return apply(model, threshold=0.5, retention=0.0, k=k, ratios=custom([1.0] * 10), first_blocks=kw.pop("n", 1),
                 first_blocks_threshold=content, **kw)


@pytest.mark.parametrize("n", [1, 2])
def test_comfy_first_blocks_run_every_step_the_others_only_on_computed_steps(flux, n, caplog):
    import logging
    with caplog.at_level(logging.INFO, logger="comfyui-magcache"):
        with EveryBlock(flux) as seen:
            sample(fb_apply(flux, 2.0, n=n), steps=10, cfg=1.0)
    every = list(range(10))
    for i in range(n):
        assert seen.steps(i) == every
    rest = seen.steps(n)
    assert rest == [0, 4, 8]                                               # content always allows: K 3 decides
    for i in range(n, len(seen.calls)):
        assert seen.steps(i) == rest
    # the log counts block passes: 4 blocks, 3 computed steps, 7 skipped that still ran n blocks
    line = next(r.getMessage() for r in caplog.records if "computed 3/10 steps" in r.getMessage())
    assert f"({round(10 * 4 / (3 * 4 + 7 * n), 3):.2f}x fewer block passes)" in line      # the report rounds first


def test_comfy_first_blocks_skip_is_fresh_first_blocks_plus_cached_rest(wan):
    """On a skipped step the head sees the stream after the first block of this step + (last block out - first
    block out) of the last computed step."""
    dm = wan.model.diffusion_model
    mids, outs = [], []
    h1 = dm.blocks[0].register_forward_hook(lambda m, a, out: mids.append(out.detach().clone()))
    h2 = dm.head.register_forward_pre_hook(lambda m, a: outs.append(a[0].detach().clone()))
    try:
        with EveryBlock(wan) as seen:
            sample(fb_apply(wan, 2.0, skipped_steps="reuse"), steps=10, cfg=1.0)
    finally:
        h1.remove(), h2.remove()
    assert seen.steps(1) == [0, 4, 8] and len(mids) == len(outs) == 10
    rest = outs[0] - mids[0]
    for step in range(1, 10):
        if step in (4, 8):
            rest = outs[step] - mids[step]
            continue
        torch.testing.assert_close(outs[step], mids[step] + rest, rtol=0, atol=1e-6)


def first_blocks_sample(model, content, seed=3, split=False, steps=12):
    with force_split(model) if split else contextlib.nullcontext(model) as m:
        with EveryBlock(m) as seen:
            out = sample(fb_apply(m, content, k=4), steps=steps, cfg=4.0, seed=seed)
    return out, seen


@pytest.mark.parametrize("make, content", [(tiny_flux, 0.8), (tiny_wan, 0.08)], ids=["flux", "wan"])
def test_comfy_first_blocks_batched_and_split_cfg_decide_the_same(make, content):
    """Decisions are per cond entry (an entry's change is known only inside its own call). Split, a cond's remaining
    blocks run exactly where it computes; batched, they run for both rows where either computes, and the row that
    may skip takes its cached residual: the same images. The settings make cond and uncond disagree somewhere."""
    model = make()
    batched, b = first_blocks_sample(model, content)
    split, s = first_blocks_sample(model, content, split=True)
    last = len(b.calls) - 1
    per_cond = {c: sorted({st for st, k in s.calls[last] if c in k}) for c in (0, 1)}
    assert {len(k) for _, k in s.calls[last]} == {1} and {len(k) for _, k in b.calls[0]} == {2}
    assert per_cond[0] != per_cond[1]                                      # a step where only one of them computes
    assert b.steps(last) == sorted(set(per_cond[0]) | set(per_cond[1]))
    torch.testing.assert_close(split, batched, rtol=1e-5, atol=1e-5)


def test_comfy_first_blocks_schedule_follows_the_content(wan):
    """One patched model, one setting: another seed changes the content, hence which steps compute (MagCache's
    schedule, from the curve alone, would be the same for both)."""
    schedules = set()
    for seed in (3, 4, 5, 6):
        _, seen = first_blocks_sample(wan, 0.08, seed=seed, steps=16)
        schedules.add(tuple(seen.steps(len(seen.calls) - 1)))
    assert len(schedules) > 1, schedules


def test_comfy_first_blocks_then_plain_run_on_one_model_share_nothing(flux):
    a = sample(fb_apply(flux, 0.3), steps=8, cfg=1.0)
    patched = fb_apply(flux, 0.3)
    sample(patched, steps=6, cfg=1.0, size=24)
    assert torch.equal(sample(patched, steps=8, cfg=1.0), a)


@pytest.mark.parametrize("kwargs, input_name", [
    (dict(skipped_steps="taylor"), "skipped_steps"),
    (dict(first_blocks=-1), "first_blocks"),
    (dict(first_blocks=1.5), "first_blocks"),
    (dict(first_blocks=4), "first_blocks"),                      # tiny FLUX has 4 blocks: none left to skip
    (dict(first_blocks=1, first_blocks_threshold=-0.1), "first_blocks_threshold"),
    (dict(first_blocks=1, first_blocks_threshold=float("nan")), "first_blocks_threshold"),
    (dict(first_blocks=1, speed="2x"), "speed"),
])
def test_comfy_bad_variant_inputs_name_the_input(flux, kwargs, input_name):
    with pytest.raises(MagCacheInputError) as e:
        apply(flux, "flux", **kwargs)
    assert str(e.value).startswith(input_name + ":"), str(e.value)


def test_comfy_first_blocks_on_a_whole_model_names_the_input():
    from tiny_zoo import build
    with pytest.raises(MagCacheInputError, match=r"^first_blocks: .* whole model"):
        APPLY.apply(build("lumina2"), "auto", 0.24, 0.2, 4, first_blocks=1)


def test_comfy_teacache_extrapolates_too(flux):
    ref = sample(flux, steps=10)
    plain = sample(TeaCacheApply().apply(flux, "flux", 0.6, skipped_steps="reuse")[0], steps=10)
    extrapolated = sample(TeaCacheApply().apply(flux, "flux", 0.6, skipped_steps="extrapolate")[0], steps=10)
    assert not torch.equal(plain, extrapolated) and not torch.equal(plain, ref)
    with pytest.raises(MagCacheInputError, match=r"^skipped_steps:"):
        TeaCacheApply().apply(flux, "flux", 0.6, skipped_steps="ratio")


def test_extrapolated_skipped_step_syncs_nothing_and_gathers_before_the_model_runs(no_cpu_clock_check):
    """Extrapolation's work is one lerp per skipped step (cond and uncond stored together: the two batches at
    once, no cat), made when the step is decided, before the model runs; inside a skipped call the pack makes
    what plain MagCache makes (input + residual), and no host sync anywhere in the model calls."""
    from test_hot_path import SYNCS, PackTorchCalls, flat
    from test_comfy_magcache import BlockSteps
    model = tiny_wan(seed=3)
    m = MagCacheApply().apply(model, "auto", 0.5, 0.2, 10, ratios=flat(), skipped_steps="extrapolate")[0]
    spy = PackTorchCalls()
    with BlockSteps(model) as ran, spy:
        sample(m, steps=10, cfg=3.0)
    assert ran.steps == [0, 1], ran.steps
    skipped = spy.calls[True]
    assert not (set(skipped) & SYNCS) and not (set(spy.calls[False]) & SYNCS), spy.calls
    skipped.pop("__getitem__", None)
    assert skipped == Counter({"add": 8}), skipped
    assert spy.calls[None]["lerp"] == 8 and "cat" not in spy.calls[None], spy.calls[None]
    assert not no_cpu_clock_check


@pytest.mark.parametrize("kw", [dict(skipped_steps="extrapolate"),
                                dict(skipped_steps="extrapolate", first_blocks=1, first_blocks_threshold=2.0)],
                         ids=["extrapolate", "first_blocks extrapolated"])
def test_comfy_cpu_offload_gives_the_same_result(wan, kw):
    """The previous residuals are offloaded and brought back with the last ones (cache_device cpu)."""
    ratios = custom([1.0] * 10)
    a = sample(apply(wan, threshold=0.5, retention=0.0, k=3, ratios=ratios, **kw), steps=10, cfg=3.0)
    b = sample(apply(wan, threshold=0.5, retention=0.0, k=3, ratios=ratios, cache_device="cpu", **kw), steps=10, cfg=3.0)
    plain = sample(apply(wan, threshold=0.5, retention=0.0, k=3, ratios=ratios, skipped_steps="reuse"), steps=10,
                   cfg=3.0)
    assert torch.equal(a, b) and not torch.equal(a, plain)


def test_torch_compile_sees_no_graph_break_from_extrapolation():
    """As test_hot_path's check for plain MagCache: extrapolation adds no graph-break reason and no recompiles
    (its lerp runs before the model, outside the compiled forward). first_blocks does break the graph at its
    confirming block (it reads the change on the host), so it is not checked here; the README says so."""
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    comp = tiny_flux(seed=6).clone()
    set_torch_compile_wrapper(comp, backend="eager")

    reuse = MagCacheApply().apply(comp, "flux", 0.24, 0.1, 5, skipped_steps="reuse")[0]     # the default extrapolates
    plain_reasons, plain_graphs = dynamo_counts(reuse)
    reasons, graphs = dynamo_counts(MagCacheApply().apply(comp, "flux", 0.24, 0.1, 5, skipped_steps="extrapolate")[0])
    assert reasons <= plain_reasons, reasons - plain_reasons
    assert graphs[0] == graphs[-1] and graphs[0] <= plain_graphs[0], (graphs, plain_graphs)
