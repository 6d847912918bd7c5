"""The pack under ComfyUI 0.33's multi-GPU work units (``MultiGPU_WorkUnits``, "MultiGPU CFG Split").

There, ``_calc_cond_batch_multigpu`` (comfy/samplers.py) hands the cond batches of one model call to one
worker thread per device (``comfy.multigpu.MultiGPUThreadPool``); each thread calls its device's own
BaseModel (a clone built from the loader's ``cached_patcher_init``) with its own transformer_options, merged
from the one sampling run's model_options: the pack's OUTER_SAMPLE wrapper runs once, its APPLY_MODEL
wrapper and block patches run in every thread at once, on one shared ``RunState``.

On the CPU: ComfyUI lists one CPU device, and the node adds every listed device other than the model's
own load device. So the model's load device is set to ``cpu:0`` (which torch keeps apart from ``cpu``) and
the real node then deep-clones it onto ``cpu``: two devices, two threads, the real work-unit path. cond and
uncond then run as separate batches, one per thread, which makes the threaded run bit-identical to a
one-device run with cond and uncond forced apart ("split"); "batched" runs them as one forward.

In the threaded runs a test-side DIFFUSION_MODEL wrapper holds each call until the other thread's call of
the same step has started too, so the two calls are always inside the model at the same time (the
interleaving that crossed the calls' state before each call carried its own context).

ComfyUI before 0.33 has no work units: there the threaded mode is skipped, batched and split still run.
"""
import contextlib
import gc
import json
import logging
import re
import threading

import pytest
import torch

import comfy.patcher_extension
from comfyui_magcache.magcache_core import (COND, UNCOND, MagCacheParams, RatioCurves,
                                            ResidualStore, RunConfig, RunState)
from comfyui_magcache.nodes.magcache_nodes import MagCacheApply, MagCacheCalibrate, MagCacheRatios, calibration_store
from comfyui_magcache.nodes.teacache_nodes import TeaCacheApply
import tiny_zoo
from test_comfy_magcache import force_split
from tiny_models import sample, tiny_flux, tiny_wan

try:
    from comfy_extras.nodes_multigpu import MultiGPUCFGSplitNode
except ImportError:          # ComfyUI before 0.33
    MultiGPUCFGSplitNode = None

WMP = comfy.patcher_extension.WrappersMP
MODELS = [tiny_flux, tiny_wan]
IDS = ["flux", "wan"]
MODES = ["batched", "split", "threaded"]
NO_WORK_UNITS = "this ComfyUI has no multi-GPU work units (MultiGPU_WorkUnits / comfy.multigpu came with 0.33)"
HERE = MODES if MultiGPUCFGSplitNode is not None else MODES[:2]      # the modes this ComfyUI has
CFG_RATIOS = {"cond": [1, 1, 1, 1, 1, 1.5, 1, 1], "uncond": [1, 1.05, 1.05, 1.3, 1, 1, 1, 1]}


def preset(model):
    return "flux" if hasattr(model.model.diffusion_model, "double_blocks") else "wan2.1_t2v_1.3B"


def magcache(model, threshold, retention=0.0, k=3, ratios=None, **kw):
    ratios = MagCacheRatios().parse(json.dumps(ratios))[0] if ratios is not None else None
    return MagCacheApply().apply(model, preset(model), threshold, retention, k, ratios=ratios, **kw)[0]


def teacache(model, thresh):
    return TeaCacheApply().apply(model, preset(model), thresh)[0]


def work_units(model, make):
    """``model`` on two CPU devices through the real MultiGPU_WorkUnits node (see the module docstring)."""
    if MultiGPUCFGSplitNode is None:
        pytest.skip(NO_WORK_UNITS)
    # ComfyUI 0.33's node (reuse_loaded) reads .model of every loaded patcher and fails (AttributeError on
    # None) on one already freed while its model lives on. So every run here builds its own model, which
    # dies with its patchers (its entry goes then), and reference cycles are collected first.
    gc.collect()
    m = model.clone()
    m.cached_patcher_init = (make, ())       # what a loader registers; the node builds the other device's model from it
    m.load_device = torch.device("cpu", 0)
    out = MultiGPUCFGSplitNode.execute(m, max_gpus=2)
    mg = out.result[0] if hasattr(out, "result") else out[0]
    assert [c.load_device for c in mg.get_additional_models_with_key("multigpu")] == [torch.device("cpu")]
    return mg


def device_models(model):
    """Every device's BaseModel: the model's own, then its work-unit clones'."""
    return [model.model] + [c.model for c in model.get_additional_models_with_key("multigpu")]


