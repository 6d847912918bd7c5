"""FLUX.1 (dev, schnell, Kontext): ``comfy.ldm.flux.model.Flux``.

Other models load as the same class and model_base (Ovis-Image: ``ovis_image.py``; LongCat-Image has its own
model_base: ``longcat_image.py``); FLUX.1's presets go only to a model whose config has FLUX.1's layout
(``not_flux1``), any other is calibrate-only.

Residual: the image tokens entering the first double block vs the image tokens leaving the
last single block (text tokens are dropped, as in the MagCache authors' FLUX code).
"""
from __future__ import annotations

from ..magcache_core import MagCacheParams, RatioCurves, TeaCacheParams
from .base import BlockStrategy, Preset, TeaPreset, flux_style_modulated

# Published by the MagCache authors: github.com/Zehong-Ma/ComfyUI-MagCache nodes.py at
# 47bdd2aca97e568087c4e92d2d2f0426bdce7a37 (one value per step, no CFG).
FLUX_DEV_28 = [
    1.0, 1.21094, 1.11719, 1.07812, 1.0625, 1.03906, 1.03125, 1.03906, 1.02344, 1.03125,
    1.02344, 0.98047, 1.01562, 1.00781, 1.0, 1.00781, 1.0, 1.00781, 1.0, 1.0, 0.99609, 0.99609,
    0.98047, 0.98828, 0.96484, 0.95703, 0.93359, 0.89062
]
FLUX_KONTEXT_20 = [
    1.0, 1.21875, 1.0625, 1.03125, 1.03125, 1.0, 1.00781, 1.03906, 0.98047, 1.03125, 0.96875,
    1.02344, 1.0, 0.99219, 1.02344, 0.98047, 0.95703, 0.98828, 0.98047, 0.88672
]


# Published by the TeaCache authors' ComfyUI pack: github.com/welltop-cn/ComfyUI-TeaCache nodes.py
# (coefficients at 91dff8e; recommended rel_l1_thresh and start from its README).
TEA_FLUX = (498.651651, -283.781631, 55.8554382, -3.82021401, 0.264230861)
TEA_FLUX_KONTEXT = (-1046.55119, 312.563399, -16.9500694, 0.410995971, 0.0374537863)


def not_flux1(params) -> list[str]:
    """What a model of FLUX's class has that FLUX.1 (dev, schnell, Kontext) lacks, read from its config (which
    ComfyUI derives from the weights): FLUX.1's presets fit only when this is empty."""
    found = [] if params.vec_in_dim is not None else ["no pooled-text vector input"]
    flags = {"yak_mlp": "SwiGLU MLPs", "txt_norm": "an RMSNorm on the text input",
             "global_modulation": "shared modulation"}
    return found + [words for flag, words in flags.items() if getattr(params, flag, False)]


class FluxStrategy(BlockStrategy):
    name = "flux"
    title = "FLUX.1"
    residual = "image tokens before the double blocks -> image tokens after the single blocks"
    model_classes = ("comfy.ldm.flux.model.Flux",)
    model_bases = ("comfy.model_base.Flux",)          # not FLUX.2, which reuses the class (flux2.py)
    single_blocks = "single_blocks"
    presets = {
        # Recommended settings from the authors' FLUX example workflow: 0.24 / 0.1 / K 5.
        "flux": Preset("flux", RatioCurves.single(FLUX_DEV_28), MagCacheParams(0.24, 0.1, 5),
                       "FLUX.1 dev, calibrated at 28 steps"),
        # Kontext: 0.05 / 0.2 / K 4, from the authors' README.
        "flux_kontext": Preset("flux_kontext", RatioCurves.single(FLUX_KONTEXT_20),
                               MagCacheParams(0.05, 0.2, 4), "FLUX.1 Kontext dev, calibrated at 20 steps"),
    }
    tea_presets = {
        "flux": TeaPreset("flux", TeaCacheParams(0.4, TEA_FLUX), 0.0, "FLUX.1 dev"),
        "flux_kontext": TeaPreset("flux_kontext", TeaCacheParams(0.22, TEA_FLUX_KONTEXT), 0.2, "FLUX.1 Kontext dev"),
    }

    def detect_variant(self, model_patcher):
        dm = model_patcher.model.diffusion_model
        other = not_flux1(dm.params)
        if other:
            return None, None, f"a FLUX-class model that is not FLUX.1 ({', '.join(other)}), calibrate"
        if not dm.params.guidance_embed:
            return None, None, "FLUX.1 schnell (no guidance embedding)"
        # Kontext has the same weights layout as dev; pick 'flux_kontext' by hand for it.
        return "flux", "flux", "FLUX.1 dev-class (guidance embedding)"

    def modulated_input(self, dm, args):
        return flux_style_modulated(dm.double_blocks[0], args)
