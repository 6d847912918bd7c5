"""Where a sampler's sigmas sit in a whole schedule, so a partial run reads its part of a curve.

KSamplerAdvanced step ranges (the two models of Wan 2.2), denoise < 1 and split-sigma workflows
hand the sampler a contiguous slice of a schedule ComfyUI computed for more steps. The slice alone
does not say which; this finds the (offset, total steps) of a schedule, made by one of ComfyUI's
own schedulers for this model, that contains the slice exactly (schedules up to 4x the slice's
length). Custom sigmas that match none are treated as a whole run of their own length.
"""
from __future__ import annotations

import logging

import torch

import comfy.samplers

log = logging.getLogger("comfyui-magcache")
MAX_TOTAL_STEPS = 300
MAX_SLICE_FRACTION = 4          # look for schedules up to 4x the slice (denoise >= 0.25, step ranges >= 1/4)


def _schedule(model_sampling, scheduler: str, steps: int, drop_penultimate: bool) -> torch.Tensor:
    if not drop_penultimate:
        return comfy.samplers.calculate_sigmas(model_sampling, scheduler, steps)
    # Samplers that drop the penultimate sigma (dpm_2, uni_pc, ...) compute steps + 1 and drop one.
    more = comfy.samplers.calculate_sigmas(model_sampling, scheduler, steps + 1)
    return torch.cat([more[:-2], more[-1:]])


def locate(model_sampling, sigmas: torch.Tensor) -> tuple[int, int]:
    """(offset, total_steps) of ``sigmas`` in the schedule it was cut from; (0, len - 1) for a whole run."""
    n = len(sigmas) - 1
    if n < 1:
        return 0, max(n, 1)
    sig = sigmas.detach().float().cpu()
    calls = sig[:-1]                     # the sigmas the model is called at (force_full_denoise may zero the last)
    starts_at_max = torch.isclose(calls[0], torch.as_tensor(float(model_sampling.sigma_max)), rtol=1e-5)
    if starts_at_max and float(sig[-1]) == 0.0:
        return 0, n
    # Plain schedules first: a prefix of one also prefixes the dropped-penultimate one a step shorter.
    longest = min(MAX_TOTAL_STEPS, MAX_SLICE_FRACTION * n + 2)
    for drop in (False, True):
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
