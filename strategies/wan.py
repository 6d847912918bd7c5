"""Wan 2.1 and 2.2 (T2V, I2V, VACE, Camera, HuMo, Animate, TI2V 5B; ComfyUI 0.33: S2V, Animate 2,
WanDancer, SCAIL / SCAIL-2, causal Wan, FlowRVS, Fun Control): ``comfy.ldm.wan.model.WanModel`` and
its subclasses (block patches get ``{"img", "txt", "vec", "pe"}``, and ``transformer_options`` where the
ComfyUI passes it; where it does not, ComfyUI 0.3.75's S2V, the patches find the run through the call).

Residual: the tokens entering the first block vs leaving the last block (``img``): the video tokens
plus whatever the model appends to them for the blocks (S2V's reference and motion frames, SCAIL's
reference and pose tokens, Animate 2's reference slot); its head drops those afterwards.
Per-model notes:
* S2V (``WanModel_S2V``) and WanDancer inject audio / music after every listed block, outside the
  patches: the cached residual includes those injections, and on a skipped step they still run on the
  passed-through stream (their result is replaced by the last block's), which costs a little.
* Animate 2 runs its pose branch beside every block, outside the patches ("its state has to reach
  block i+1"): a skipped step saves the generation branch only, the pose branch still runs (or is
  read from ComfyUI's own pose cache).
* Causal Wan (``CausalWanModel``): an ordinary sampler runs it through the patches like Wan 2.1. Its
  autoregressive sampler (``ar_video``) calls ``forward_block``, which bypasses the patches and calls
  the model per chunk at the same sigmas (and at sigma 0 to fill its KV cache): nothing is cached
  there, every call computes (``nodes/patching.py`` counts such calls as computed and says so).
Wan 2.2 14B runs as two models (high noise, then low noise) over one schedule: each patched model
reads its own part of the 40-step curve, because steps are indexed in the whole schedule.
Wan 2.2 T2V/I2V 14B have the layout of Wan 2.1 14B, so 'auto' cannot tell them apart: it picks the
2.1 curve and says so; choose the wan2.2 preset by hand. 'auto' gives a published curve only to the
plain T2V / I2V layout on ComfyUI's WAN21 / WAN22 model (not FlowRVS, Fun Control, FLF2V, reference
conv models): the others are calibrate-only.
TeaCache: the indicator is the first block's timestep modulation ``e0`` (``vec``), with the
TeaCache authors' "ret_mode" coefficients for it.
"""
from __future__ import annotations

from ..magcache_core import MagCacheParams, RatioCurves, TeaCacheParams
from .base import BlockStrategy, Preset, TeaPreset

