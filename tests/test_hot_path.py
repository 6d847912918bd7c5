"""The cost structure of a skipped step, without timing (issue "GPU: the last percent"): a skipped step runs no
transformer block, and the pack's own code makes no host sync and no tensor beyond the step's output there;
and under torch.compile the pack causes no graph break and a bounded number of graphs.

Every torch call made directly from the pack's files (nodes/, magcache_core/, strategies/) is seen through a
TorchFunctionMode; torch.cuda's synchronize calls are counted as well. On the CPU the step clock would check each
call's sigma (a read that costs nothing there); the test turns that check off, as on a GPU, where it never runs."""
import json
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from comfyui_magcache.nodes import patching
from comfyui_magcache.nodes.magcache_nodes import MagCacheApply, MagCacheCalibrate, MagCacheRatios
from test_comfy_magcache import BlockSteps
from tiny_models import dynamo_counts, sample, tiny_flux, tiny_wan, with_pytorch_attention

PACK = Path(__file__).resolve().parents[1]
PACK_DIRS = tuple(str(PACK / d) for d in ("nodes", "magcache_core", "strategies"))
SYNCS = {"item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__", "__index__", "synchronize"}


def flat():
    """Ratios of exactly 1: every step after the retention skips (up to K in a row)."""
    return MagCacheRatios().parse(json.dumps([1.0] * 10))[0]


def _from_pack() -> bool:
    f = sys._getframe(2)
    while f is not None and "/torch/" in f.f_code.co_filename:
        f = f.f_back
    return f is not None and f.f_code.co_filename.startswith(PACK_DIRS)


class PackTorchCalls(TorchFunctionMode):
    """Torch calls made from the pack's code, by whether the model call they belong to skips."""

    def __init__(self):
        super().__init__()
        self.calls = {True: Counter(), False: Counter(), None: Counter()}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        if name != "__get__" and _from_pack():
            call = patching._CALL.get()
            self.calls[None if call is None else call.ctx.skip][name] += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture
def no_cpu_clock_check(monkeypatch):
    monkeypatch.setattr(patching, "CHECK_CLOCK_ON_CPU", False)
    syncs = Counter()
    for owner, attr in ((torch.cuda, "synchronize"), (torch.cuda.Stream, "synchronize"),
                        (torch.cuda.Event, "synchronize")):
        original = getattr(owner, attr)
        monkeypatch.setattr(owner, attr, lambda *a, _o=original, _n=attr, **k: (syncs.update([_n]), _o(*a, **k))[1])
    return syncs


@pytest.mark.parametrize("family", ["wan", "flux"])
def test_a_skipped_step_runs_no_block_syncs_nothing_and_makes_only_its_output(family, no_cpu_clock_check):
    model = tiny_wan(seed=3) if family == "wan" else tiny_flux(seed=3)
    m = MagCacheApply().apply(model, "auto", 0.5, 0.2, 10, ratios=flat())[0]
    spy = PackTorchCalls()
    with BlockSteps(model) as ran, spy:
        sample(m, steps=10, cfg=3.0 if family == "wan" else 1.0)
    assert ran.steps == [0, 1], ran.steps                 # steps 2-9 skip: block 0 never ran there
    skipped = spy.calls[True]
    assert not (set(skipped) & SYNCS), skipped
    skipped.pop("__getitem__", None)                      # slicing: views, no new data
    assert not no_cpu_clock_check
    # The one tensor the pack makes on a skipped call is the stream leaving the blocks: input + cached residual.
    # FLUX's last block is a single block, whose stream is text and image tokens together: the pack hands it on
    # rebuilt (one cat) around that sum.
    expected = Counter({"add": 1}) if family == "wan" else Counter({"add": 1, "cat": 1})
    assert skipped == Counter({k: 8 * v for k, v in expected.items()}), skipped


def test_the_skip_decision_reads_nothing_from_the_device(no_cpu_clock_check):
    """The same over a whole MagCache run with a real preset: no sync from the pack on any call (computed calls
    included), and no cat on a skipped one for a batched CFG (the residuals come back as the batch they were)."""
    model = tiny_wan(seed=4)
    m = MagCacheApply().apply(model, "wan2.1_t2v_1.3B", 0.3, 0.2, 4)[0]
    spy = PackTorchCalls()
    with spy:
        sample(m, steps=20, cfg=3.0)
    for skip in (True, False):               # (the wrapper's once-per-run work, outside model calls, may read)
        assert not (set(spy.calls[skip]) & SYNCS), (skip, spy.calls[skip])
    assert spy.calls[True] and "cat" not in spy.calls[True]


