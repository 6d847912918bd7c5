"""Demo/test nodes: the reference model's prompt encoder and decoder, and a stand-in for a text encoder
(umt5-xxl cannot be loaded in tests): text -> a fixed pseudo-embedding."""
from __future__ import annotations

import hashlib

import torch

from . import shapes

TOKENS = 16
WIDTH = 4096        # Wan 2.1's text width (umt5-xxl)


def pseudo_embedding(text: str) -> torch.Tensor:
    """[1, TOKENS, WIDTH] float32, the same for the same text on every machine and run."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(1, TOKENS, WIDTH, generator=g, dtype=torch.float32)


class MagCacheDemoConditioning:
    DESCRIPTION = "Test only: a deterministic pseudo text embedding for Wan 2.1 models (no text encoder)."
    CATEGORY = "MagCache/demo"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": True, "default": "a red fox in the snow"})}}

    def encode(self, text):
        return ([[pseudo_embedding(text), {}]],)


NODE_CLASS_MAPPINGS = {"MagCacheDemoConditioning": MagCacheDemoConditioning}
NODE_DISPLAY_NAME_MAPPINGS = {"MagCacheDemoConditioning": "MagCache Demo Conditioning (test only)"}


class MagCacheShapesPrompt:
    DESCRIPTION = ("Test/demo only: the prompt encoder of the pack's reference model (coloured shapes). "
                   "Words: a colour (red green blue yellow magenta cyan white orange) and a shape "
                   "(circle square triangle ring cross); empty = unconditional, for the negative.")
    CATEGORY = "MagCache/demo"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"multiline": False, "default": "a red circle"})}}

    def encode(self, text):
        try:
            return ([[shapes.prompt_context(text), {}]],)
        except ValueError as e:
            raise ValueError(f"text: {e}") from None


class MagCacheShapesDecode:
    DESCRIPTION = ("Test/demo only: the reference model's 'VAE' - its latent is the image itself, "
                   "2x2-pixel-unshuffled, so decoding is exact and needs no weights.")
    CATEGORY = "MagCache/demo"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",),
                             "upscale": ("INT", {"default": 4, "min": 1, "max": 16,
                                                 "tooltip": "Nearest-neighbour enlargement of the 32x32 image."})}}

    def decode(self, samples, upscale):
        from .reference import decode

        x = samples["samples"] if isinstance(samples, dict) else None
        if not isinstance(x, torch.Tensor) or x.dim() != 5 or x.shape[1] != shapes.LATENT_CHANNELS:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"samples: expected a Wan latent [B, {shapes.LATENT_CHANNELS}, T, H, W] from the "
                             f"reference model, got {got}")
        images = decode(x)
        if upscale > 1:
            images = images.repeat_interleave(upscale, 1).repeat_interleave(upscale, 2)
        return (images,)


NODE_CLASS_MAPPINGS.update({"MagCacheShapesPrompt": MagCacheShapesPrompt, "MagCacheShapesDecode": MagCacheShapesDecode})
NODE_DISPLAY_NAME_MAPPINGS.update({"MagCacheShapesPrompt": "MagCache Shapes Prompt (demo)",
                                   "MagCacheShapesDecode": "MagCache Shapes Decode (demo)"})