# Published by the MagCache authors: github.com/Zehong-Ma/ComfyUI-MagCache nodes.py at
# 47bdd2aca97e568087c4e92d2d2f0426bdce7a37. Interleaved per step: cond, uncond, cond, uncond...
# (T2V curves: 50 steps; I2V curves: 40 steps.)
WAN21_T2V_1_3B = [
    1.0, 1.0, 1.0124, 1.02213, 1.00166, 1.0041, 0.99791, 1.00061, 0.99682, 0.99762, 0.99634,
    0.99685, 0.99567, 0.99586, 0.99416, 0.99422, 0.99578, 0.99575, 0.9957, 0.99563, 0.99511,
    0.99506, 0.99535, 0.99531, 0.99552, 0.99549, 0.99541, 0.99539, 0.9954, 0.99536, 0.99489,
    0.99485, 0.99518, 0.99514, 0.99484, 0.99478, 0.99481, 0.99479, 0.99415, 0.99413, 0.99419,
    0.99416, 0.99396, 0.99393, 0.99388, 0.99386, 0.99349, 0.99349, 0.99309, 0.99304, 0.9927,
    0.9927, 0.99228, 0.99226, 0.99171, 0.9917, 0.99137, 0.99135, 0.99068, 0.99063, 0.99005,
    0.99003, 0.98944, 0.98942, 0.98849, 0.98849, 0.98758, 0.98757, 0.98644, 0.98643, 0.98504,
    0.98503, 0.9836, 0.98359, 0.98202, 0.98201, 0.97977, 0.97978, 0.97717, 0.97718, 0.9741,
    0.97411, 0.97003, 0.97002, 0.96538, 0.96541, 0.9593, 0.95933, 0.95086, 0.95089, 0.94013,
    0.94019, 0.92402, 0.92414, 0.90241, 0.9026, 0.86821, 0.86868, 0.81838, 0.81939
]
WAN21_T2V_14B = [
    1.0, 1.0, 1.02504, 1.03017, 1.00025, 1.00251, 0.9985, 0.99962, 0.99779, 0.99771, 0.9966,
    0.99658, 0.99482, 0.99476, 0.99467, 0.99451, 0.99664, 0.99656, 0.99434, 0.99431, 0.99533,
    0.99545, 0.99468, 0.99465, 0.99438, 0.99434, 0.99516, 0.99517, 0.99384, 0.9938, 0.99404,
    0.99401, 0.99517, 0.99516, 0.99409, 0.99408, 0.99428, 0.99426, 0.99347, 0.99343, 0.99418,
    0.99416, 0.99271, 0.99269, 0.99313, 0.99311, 0.99215, 0.99215, 0.99218, 0.99215, 0.99216,
    0.99217, 0.99163, 0.99161, 0.99138, 0.99135, 0.98982, 0.9898, 0.98996, 0.98995, 0.9887,
    0.98866, 0.98772, 0.9877, 0.98767, 0.98765, 0.98573, 0.9857, 0.98501, 0.98498, 0.9838,
    0.98376, 0.98177, 0.98173, 0.98037, 0.98035, 0.97678, 0.97677, 0.97546, 0.97543, 0.97184,
    0.97183, 0.96711, 0.96708, 0.96349, 0.96345, 0.95629, 0.95625, 0.94926, 0.94929, 0.93964,
    0.93961, 0.92511, 0.92504, 0.90693, 0.90678, 0.8796, 0.87945, 0.86111, 0.86189
]
WAN21_I2V_480P_14B = [
    1.0, 1.0, 0.98783, 0.98993, 0.97559, 0.97593, 0.98311, 0.98319, 0.98202, 0.98225, 0.9888,
    0.98878, 0.98762, 0.98759, 0.98957, 0.98971, 0.99052, 0.99043, 0.99383, 0.99384, 0.98857,
    0.9886, 0.99065, 0.99068, 0.98845, 0.98847, 0.99057, 0.99057, 0.98957, 0.98961, 0.98601,
    0.9861, 0.98823, 0.98823, 0.98756, 0.98759, 0.98808, 0.98814, 0.98721, 0.98724, 0.98571,
    0.98572, 0.98543, 0.98544, 0.98157, 0.98165, 0.98411, 0.98413, 0.97952, 0.97953, 0.98149,
    0.9815, 0.9774, 0.97742, 0.97825, 0.97826, 0.97355, 0.97361, 0.97085, 0.97087, 0.97056,
    0.97055, 0.96588, 0.96587, 0.96113, 0.96124, 0.9567, 0.95681, 0.94961, 0.94969, 0.93973,
    0.93988, 0.93217, 0.93224, 0.91878, 0.91896, 0.90955, 0.90954, 0.92617, 0.92616
]
WAN21_I2V_720P_14B = [
    1.0, 1.0, 0.99428, 0.99498, 0.98588, 0.98621, 0.98273, 0.98281, 0.99018, 0.99023, 0.98911,
    0.98917, 0.98646, 0.98652, 0.99454, 0.99456, 0.9891, 0.98909, 0.99124, 0.99127, 0.99102,
    0.99103, 0.99215, 0.99212, 0.99515, 0.99515, 0.99576, 0.99572, 0.99068, 0.99072, 0.99097,
    0.99097, 0.99166, 0.99169, 0.99041, 0.99042, 0.99201, 0.99198, 0.99101, 0.99101, 0.98599,
    0.98603, 0.98845, 0.98844, 0.98848, 0.98851, 0.98862, 0.98857, 0.98718, 0.98719, 0.98497,
    0.98497, 0.98264, 0.98263, 0.98389, 0.98393, 0.97938, 0.9794, 0.97535, 0.97536, 0.97498,
    0.97499, 0.973, 0.97301, 0.96827, 0.96828, 0.96261, 0.96263, 0.95335, 0.9534, 0.94649,
    0.94655, 0.93397, 0.93414, 0.91636, 0.9165, 0.89088, 0.89109, 0.8679, 0.86768
]

