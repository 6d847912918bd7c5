"""Where a sampler's sigmas sit in a whole schedule, so a partial run reads its part of a curve.

KSamplerAdvanced step ranges (the two models of Wan 2.2), denoise < 1 and split-sigma workflows
hand the sampler a contiguous slice of a schedule ComfyUI computed for more steps. The slice alone
does not say which; this finds the (offset, total steps) of a schedule, made by one of ComfyUI's
own schedulers for this model, that contains the slice exactly (schedules up to 4x the slice's
length). Custom sigmas that match none are treated as a whole run of their own length.

Samplers that drop the penultimate sigma (dpm_2, uni_pc: ``KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS``)
make a (steps + 1)-schedule less one sigma; a slice of it that stops before the end is also a slice of
the plain (steps + 1)-schedule, so the sampler decides which is tried first. Results are remembered per
model sampling and sigmas, so a hand-made list that matches nothing is searched once, not on every run.

``unusable`` says, before sampling, why a schedule cannot be cached or calibrated at all; ``too_few_steps``
why a short (few-step) schedule is better left uncached.
"""
from __future__ import annotations

import functools
import hashlib
import logging
from collections import OrderedDict

import torch

import comfy.samplers

log = logging.getLogger("comfyui-magcache")
MAX_TOTAL_STEPS = 300
MAX_SLICE_FRACTION = 4          # look for schedules up to 4x the slice (denoise >= 0.25, step ranges >= 1/4)
OFF_SCHEDULE_SAMPLERS = ("dpm_fast", "dpm_adaptive")   # call the model at sigmas of their own choosing
# Samplers that report each step through their callback before any call at a later sigma: one call per step
# at its own sigma, or (heun, uni_pc, sa_solver) a second call at the next step's sigma after the callback. A
# call's step is then known without reading its sigma from the device (patching.StepClock);
# tests/test_step_clock.py checks each against the sigma. Left out: samplers with a second call between two
# sigmas (dpm_2, dpmpp_2s_ancestral, dpmpp_sde, seeds_2/3, exp_heun_2...), where it would not hold, also the
# ancestral ones that agree only where their midpoint happens to fall below the next sigma.
CLOCKED_SAMPLERS = ("euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "lms", "dpmpp_2m",
                    "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun",
                    "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v",
                    "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
                    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp",
                    "er_sde", "ddim", "heun", "sa_solver", "uni_pc", "uni_pc_bh2")
_CACHE_SIZE = 64
_located: OrderedDict = OrderedDict()


@functools.lru_cache(maxsize=None)
def _sampler_functions(names: tuple[str, ...]) -> dict[str, str]:
    """{function name: sampler name} of ComfyUI's own samplers ``names``."""
    out = {}
    for n in names:
        try:
            out[comfy.samplers.sampler_object(n).sampler_function.__name__] = n
        except Exception:      # noqa: BLE001 - a sampler this ComfyUI does not have
            pass
    return out


def sampler_name(sampler, names) -> str | None:
    """Which of ComfyUI's samplers ``names`` the SAMPLER object is, or None."""
    fn = getattr(sampler, "sampler_function", None)
    return _sampler_functions(tuple(sorted(names))).get(getattr(fn, "__name__", None))


def drops_penultimate(sampler) -> bool:
    return sampler_name(sampler, comfy.samplers.KSampler.DISCARD_PENULTIMATE_SIGMA_SAMPLERS) is not None


def unusable(sigmas: torch.Tensor, sampler, calibrating: bool) -> str | None:
    """Why this run's schedule cannot be cached (or, ``calibrating``, recorded), or None when it can."""
    n = len(sigmas)
    if n < 2:
        return f"the sampler got {n} sigma{'s' if n != 1 else ''}: nothing to sample"
    sig = sigmas.detach().float().cpu()
    if not bool((sig[:-1] > sig[1:]).all()):
        return "the sigmas are not strictly decreasing (duplicated or rising values), so steps cannot be told apart"
    if calibrating:
        if n == 2:
            return "a 1 step run has no step-to-step ratios to record"
        off = sampler_name(sampler, OFF_SCHEDULE_SAMPLERS)
        if off is not None:
            return f"the {off} sampler calls the model at sigmas of its own, not once per step of the schedule"
    return None


