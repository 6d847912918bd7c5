"""The step clock (issue "GPU: the last percent"): a call's step from the sampler's own step callbacks instead of
its sigma, which lives on the GPU. For every sampler of this ComfyUI, each model call's step by the clock is
compared with its step by sigma (on the CPU both are free); ``schedule.CLOCKED_SAMPLERS`` must hold exactly the
samplers where they always agree, and a clocked run must give the image and schedule of an unclocked one."""
import logging

import pytest
import torch

import comfy.samplers
from comfyui_magcache.magcache_core import RunState
from comfyui_magcache.nodes import patching
from comfyui_magcache.nodes.magcache_nodes import MagCacheApply
from comfyui_magcache.nodes.schedule import CLOCKED_SAMPLERS
from test_comfy_magcache import BlockSteps
from tiny_models import sample, tiny_wan



@pytest.fixture(scope="module")
def model():
    return tiny_wan(seed=5)


class _Spy:
    """Records, per model call, the clock's step and the sigma's step (patching._step_of, the one place the
    pack reads a call's step)."""

    def __init__(self, monkeypatch):
        self.pairs = []
        original = patching._step_of

        def spy(run, t):
            sigma, step = original(run, t)
            by_sigma = run.state.step_index(float(t.flatten()[0]))
            clock = None if run.clock is None else run.state.offset + run.clock.next
            self.pairs.append((clock, by_sigma, step))
            return sigma, step
        monkeypatch.setattr(patching, "_step_of", spy)


def _agrees(model, sampler, monkeypatch, steps, scheduler) -> bool:
    spy = _Spy(monkeypatch)
    monkeypatch.setattr(patching, "clocked", lambda s: patching.StepClock())
    m = MagCacheApply().apply(model, "wan2.1_t2v_1.3B", 0.0, 0.2, 2)[0]
    sample(m, steps=steps, sampler=sampler, cfg=3.0, scheduler=scheduler)
    monkeypatch.undo()
    last = max(p[1] for p in spy.pairs)
    return all(min(c, last) == s for c, s, _ in spy.pairs)


@pytest.mark.parametrize("sampler", CLOCKED_SAMPLERS)
def test_every_clocked_sampler_calls_at_the_step_its_callbacks_say(model, sampler, monkeypatch):
    if sampler not in comfy.samplers.KSampler.SAMPLERS:
        pytest.skip(f"this ComfyUI has no {sampler}")
    for steps, scheduler in ((8, "simple"), (13, "karras")):
        assert _agrees(model, sampler, monkeypatch, steps, scheduler), \
            f"{sampler}, {steps} {scheduler} steps: a call's step by the clock differs from its step by sigma"


def test_a_midpoint_sampler_would_break_the_clock(model, monkeypatch):
    """Why dpm_2 is not clocked: its second call lies between two sigmas, after the step's callback."""
    assert not _agrees(model, "dpm_2", monkeypatch, 8, "simple")


def test_a_clocked_run_equals_a_sigma_run(model, monkeypatch, caplog):
    m = MagCacheApply().apply(model, "wan2.1_t2v_1.3B", 0.3, 0.2, 3)[0]
    with BlockSteps(model) as clocked_steps:
        out_clocked = sample(m, steps=20, sampler="euler", cfg=3.0)
    monkeypatch.setattr(patching, "clocked", lambda s: None)
    with BlockSteps(model) as sigma_steps:
        out_sigma = sample(m, steps=20, sampler="euler", cfg=3.0)
    assert clocked_steps.steps == sigma_steps.steps and len(sigma_steps.steps) < 20
    assert torch.equal(out_clocked, out_sigma)
    assert "do not follow" not in caplog.text


def test_a_sampler_that_breaks_the_clock_falls_back_to_sigmas(model, monkeypatch, caplog):
    """A clock that runs wrong (forced here on dpm_2, whose second call sits between two sigmas) is caught
    on the CPU at the first disagreeing call, and the run goes on by sigma: the same image as an unclocked run."""
    m = MagCacheApply().apply(model, "wan2.1_t2v_1.3B", 0.3, 0.2, 3)[0]
    monkeypatch.setattr(patching, "clocked", lambda s: None)
    out_plain = sample(m, steps=12, sampler="dpm_2", cfg=3.0)
    monkeypatch.setattr(patching, "clocked", lambda s: patching.StepClock())
    with caplog.at_level(logging.WARNING, logger="comfyui-magcache"):
        out_forced = sample(m, steps=12, sampler="dpm_2", cfg=3.0)
    assert "do not follow its step callbacks" in caplog.text
    assert torch.equal(out_plain, out_forced)
