"""The shipped reference model inside ComfyUI: load it, sample a prompt, decode the latent.

Needs ``comfy`` importable (inside ComfyUI, or the test/bench environment). Loading goes through
ComfyUI's stock loader (``comfy.sd.load_diffusion_model``, the "Load Diffusion Model" node), so the
model is an ordinary Wan 2.1 T2V MODEL; only the prompt encoding and the decoding are ours.
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import shapes

MODEL_PATH = Path(__file__).resolve().parents[1] / "models" / shapes.MODEL_FILE
FEW_STEP_PATH = MODEL_PATH.parent / shapes.FEW_STEP_FILE      # the guidance-distilled few-step student (CFG 1)
LORA_PATH = MODEL_PATH.parent / shapes.LORA_FILE              # a palette-swap LoRA of the reference model


def load(path=MODEL_PATH):
    """A ComfyUI ModelPatcher for the weights at ``path``, through the stock loader."""
    import comfy.sd

    return comfy.sd.load_diffusion_model(str(path))


def conditioning(text: str):
    """ComfyUI CONDITIONING for a prompt such as "a red circle" ("" = unconditional)."""
    return [[shapes.prompt_context(text), {}]]


def empty_latent(batch: int = 1) -> torch.Tensor:
    """What EmptyHunyuanLatentVideo(width=128, height=128, length=1) gives: [B, 16, 1, 16, 16] zeros."""
    side = shapes.SIZE // 2
    return torch.zeros(batch, shapes.LATENT_CHANNELS, 1, side, side)


def sample(model, prompt: str, seed: int, steps: int = 20, cfg: float = 4.0, sampler: str = "euler",
           scheduler: str = "simple", negative: str = "") -> torch.Tensor:
    """``comfy.sample.sample`` (what KSampler runs) for one prompt; returns the output LATENT samples."""
    import comfy.sample

    lat = empty_latent()
    noise = comfy.sample.prepare_noise(lat, seed)
    return comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, conditioning(prompt),
                               conditioning(negative), lat, disable_pbar=True, seed=seed)


def decode(samples: torch.Tensor) -> torch.Tensor:
    """LATENT samples (ComfyUI's output space) -> IMAGE [B, H, W, 3] in [0, 1], as ComfyUI's nodes pass images."""
    import comfy.latent_formats

    model_space = comfy.latent_formats.Wan21().process_in(samples.float().cpu())
    return shapes.unpack(model_space).movedim(1, -1)


def prompts(n: int) -> list[str]:
    """``n`` prompts cycling through every colour and shape in a fixed order (colour-major, shifted
    so neighbouring prompts differ in both words)."""
    colors, forms = list(shapes.COLORS), shapes.SHAPES
    return [f"a {colors[i % len(colors)]} {forms[(i + i // len(colors)) % len(forms)]}" for i in range(n)]
