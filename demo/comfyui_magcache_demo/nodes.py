"""A stand-in for a text encoder (umt5-xxl cannot be loaded in tests): text -> a fixed pseudo-embedding."""
from __future__ import annotations

import hashlib

import torch

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