# Also from the authors' pack at the same commit (interleaved cond/uncond; 2.2 14B: 40 steps, 5B: 50).
WAN21_VACE_1_3B = [
    1.0, 1.0, 1.00129, 1.0019, 1.00056, 1.00053, 0.99776, 0.99746, 0.99726, 0.99789, 0.99725, 0.99785,
    0.9958, 0.99625, 0.99703, 0.99728, 0.99863, 0.9988, 0.99735, 0.99731, 0.99714, 0.99707, 0.99697,
    0.99687, 0.9969, 0.99683, 0.99695, 0.99702, 0.99697, 0.99701, 0.99608, 0.99617, 0.99721, 0.9973,
    0.99649, 0.99657, 0.99659, 0.99667, 0.99727, 0.99731, 0.99603, 0.99612, 0.99652, 0.99659, 0.99635,
    0.9964, 0.9958, 0.99585, 0.99581, 0.99585, 0.99573, 0.99579, 0.99531, 0.99534, 0.99505, 0.99508,
    0.99481, 0.99484, 0.99426, 0.99433, 0.99403, 0.99406, 0.99357, 0.9936, 0.99302, 0.99305, 0.99243,
    0.99247, 0.9916, 0.99164, 0.99085, 0.99087, 0.98985, 0.9899, 0.98857, 0.98859, 0.98717, 0.98721,
    0.98551, 0.98556, 0.98301, 0.98305, 0.9805, 0.98055, 0.97635, 0.97641, 0.97183, 0.97187, 0.96496,
    0.965, 0.95526, 0.95533, 0.94102, 0.94104, 0.91809, 0.91815, 0.87871, 0.87879, 0.80141, 0.80164
]
WAN22_T2V_14B = [
    1.0, 1.0, 1.00124, 1.00155, 0.99822, 0.99851, 0.99696, 0.99687, 0.99703, 0.99732, 0.9966, 0.99679,
    0.99602, 0.99658, 0.99578, 0.99664, 0.99484, 0.9949, 0.99633, 0.996, 0.99659, 0.99683, 0.99534,
    0.99549, 0.99584, 0.99577, 0.99681, 0.99694, 0.99563, 0.99554, 0.9944, 0.99473, 0.99594, 0.9964,
    0.99466, 0.99461, 0.99453, 0.99481, 0.99389, 0.99365, 0.99391, 0.99406, 0.99354, 0.99361, 0.99283,
    0.99278, 0.99268, 0.99263, 0.99057, 0.99091, 0.99125, 0.99126, 0.65523, 0.65252, 0.98808, 0.98852,
    0.98765, 0.98736, 0.9851, 0.98535, 0.98311, 0.98339, 0.9805, 0.9806, 0.97776, 0.97771, 0.97278,
    0.97286, 0.96731, 0.96728, 0.95857, 0.95855, 0.94385, 0.94385, 0.92118, 0.921, 0.88108, 0.88076,
    0.80263, 0.80181
]
WAN22_I2V_14B = [
    1.0, 1.0, 0.99191, 0.99144, 0.99356, 0.99337, 0.99326, 0.99285, 0.99251, 0.99264, 0.99393, 0.99366,
    0.9943, 0.9943, 0.99276, 0.99288, 0.99389, 0.99393, 0.99274, 0.99289, 0.99316, 0.9931, 0.99379,
    0.99377, 0.99268, 0.99271, 0.99222, 0.99227, 0.99175, 0.9916, 0.91076, 0.91046, 0.98931, 0.98933,
    0.99087, 0.99088, 0.98852, 0.98855, 0.98895, 0.98896, 0.98806, 0.98808, 0.9871, 0.98711, 0.98613,
    0.98618, 0.98434, 0.98435, 0.983, 0.98307, 0.98185, 0.98187, 0.98131, 0.98131, 0.9783, 0.97835,
    0.97619, 0.9762, 0.97264, 0.9727, 0.97088, 0.97098, 0.96568, 0.9658, 0.96045, 0.96055, 0.95322,
    0.95335, 0.94579, 0.94594, 0.93297, 0.93311, 0.91699, 0.9172, 0.89174, 0.89202, 0.8541, 0.85446,
    0.79823, 0.79902
]
WAN22_TI2V_5B = [
    1.0, 1.0, 0.99505, 0.99389, 0.99441, 0.9957, 0.99558, 0.99551, 0.99499, 0.9945, 0.99534, 0.99548,
    0.99468, 0.9946, 0.99463, 0.99458, 0.9946, 0.99453, 0.99408, 0.99404, 0.9945, 0.99441, 0.99409,
    0.99398, 0.99403, 0.99397, 0.99382, 0.99377, 0.99349, 0.99343, 0.99377, 0.99378, 0.9933, 0.99328,
    0.99303, 0.99301, 0.99217, 0.99216, 0.992, 0.99201, 0.99201, 0.99202, 0.99133, 0.99132, 0.99112,
    0.9911, 0.99155, 0.99155, 0.98958, 0.98957, 0.98959, 0.98958, 0.98838, 0.98835, 0.98826, 0.98825,
    0.9883, 0.98828, 0.98711, 0.98709, 0.98562, 0.98561, 0.98511, 0.9851, 0.98414, 0.98412, 0.98284,
    0.98282, 0.98104, 0.98101, 0.97981, 0.97979, 0.97849, 0.97849, 0.97557, 0.97554, 0.97398, 0.97395,
    0.97171, 0.97166, 0.96917, 0.96913, 0.96511, 0.96507, 0.96263, 0.96257, 0.95839, 0.95835, 0.95483,
    0.95475, 0.94942, 0.94936, 0.9468, 0.94678, 0.94583, 0.94594, 0.94843, 0.94872, 0.96949, 0.97015
]