def test_calibration_keeps_no_float_copies():
    """Calibration holds no more than one residual per cond above MagCache: the recorder keeps the previous
    residual as the very tensor it was given (the store holds the same), not a float32 copy."""
    from comfyui_magcache.magcache_core import calibration
    model = tiny_wan(seed=5)
    same = []
    original = calibration.CalibrationRecorder.record

    def spy(self, key, kind, step, residual):
        original(self, key, kind, step, residual)
        same.append(self._prev[key].data_ptr() == residual.data_ptr())
    calibration.CalibrationRecorder.record = spy
    try:
        sample(MagCacheCalibrate().calibrate(model, "hot path")[0], steps=4, cfg=3.0)
    finally:
        calibration.CalibrationRecorder.record = original
    assert same and all(same)


def test_torch_compile_sees_no_graph_break_from_the_pack_and_a_bounded_number_of_graphs():
    """ComfyUI's own TorchCompileModel wrapper (backend "eager": the same tracing as inductor, without code
    generation): the pack adds no graph-break reason to what the unpatched model has, two graphs (computed and
    skipped calls) per compiled frame at most, and none more on later runs."""
    from comfy_api.torch_helpers import set_torch_compile_wrapper

    base = tiny_flux(seed=6)
    comp = base.clone()
    set_torch_compile_wrapper(comp, backend="eager")

    plain_reasons, plain_graphs = dynamo_counts(comp)
    for skipped_steps in ("extrapolate", "reuse"):            # the default, and the authors' rule
        patched = MagCacheApply().apply(comp, "flux", 0.24, 0.1, 5, skipped_steps=skipped_steps)[0]
        reasons, graphs = dynamo_counts(patched)
        assert reasons <= plain_reasons, (skipped_steps, reasons - plain_reasons)
        assert graphs[0] == graphs[-1], (skipped_steps, graphs)         # nothing recompiles on later runs
        assert graphs[0] <= 2 * plain_graphs[0], (skipped_steps, graphs, plain_graphs)


def test_calibrate_and_teacache_run_under_torch_compile():
    """Calibrate and TeaCache read the first block through the call's model; under ComfyUI's compile wrapper that
    model is the compiled module, and reaching the block through it crashed dynamo. Calibrate stays bit-identical
    and adds no graph-break reason; TeaCache's one extra reason is its own distance read."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    from comfy_api.torch_helpers import set_torch_compile_wrapper
    from comfyui_magcache.nodes.teacache_nodes import TeaCacheApply

    comp = with_pytorch_attention(tiny_flux(seed=7))      # graph breaks of the model and the pack only
    set_torch_compile_wrapper(comp, backend="eager")
    torch._dynamo.reset()
    counters.clear()
    ref = sample(comp, steps=6)
    plain = set(counters["graph_break"])
    torch._dynamo.reset()
    counters.clear()
    out = sample(MagCacheCalibrate().calibrate(comp, "hot path compiled")[0], steps=6)
    assert torch.equal(out, ref)
    assert set(counters["graph_break"]) <= plain
    torch._dynamo.reset()
    counters.clear()
    out = sample(TeaCacheApply().apply(comp, "flux", 0.4)[0], steps=6)
    assert torch.isfinite(out).all()
    extra = {k.split("\n")[0] for k in set(counters["graph_break"]) - plain}
    assert extra and all("item()" in k for k in extra), extra    # the read is there, and it is the only one


def test_teacache_reads_once_per_decided_call_and_copies_nothing_to_float32(no_cpu_clock_check):
    """TeaCache must read its distance on the host (its decision depends on it), but once per model call: a
    batched CFG call's two entries are read together. Its distance runs in the model's dtype, without float32
    copies of the modulated input (they sat in front of that read on every step)."""
    from comfyui_magcache.nodes.teacache_nodes import TeaCacheApply
    model = tiny_wan(seed=6)
    m = TeaCacheApply().apply(model, "wan2.1_t2v_1.3B", 0.05, start_percent=0.0)[0]
    spy = PackTorchCalls()
    with BlockSteps(model) as ran, spy:
        sample(m, steps=8, cfg=3.0)
    calls = spy.calls[True] + spy.calls[False]
    reads = sum(n for name, n in calls.items() if name in SYNCS)
    assert reads == 6, calls           # steps 1-6 decide (the first and the last always compute), one read each
    assert not no_cpu_clock_check
    assert calls["float"] == 0 and calls["to"] == 0, calls
    assert spy.calls[True], "nothing skipped: the test would not see a skipped call"
    # A skipped call copies nothing: it makes its output (input + extrapolated residual), nothing else. (It cloned
    # the stream on every call, as a computed call must, and a computed call cloned it twice.)
    assert set(spy.calls[True]) <= {"add", "lerp", "__getitem__"}, spy.calls[True]
    # Computed calls copy each indicator (kept for the next distance) and the stream entering the blocks, once.
    assert spy.calls[False]["clone"] == calls["detach"] + len(ran.steps), (spy.calls[False], ran.steps)