class Together:
    """A DIFFUSION_MODEL wrapper: each model call waits until ``n`` calls are inside the model at once."""

    def __init__(self, n=2):
        self.barrier = threading.Barrier(n, timeout=20)
        self.threads = set()

    def __call__(self, executor, *args, **kwargs):
        self.threads.add(threading.get_ident())
        self.barrier.wait()
        return executor(*args, **kwargs)

    def attach(self, model):
        m = model.clone()
        m.add_wrapper_with_key(WMP.DIFFUSION_MODEL, "test-together", self)
        return m


class FirstBlock:
    """Which conds ran the first transformer block at which step, seen on every device's real block."""

    def __init__(self, model):
        self.calls = []
        self.handles = []
        for base in device_models(model):
            dm = base.diffusion_model
            block = dm.double_blocks[0] if hasattr(dm, "double_blocks") else dm.blocks[0]
            self.handles.append(block.register_forward_pre_hook(self._hook, with_kwargs=True))

    def _hook(self, module, args, kwargs):
        to = kwargs["transformer_options"]
        step = to["sample_sigmas"].tolist().index(float(to["sigmas"][0]))
        self.calls.append((step, tuple(to["cond_or_uncond"]), threading.get_ident()))

    def steps(self, kind=None):
        return sorted({s for s, kinds, _ in self.calls if kind is None or kind in kinds})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


@contextlib.contextmanager
def mode(make, name, patch=lambda m: m):
    """A new ``make()`` with ``patch`` applied, prepared to run ``name``; the threaded one applies the
    patch before the node."""
    if name == "threaded":
        together = Together()
        yield together.attach(work_units(patch(make()), make))
        assert len(together.threads) == 2, "the two devices' calls did not run on two threads"
    elif name == "split":
        with force_split(patch(make())) as m:
            yield m
    else:
        yield patch(make())


def run(make, name, patch=lambda m: m, steps=8, cfg=4.0, caplog=None, draw=None):
    """(image, first-block calls, the run's log summary) of one sampling run in mode ``name``."""
    with mode(make, name, patch) as m, FirstBlock(m) as seen:
        if caplog is not None:
            caplog.clear()
        out = draw(m) if draw is not None else sample(m, steps=steps, cfg=cfg)
    summary = None
    if caplog is not None:
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("MagCache ")]
        summary = re.sub(r", [\d.]+ s$", "", lines[-1][lines[-1].index("computed"):]) if lines else None  # no time
    return out, seen, summary


# -- 1. nothing skipped: bit-identical to the unpatched model in every mode -------------------------
@pytest.mark.parametrize("name", MODES)
@pytest.mark.parametrize("make", MODELS, ids=IDS)
def test_threshold_zero_and_calibration_are_bit_identical_in_every_mode(make, name):
    ref, _, _ = run(make, name, steps=5)
    if name == "threaded":        # the work units do what a one-device run with cond and uncond apart does
        assert torch.equal(ref, run(make, "split", steps=5)[0])
    for patch in (lambda m: magcache(m, 0.0), lambda m: teacache(m, 0.0),
                  lambda m: MagCacheCalibrate().calibrate(m, f"exact {make.__name__} {name}")[0]):
        assert torch.equal(run(make, name, patch, steps=5)[0], ref)


# -- 2. skipping: the same decisions and the same images in every mode --------------------------------
@pytest.mark.parametrize("apply_first", [True, False], ids=["patch-then-node", "node-then-patch"])
@pytest.mark.parametrize("make", MODELS, ids=IDS)
def test_magcache_same_decisions_and_images_batched_split_threaded(make, apply_first, caplog):
    patch = lambda m: magcache(m, 0.2, ratios=CFG_RATIOS)          # noqa: E731
    caplog.set_level(logging.INFO, logger="comfyui-magcache")
    if not apply_first and MultiGPUCFGSplitNode is None:
        pytest.skip(NO_WORK_UNITS)
    results = {}
    for name in HERE:
        if name == "threaded" and not apply_first:
            results[name] = run(make, "threaded", caplog=caplog, draw=lambda m: sample(patch(m), steps=8, cfg=4.0))
        else:
            results[name] = run(make, name, patch, caplog=caplog)
    for name, (_, seen, summary) in results.items():
        # by hand (test_core): cond alone computes [0, 4, 5], uncond [0, 3, 7]; together [0, 3, 5]
        assert seen.steps(COND) == seen.steps(UNCOND) == [0, 3, 5], name
        assert summary == ("computed 3/8 steps [0, 3, 5], skipped 5 (2.67x fewer block passes)"), (name, summary)
    assert {len(k) for _, k, _ in results["split"][1].calls} == {1}
    assert {len(k) for _, k, _ in results["batched"][1].calls} == {2}
    if MultiGPUCFGSplitNode is not None:
        assert len({t for _, _, t in results["threaded"][1].calls}) == 2    # cond and uncond on their own devices
        assert torch.equal(results["threaded"][0], results["split"][0])
    torch.testing.assert_close(results["batched"][0], results["split"][0], rtol=1e-5, atol=1e-5)
    assert (run(make, "batched")[0] - results["batched"][0]).abs().max() > 1e-4    # something was skipped