# Recommended threshold / retention / K from the authors' README: T2V 1.3B 0.12/0.2/4, 14B (T2V, I2V)
# 0.24/0.2/6, VACE 0.02/0.2/3. Wan 2.2 has no published settings: the 14B and 1.3B-class ones are used.
SMALL, LARGE, VACE = MagCacheParams(0.12, 0.2, 4), MagCacheParams(0.24, 0.2, 6), MagCacheParams(0.02, 0.2, 3)


def _preset(name, curve, note, params):
    return Preset(name, RatioCurves.interleaved(curve), params, note)


# github.com/welltop-cn/ComfyUI-TeaCache nodes.py at 91dff8e: the "ret_mode" coefficients, fitted on
# e0 (what the blocks get as ``vec``); thresholds from its README, start 0.1 as it recommends.
TEA_WAN = {
    "wan2.1_t2v_1.3B": ((-52186.2437, 9230.41404, -528.275948, 13.6987616, -0.0499875664), 0.15),
    "wan2.1_t2v_14B": ((-303318.725, 49053.7029, -2655.30556, 58.7365115, -0.315583525), 0.2),
    "wan2.1_i2v_480p_14B": ((257151.496, -35422.9917, 1402.86849, -13.5890334, 0.132517977), 0.3),
    "wan2.1_i2v_720p_14B": ((8107.0546, 2133.93892, -372.934672, 16.6203073, -0.0417769401), 0.3),
}


