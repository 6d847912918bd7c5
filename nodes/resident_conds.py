"""A cached run's conds on the sampling device, copied once before the first model call.

ComfyUI keeps a run's processed conds (the text encoder's output, pooled vectors, FLUX's guidance, concat and
reference latents...) in host memory and copies them to the GPU in every model call (``BaseModel._apply_model``,
``cast_to_device``). They are pageable, so each of those copies first waits until the GPU has finished
everything queued before it: every model call starts with the host waiting for the step before. A step whose
blocks the pack skips then costs its whole host time (ComfyUI's per-call Python, the copies themselves) after
the computed step before it, where it could have been queued while the GPU was still running that step.

For a run the pack caches, ``patching._sampler_sample`` (the SAMPLER_SAMPLE wrapper: sampling itself, after
ComfyUI has processed the conds) samples inside ``resident(guider, device)``: the guider holds
``on_device(conds, device)`` meanwhile and gets its own conds back when sampling ends. ComfyUI's per-call work
on them (repeat to the batch, area narrowing, concatenation) then runs on the device, and its cast to the
model's dtype finds nothing to copy from the host. Values are unchanged: that cast still happens in every call,
on the device, as before. The copies cost the conds' size in device memory for the run (a few MiB for a text
encoder's output).
"""
from __future__ import annotations

import contextlib

import torch


def _on_host(value) -> bool:
    return isinstance(value, torch.Tensor) and value.device.type == "cpu"


def _moved(cond, device: torch.device):
    value = getattr(cond, "cond", None)
    if not hasattr(cond, "_copy_with"):
        return cond
    if _on_host(value):                         # CONDRegular, CONDCrossAttn, CONDNoiseShape...
        return cond._copy_with(value.to(device))
    if isinstance(value, (list, tuple)) and value and all(_on_host(v) for v in value):
        # CONDList: reference latents (FLUX Kontext, Qwen-Image Edit...), copied per call like the rest
        return cond._copy_with(type(value)(v.to(device) for v in value))
    return cond                                 # constants, mixed lists, what is on a device already


def on_device(conds: dict, device) -> dict:
    """``conds`` as ComfyUI's guider holds them while sampling (``{"positive": [entry, ...], ...}``, each entry a
    dict whose ``"model_conds"`` maps names to ComfyUI cond objects), with every cond object's host tensor, or
    list of host tensors, copied to ``device``. What moves is new (entry dicts, cond objects made by their own
    ``_copy_with``); nothing given is changed. ``conds`` itself comes back when nothing moves (``device`` is the
    CPU, or every tensor is already elsewhere)."""
    device = torch.device(device)
    if device.type == "cpu":
        return conds
    out, moved = {}, False
    for name, entries in conds.items():
        new_entries = []
        for entry in entries or []:
            model_conds = entry.get("model_conds") if isinstance(entry, dict) else None
            if model_conds:
                placed = {k: _moved(c, device) for k, c in model_conds.items()}
                if any(placed[k] is not model_conds[k] for k in model_conds):
                    entry, moved = {**entry, "model_conds": placed}, True
            new_entries.append(entry)
        out[name] = new_entries if entries is not None else entries
    return out if moved else conds


@contextlib.contextmanager
def resident(guider, device):
    """While inside: ``guider.conds`` is ``on_device(guider.conds, device)``. On leaving, however it is left
    (an error, an interrupt), the guider gets back the conds it had."""
    conds = guider.conds
    guider.conds = on_device(conds, device)
    try:
        yield
    finally:
        guider.conds = conds