def test_teacache_same_decisions_and_images_batched_split_threaded(caplog):
    """TeaCache decides per cond: cond and uncond skip different steps; a batched forward computes
    when either must (and the other takes its cached residual)."""
    make = lambda: tiny_zoo.build("flux")                              # noqa: E731
    pos, neg = tiny_zoo.conds("flux")
    # a negative with a 10x pooled vector: its modulated input changes less, so it skips other steps than cond
    neg = [[neg[0][0], {**neg[0][1], "pooled_output": neg[0][1]["pooled_output"] * 10}]]
    draw = lambda m: tiny_zoo.sample(m, "flux", steps=12, cfg=4.0, positive=pos, negative=neg)   # noqa: E731
    caplog.set_level(logging.INFO, logger="comfyui-magcache")
    results = {name: run(make, name, lambda m: teacache(m, 1.0), caplog=caplog, draw=draw) for name in HERE}
    split = results["split"][1]
    cond, uncond = split.steps(COND), split.steps(UNCOND)
    assert cond != uncond and 2 < len(cond) < 11 and 2 < len(uncond) < 11       # a schedule worth comparing
    for name, (_, seen, summary) in results.items():
        if name != "batched":
            assert (seen.steps(COND), seen.steps(UNCOND)) == (cond, uncond), name
        assert seen.steps() == sorted(set(cond) | set(uncond)), name
        assert summary == results["split"][2], name
    if MultiGPUCFGSplitNode is not None:
        assert torch.equal(results["threaded"][0], results["split"][0])
    # same math, other batch shapes (the output is up to ~50 here: float32 noise of batching ~2e-5)
    torch.testing.assert_close(results["batched"][0], results["split"][0], rtol=1e-5, atol=1e-4)
    assert (run(make, "batched", draw=draw)[0] - results["batched"][0]).abs().max() > 1e-2


@pytest.mark.parametrize("make", MODELS, ids=IDS)
def test_calibration_same_in_every_mode(make):
    docs = {}
    for name in HERE:
        label = f"modes {make.__name__} {name}"
        run(make, name, lambda m: MagCacheCalibrate().calibrate(m, label)[0], steps=6)
        docs[name] = json.load(open(calibration_store().path(label)))
    assert set(docs["split"]["mag_ratios"]) == {"cond", "uncond"}
    if MultiGPUCFGSplitNode is not None:
        assert docs["threaded"]["stats"] == docs["split"]["stats"]
        assert docs["threaded"]["mag_ratios"] == docs["split"]["mag_ratios"]
    for kind, curve in docs["split"]["mag_ratios"].items():
        assert curve == pytest.approx(docs["batched"]["mag_ratios"][kind], rel=1e-3, abs=1e-4), kind


# -- 3. each device's calls see their own state -----------------------------------------------------
@pytest.mark.parametrize("make", MODELS, ids=IDS)
def test_threaded_skipped_step_uses_the_residual_its_own_device_computed(make):
    """On each device: a skipped step's final layer sees that call's input plus the residual the same
    device's blocks added at its last computed step (cond's on one device, uncond's on the other)."""
    model = work_units(make(), make)
    log = {}

    def note(what, tensor):
        log.setdefault(threading.get_ident(), []).append((what, tensor.detach().clone()))
    handles = []
    for base in device_models(model):
        dm = base.diffusion_model
        embed, head = (dm.img_in, dm.final_layer) if hasattr(dm, "img_in") else (dm.patch_embedding, dm.head)
        handles.append(embed.register_forward_hook(lambda m, a, out: note("in", out)))
        handles.append(head.register_forward_pre_hook(lambda m, a: note("head", a[0])))
    together = Together()
    try:
        with FirstBlock(model) as blocks:
            # "reuse": the residual as it was computed (extrapolation has its own tests in test_variants.py)
            sample(together.attach(magcache(model, 0.5, k=2, ratios=[1.0] * 6, skipped_steps="reuse")), steps=6,
                   cfg=3.0)
    finally:
        for h in handles:
            h.remove()
    assert blocks.steps(COND) == blocks.steps(UNCOND) == [0, 3]
    assert len(log) == 2
    residuals = []
    for thread, entries in log.items():
        assert [w for w, _ in entries] == ["in", "head"] * 6
        residual = None
        for step in range(6):
            x_in, head_in = entries[2 * step][1], entries[2 * step + 1][1]
            if x_in.ndim == 5:                       # Wan embeds to (B, C, T, H, W); blocks see tokens
                x_in = x_in.flatten(2).transpose(1, 2)
            if step in (0, 3):
                residual = head_in - x_in
                residuals.append(residual)
            else:
                assert torch.equal(head_in, x_in + residual), (thread, step)
    assert not torch.equal(residuals[0], residuals[2])      # cond's and uncond's residuals differ


