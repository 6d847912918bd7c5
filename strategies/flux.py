"""FLUX.1 (dev, schnell, Kontext): ``comfy.ldm.flux.model.Flux``.

Residual: the image tokens entering the first double block vs the image tokens leaving the
last single block (text tokens are dropped, as in the MagCache authors' FLUX code).
"""
from __future__ import annotations

import torch

from ..magcache_core import MagCacheParams, RatioCurves
from .base import Preset, Strategy

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


class FluxStrategy(Strategy):
    name = "flux"
    title = "FLUX.1"
    residual = "image tokens before the double blocks -> image tokens after the single blocks"
    presets = {
        # Recommended settings from the authors' FLUX example workflow: 0.24 / 0.1 / K 5.
        "flux": Preset("flux", RatioCurves.single(FLUX_DEV_28), MagCacheParams(0.24, 0.1, 5),
                       "FLUX.1 dev, calibrated at 28 steps"),
        "flux_kontext": Preset("flux_kontext", RatioCurves.single(FLUX_KONTEXT_20),
                               MagCacheParams(0.24, 0.1, 5), "FLUX.1 Kontext dev, calibrated at 20 steps"),
    }

    @classmethod
    def matches(cls, model_patcher) -> bool:
        import comfy.ldm.flux.model
        return type(model_patcher.model.diffusion_model) is comfy.ldm.flux.model.Flux

    def auto_preset(self, model_patcher):
        dm = model_patcher.model.diffusion_model
        if not dm.params.guidance_embed:
            return None, "FLUX.1 schnell (no guidance embedding): no published ratios"
        # Kontext has the same weights layout as dev; pick 'flux_kontext' by hand for it.
        return "flux", "FLUX.1 dev-class (guidance embedding)"

    @staticmethod
    def find_blocks(dm):
        return ([("double_block", i) for i in range(len(dm.double_blocks))]
                + [("single_block", i) for i in range(len(dm.single_blocks))])

    def stream_out(self, key, out, n_tokens):
        # Single blocks run on cat(txt, img): the image tokens are the last n_tokens.
        return out["img"][:, -n_tokens:] if key[0] == "single_block" else out["img"]

    def with_stream(self, key, args, stream):
        if key[0] == "single_block":
            x = args["img"]
            return {"img": torch.cat((x[:, : x.shape[1] - stream.shape[1]], stream), dim=1)}
        return {"img": stream, "txt": args["txt"]}

    def passthrough(self, key, args):
        if key[0] == "double_block":
            return {"img": args["img"], "txt": args["txt"]}
        return {"img": args["img"]}
