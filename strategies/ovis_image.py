"""Ovis-Image: ``comfy.ldm.flux.model.Flux`` loaded as ``model_base.Flux`` (through FluxSchnell's config, as
it has no guidance embedding). Calibrate first (no published curve).

ComfyUI gives it no class or model_base of its own; its config does tell it apart from FLUX.1: SwiGLU
("yak") MLPs in every block and an RMSNorm on the text input (``yak_mlp`` and ``txt_norm``, both read from
the weights by ComfyUI's detection, which treats the two together as Ovis). It has no pooled-text vector
and a 2048-wide text input, so no FLUX.1 preset may reach it.

Residual: image tokens before the double blocks -> image tokens after the single blocks (FLUX's layout:
the single blocks run on cat(txt, img)).
"""
from __future__ import annotations

from .base import BlockStrategy, diffusion_model, flux_style_modulated


class OvisImageStrategy(BlockStrategy):
    name = "ovis_image"
    title = "Ovis-Image"
    residual = "image tokens before the double blocks -> image tokens after the single blocks"
    model_classes = ("comfy.ldm.flux.model.Flux",)
    model_bases = ("comfy.model_base.Flux",)
    single_blocks = "single_blocks"

    @classmethod
    def matches(cls, model_patcher) -> bool:
        params = getattr(diffusion_model(model_patcher), "params", None)
        return super().matches(model_patcher) and bool(getattr(params, "yak_mlp", False)) \
            and bool(getattr(params, "txt_norm", False))

    def detect_variant(self, model_patcher):
        return None, None, "Ovis-Image, calibrate (SwiGLU MLPs and text RMSNorm: not FLUX.1)"

    def modulated_input(self, dm, args):
        return flux_style_modulated(dm.double_blocks[0], args)