class MovablePatch:
    """A foreign block patch with ``to`` (as ComfyUI's model patches have): ComfyUI hands each device a copy.
    It notes its calls in ``SEEN[token]`` (ComfyUI 0.3.75's clone deep-copies patches, a token survives that)."""

    SEEN: dict[str, list] = {}

    def __init__(self, token, device=None):
        self.token, self.device = token, device

    def to(self, device_or_dtype):
        return MovablePatch(self.token, device_or_dtype) if isinstance(device_or_dtype, torch.device) else self

    def __call__(self, args, extra):
        self.SEEN[self.token].append((threading.get_ident(), str(self.device)))
        return extra["original_block"](args)


@pytest.mark.parametrize("name", MODES)
def test_a_wrapped_block_patch_is_moved_as_it_would_be_alone(name):
    """ComfyUI calls ``to`` on block patches (under work units: in each thread, to that call's device);
    the pack's patch wrapping a foreign one passes that on, so the foreign patch sees what it sees alone."""
    def devices(with_magcache):
        token = f"{name} {with_magcache}"
        seen = MovablePatch.SEEN[token] = []

        def patch(m):
            m = m.clone()
            m.set_model_patch_replace(MovablePatch(token), "dit", "double_block", 0)
            return magcache(m, 0.0) if with_magcache else m
        run(tiny_flux, name, patch, steps=3)
        assert len(seen) == 3 * (1 if name == "batched" else 2)
        by_thread = {}
        for thread, device in seen:
            by_thread.setdefault(thread, set()).add(device)
        return sorted(by_thread.values(), key=sorted)
    alone = devices(False)
    if name == "threaded":
        assert alone == [{"cpu"}, {"cpu:0"}]        # each device's own copy (the main model is on cpu:0)
    assert devices(True) == alone


# -- 4. the shared run state under threads (no ComfyUI) ----------------------------------------------
def test_one_decision_per_step_when_devices_call_at_once():
    """Two devices' calls of one step reach ``begin_call`` together: the rule decides the step once."""
    cfg = RunConfig("magcache", MagCacheParams(0.2, 0.0, 3), RatioCurves(per_kind={k: tuple(v) for k, v in
                                                                                    {COND: CFG_RATIOS["cond"],
                                                                                     UNCOND: CFG_RATIOS["uncond"]}.items()}))
    sig = [1 - i / 8 for i in range(9)]
    state = RunState(cfg, sig)
    decided = []
    rule_decide = state.rule.decide
    meet = threading.Barrier(2, timeout=0.3)

    def decide(step, kinds, in_window=True):
        decided.append(step)
        try:
            meet.wait()              # let the other device's call in, if it can get here too
        except threading.BrokenBarrierError:
            meet.reset()
        return rule_decide(step, kinds, in_window)
    state.rule.decide = decide
    x = torch.zeros(1, 4, 2)
    computed = {"c": [], "u": []}

    def device(key, kind, start):
        for step in range(8):
            start[step].wait()
            ctx = state.begin_call(sig[step], [key], [kind])
            state.enter_blocks(ctx, x)
            if not ctx.skip:
                state.leave_blocks(ctx, x + 1)
                computed[key].append(step)
            state.end_call(ctx)
            start[step].wait()       # the step ends when both devices are done (as ComfyUI's main thread waits)
    start = [threading.Barrier(2, timeout=20) for _ in range(8)]
    threads = [threading.Thread(target=device, args=(k, kind, start)) for k, kind in (("c", COND), ("u", UNCOND))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert decided == list(range(8))
    assert computed == {"c": [0, 3, 5], "u": [0, 3, 5]}
    assert sorted(state.computed_steps) == [0, 3, 5]


def test_a_residual_is_used_only_on_the_device_that_made_it():
    store = ResidualStore()
    store.put_batch(["a"], torch.ones(1, 3, 2, device="meta"))
    assert store.has("a", (1, 3, 2), torch.device("meta")) and not store.has("a", (1, 3, 2), torch.device("cpu"))
    assert store.get_batch(["a"], torch.zeros(1, 3, 2)) is None          # made on another device: compute instead
    off = ResidualStore(torch.device("cpu"))                               # offloaded, it still goes back only there
    off.put_batch(["b"], torch.ones(1, 2))
    assert off.has("b", (1, 2), torch.device("cpu")) and not off.has("b", (1, 2), torch.device("meta"))