class WanStrategy(BlockStrategy):
    name = "wan"
    title = "Wan 2.1 / 2.2"
    residual = "video tokens before the first block -> video tokens after the last block"
    model_classes = ("comfy.ldm.wan.model.WanModel", "comfy.ldm.wan.model.VaceWanModel",
                     "comfy.ldm.wan.model.CameraWanModel", "comfy.ldm.wan.model.HumoWanModel",
                     "comfy.ldm.wan.model_animate.AnimateWanModel", "comfy.ldm.wan.model.WanModel_S2V",
                     "comfy.ldm.wan.model_animate2.WanAnimate2Model", "comfy.ldm.wan.model_wandancer.WanDancerModel",
                     "comfy.ldm.wan.model.SCAILWanModel", "comfy.ldm.wan.model.SCAIL2WanModel",
                     "comfy.ldm.wan.ar_model.CausalWanModel")
    double_blocks = "blocks"
    presets = {
        "wan2.1_t2v_1.3B": _preset("wan2.1_t2v_1.3B", WAN21_T2V_1_3B, "Wan 2.1 T2V 1.3B, 50 steps, CFG", SMALL),
        "wan2.1_t2v_14B": _preset("wan2.1_t2v_14B", WAN21_T2V_14B, "Wan 2.1 T2V 14B (and VACE 14B), 50 steps, CFG", LARGE),
        "wan2.1_i2v_480p_14B": _preset("wan2.1_i2v_480p_14B", WAN21_I2V_480P_14B, "Wan 2.1 I2V 14B 480p, 40 steps, CFG", LARGE),
        "wan2.1_i2v_720p_14B": _preset("wan2.1_i2v_720p_14B", WAN21_I2V_720P_14B, "Wan 2.1 I2V 14B 720p, 40 steps, CFG", LARGE),
        "wan2.1_vace_1.3B": _preset("wan2.1_vace_1.3B", WAN21_VACE_1_3B, "Wan 2.1 VACE 1.3B, 50 steps, CFG", VACE),
        "wan2.2_t2v_14B": _preset("wan2.2_t2v_14B", WAN22_T2V_14B, "Wan 2.2 T2V 14B, high+low noise, 40 steps, CFG", LARGE),
        "wan2.2_i2v_14B": _preset("wan2.2_i2v_14B", WAN22_I2V_14B, "Wan 2.2 I2V 14B, high+low noise, 40 steps, CFG", LARGE),
        "wan2.2_ti2v_5B": _preset("wan2.2_ti2v_5B", WAN22_TI2V_5B, "Wan 2.2 TI2V 5B, 50 steps, CFG", SMALL),
    }
    tea_presets = {name: TeaPreset(name, TeaCacheParams(thresh, coeffs), 0.1, f"{name} (ret_mode coefficients)")
                   for name, (coeffs, thresh) in TEA_WAN.items()}

    def detect_variant(self, model_patcher):
        dm = model_patcher.model.diffusion_model
        kind = getattr(dm, "model_type", "t2v")
        cls = type(dm).__name__
        base = type(model_patcher.model).__name__
        what = f"Wan {kind.upper()} {cls} (width {dm.dim}, {dm.num_layers} blocks, {dm.in_dim} input channels, {base})"
        if base == "WAN22" and cls == "WanModel" and dm.dim == 3072 and dm.in_dim == 48:
            return "wan2.2_ti2v_5B", None, "Wan 2.2 TI2V 5B"
        if cls == "VaceWanModel":
            if dm.dim == 1536:
                return "wan2.1_vace_1.3B", None, what
            if dm.dim == 5120:
                return "wan2.1_t2v_14B", None, what + " (the authors' VACE 14B curve is the T2V 14B one)"
            return None, None, what
        # The published T2V / I2V curves fit the plain layout only: not FlowRVS (its own model_base), Fun
        # Control (48 input channels), FLF2V (image-embedding positions) nor reference-conv models.
        flf = getattr(getattr(dm, "img_emb", None), "emb_pos", None) is not None
        plain = (cls == "WanModel" and base == "WAN21" and getattr(dm, "ref_conv", None) is None and not flf
                 and dm.in_dim == {"t2v": 16, "i2v": 36}.get(kind))
        if not plain:
            return None, None, what
        if kind == "t2v" and dm.dim == 1536:
            return "wan2.1_t2v_1.3B", "wan2.1_t2v_1.3B", what
        if kind == "t2v" and dm.dim == 5120:
            return "wan2.1_t2v_14B", "wan2.1_t2v_14B", what + "; for Wan 2.2 T2V 14B pick wan2.2_t2v_14B"
        if kind == "i2v" and dm.dim == 5120:
            # 480p and 720p share one layout; 480p is the common one, 720p is in the list.
            return "wan2.1_i2v_480p_14B", "wan2.1_i2v_480p_14B", what + "; for Wan 2.2 I2V 14B pick wan2.2_i2v_14B"
        return None, None, what

    def modulated_input(self, dm, args):
        return args["vec"]