# Few-step schedules (distilled "lightning" / "lightx2v" models, 4-8 steps). The rule: below MIN_STEPS steps,
# caching cannot gain without visible loss, so the nodes compute every step unless told otherwise (min_steps 0).
# "Gain" is the smallest speed the nodes offer (speed 1.5x); "visible loss" is a pooled PSNR to the uncached image
# below 30 dB (the level of the reference model's MagCache at 1.5x, 20 steps: 30.5 dB). bench/quality.py measures
# it and checks this constant (few_step_verdict; tests/test_few_step.py holds it to the committed measurements).
# Measured on the guidance-distilled student of the reference model (demo/models/magcache_shapes_wan_fewstep,
# 32 samples, CFG 1, docs/benchmarks/quality_shapes.json "few_step"): at 4 steps no calibrated MagCache / TeaCache
# setting reaches 1.5x above 18.4 dB; at 6 steps 1.5x keeps 30.1 dB (extrapolated skipped steps, the default;
# reused: 26.5); at 8 steps 1.6x keeps 31.7 dB.
MIN_STEPS = 5
MIN_STEPS_MAX = 100
MIN_STEPS_TOOLTIP = (
    f"Runs whose schedule has fewer steps than this compute every step, and the node says so: on few-step "
    f"(distilled, 'lightning') models every step changes the image a lot, and skipping one costs visible quality "
    f"for little gain (measured: see the README, 'Few-step models'). 0 = cache runs of any length. Default {MIN_STEPS}.")


def too_few_steps(total_steps: int, min_steps: int) -> str | None:
    """Why a run of a ``total_steps`` schedule is left uncached (fewer steps than ``min_steps``), or None."""
    if min_steps and total_steps < min_steps:
        return (f"a {total_steps}-step schedule is below min_steps {min_steps}: on few-step models skipping a step "
                f"costs visible quality for little gain (set min_steps 0 to cache anyway)")
    return None


def _schedule(model_sampling, scheduler: str, steps: int, drop_penultimate: bool) -> torch.Tensor:
    if not drop_penultimate:
        return comfy.samplers.calculate_sigmas(model_sampling, scheduler, steps)
    # Samplers that drop the penultimate sigma (dpm_2, uni_pc, ...) compute steps + 1 and drop one.
    more = comfy.samplers.calculate_sigmas(model_sampling, scheduler, steps + 1)
    return torch.cat([more[:-2], more[-1:]])


def _model_sampling_key(model_sampling) -> tuple:
    table = getattr(model_sampling, "sigmas", None)
    digest = hashlib.sha1(table.detach().float().cpu().numpy().tobytes()).hexdigest() \
        if isinstance(table, torch.Tensor) else id(model_sampling)
    return (type(model_sampling).__qualname__, digest, float(model_sampling.sigma_max), float(model_sampling.sigma_min))


def locate(model_sampling, sigmas: torch.Tensor, drop_penultimate: bool = False) -> tuple[int, int]:
    """(offset, total_steps) of ``sigmas`` in the schedule it was cut from; (0, len - 1) for a whole run.
    ``drop_penultimate``: the sampler drops the penultimate sigma (try those schedules first)."""
    n = len(sigmas) - 1
    if n < 1:
        return 0, max(n, 1)
    sig = sigmas.detach().float().cpu()
    key = (_model_sampling_key(model_sampling), sig.numpy().tobytes(), drop_penultimate)
    if key in _located:
        _located.move_to_end(key)
        return _located[key]
    found = _search(model_sampling, sig, n, drop_penultimate)
    _located[key] = found
    if len(_located) > _CACHE_SIZE:
        _located.popitem(last=False)
    return found


def _search(model_sampling, sig: torch.Tensor, n: int, drop_penultimate: bool) -> tuple[int, int]:
    calls = sig[:-1]                     # the sigmas the model is called at (force_full_denoise may zero the last)
    starts_at_max = torch.isclose(calls[0], torch.as_tensor(float(model_sampling.sigma_max)), rtol=1e-5)
    if starts_at_max and float(sig[-1]) == 0.0:
        return 0, n
    # Plain schedules first: a prefix of one also prefixes the dropped-penultimate one a step shorter.
    longest = min(MAX_TOTAL_STEPS, MAX_SLICE_FRACTION * n + 2)
    for drop in ((True, False) if drop_penultimate else (False, True)):
        for total in range(n, longest + 1):
            for scheduler in comfy.samplers.SCHEDULER_NAMES:
                try:
                    full = _schedule(model_sampling, scheduler, total, drop)
                except Exception:      # noqa: BLE001 - a scheduler that cannot make this length
                    continue
                full_calls = full.float().cpu()[:-1]
                if len(full_calls) != total:
                    continue
                hits = (full_calls == calls[0]).nonzero().flatten().tolist()
                for off in hits:
                    if off + n <= total and torch.equal(full_calls[off:off + n], calls):
                        if (off, total) != (0, n):
                            log.info("MagCache: this sampler runs steps %d-%d of a %d-step %s schedule",
                                     off, off + n - 1, total, scheduler)
                        return off, total
    log.info("MagCache: the sigmas match no %d..%d-step schedule of this model; treating them as a whole run",
             n, longest)
    return 0, n
