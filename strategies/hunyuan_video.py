"""HunyuanVideo 1.0 / 1.5 and HunyuanImage 2.1: ``comfy.ldm.hunyuan_video.model.HunyuanVideo``.

Residual: image tokens before the double blocks -> image tokens after the single blocks (the
single blocks run on cat(img, txt), image first).
"""
from __future__ import annotations

from ..magcache_core import MagCacheParams, RatioCurves, TeaCacheParams
from .base import BlockStrategy, Preset, TeaPreset, flux_style_modulated

# Published by the MagCache authors: github.com/Zehong-Ma/ComfyUI-MagCache nodes.py (the version with
# HunyuanVideo 1.5, after 0675fc15); recommended threshold / retention / K from its README.
# HunyuanVideo 1.0: one value per step, 50 steps (no CFG: guidance-distilled).
HUNYUAN_VIDEO_50 = [
    1.0, 1.0754, 1.27807, 1.11596, 1.09504, 1.05188, 1.00844, 1.05779, 1.00657, 1.04142, 1.03101,
    1.00679, 1.02556, 1.00908, 1.06949, 1.05438, 1.02214, 1.02321, 1.03019, 1.00779, 1.03381, 1.01886,
    1.01161, 1.02968, 1.00544, 1.02822, 1.00689, 1.02119, 1.0105, 1.01044, 1.01572, 1.02972, 1.0094,
    1.02368, 1.0226, 0.98965, 1.01588, 1.02146, 1.0018, 1.01687, 0.99436, 1.00283, 1.01139, 0.97122,
    0.98251, 0.94513, 0.97656, 0.90943, 0.85703, 0.75456
]
# HunyuanVideo 1.5: interleaved per step (cond, uncond), 20 and 40 steps.
HUNYUAN_VIDEO15_20 = [
    1.0, 1.0, 1.01172, 1.00293, 0.9873, 1.0127, 1.01465, 0.98926, 0.99805, 1.00098, 0.99512, 0.99365,
    0.99512, 0.99561, 0.99316, 0.99365, 0.99365, 0.99365, 0.99316, 0.99316, 0.99268, 0.99268, 0.9917,
    0.9917, 0.99023, 0.99023, 0.98828, 0.98877, 0.98633, 0.98633, 0.9834, 0.9834, 0.97949, 0.97998,
    0.97363, 0.97363, 0.96436, 0.96436, 0.94824, 0.94873
]
HUNYUAN_VIDEO15_40 = [
    1.0, 1.0, 1.04199, 1.01953, 1.01172, 1.01855, 1.00293, 1.00586, 1.00098, 1.00195, 1.0, 1.00098,
    0.99805, 0.99902, 0.99854, 0.99805, 0.99658, 0.99756, 0.99707, 0.99512, 0.99609, 0.99609, 0.99658,
    0.99658, 0.99658, 0.99805, 0.99658, 0.99707, 0.99561, 0.99561, 0.99561, 0.99658, 0.99658, 0.99658,
    0.99609, 0.99658, 0.99512, 0.99561, 0.99463, 0.99512, 0.99463, 0.99512, 0.99463, 0.99512, 0.99365,
    0.99414, 0.99365, 0.99365, 0.99219, 0.99219, 0.99219, 0.99268, 0.99072, 0.99121, 0.99072, 0.99072,
    0.98926, 0.98975, 0.9873, 0.98779, 0.98535, 0.98584, 0.9834, 0.9834, 0.97998, 0.97998, 0.97607,
    0.97607, 0.96973, 0.96973, 0.96338, 0.96338, 0.9502, 0.9502, 0.93066, 0.93066, 0.896, 0.896,
    0.81787, 0.81836
]
# github.com/welltop-cn/ComfyUI-TeaCache nodes.py at 91dff8e (threshold from its README).
TEA_HUNYUAN_VIDEO = (733.226126, -401.131952, 67.5869174, -3.149878, 0.0961237896)


class HunyuanVideoStrategy(BlockStrategy):
    name = "hunyuan_video"
    title = "HunyuanVideo"
    residual = "image tokens before the double blocks -> image tokens after the single blocks (cat(img, txt))"
    model_classes = ("comfy.ldm.hunyuan_video.model.HunyuanVideo",)
    single_blocks = "single_blocks"
    single_txt_first = False
    presets = {
        "hunyuan_video": Preset("hunyuan_video", RatioCurves.single(HUNYUAN_VIDEO_50), MagCacheParams(0.24, 0.2, 6),
                                "HunyuanVideo T2V, 50 steps"),
        "hunyuan_video1.5": Preset("hunyuan_video1.5", RatioCurves.interleaved(HUNYUAN_VIDEO15_20),
                                   MagCacheParams(0.03, 0.25, 2), "HunyuanVideo 1.5, 20 steps, CFG"),
        "hunyuan_video1.5_40steps": Preset("hunyuan_video1.5_40steps", RatioCurves.interleaved(HUNYUAN_VIDEO15_40),
                                           MagCacheParams(0.03, 0.25, 2), "HunyuanVideo 1.5, 40 steps, CFG (for runs over 20 steps)"),
    }
    tea_presets = {"hunyuan_video": TeaPreset("hunyuan_video", TeaCacheParams(0.15, TEA_HUNYUAN_VIDEO), 0.0, "HunyuanVideo T2V")}

    def detect_variant(self, model_patcher):
        base = type(model_patcher.model).__name__
        if base.startswith("HunyuanImage21"):
            return None, None, f"HunyuanImage 2.1 ({base})"
        if base.startswith("HunyuanVideo15"):
            return "hunyuan_video1.5", None, f"HunyuanVideo 1.5 ({base}; over 20 steps pick hunyuan_video1.5_40steps)"
        if base == "HunyuanVideo":
            return "hunyuan_video", "hunyuan_video", "HunyuanVideo 1.0 T2V"
        return None, None, f"HunyuanVideo 1.0 variant ({base}; the published curves are T2V)"

    def modulated_input(self, dm, args):
        return flux_style_modulated(dm.double_blocks[0], args)
