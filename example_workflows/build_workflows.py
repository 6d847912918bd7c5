"""Writes the workflow templates and their thumbnails from the compact specs below.

    example_workflows/<title>.json, <title>.jpg       the pack's templates: ComfyUI's stock nodes + this pack
    demo/comfyui_magcache_demo/example_workflows/     graphs that need the test-only demo package

    python example_workflows/build_workflows.py           # (re)write every .json and .jpg
    python example_workflows/build_workflows.py --check   # exit 1 if a committed file is out of date

ComfyUI's template browser (front end 1.32 with ComfyUI 0.3.75, 1.49 with 0.33) lists a custom node
pack's ``example_workflows/*.json`` (GET /workflow_templates) by file name only: the name is the card's
title (and, in 1.32, its description), and ``<name>.jpg`` beside the file is its thumbnail
(/api/workflow_templates/<pack>/<name>.jpg). Nothing inside the JSON is read for the listing, so the
file names here are the titles. Any other .json in that folder would be listed as a template too.

Each node is ``N(id, type, widgets, pos, inputs={socket: (source id, output slot)})``; widgets are in
the order of the node's widget inputs in /object_info (a seed widget is followed by its
"control_after_generate" value, LoadImage's file by its upload button's "image"). Presets, their step
counts and recommended settings are read from the pack's strategies, so this needs ComfyUI importable:
run it with a ComfyUI venv's python. tests/test_templates.py checks the files against a live server.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEMO_DIR = ROOT / "demo" / "comfyui_magcache_demo" / "example_workflows"
REFERENCE_CALIBRATION = ROOT / "demo" / "models" / "magcache_shapes_wan.calibration.json"


# MagCacheApply's optional widgets after speed, at their defaults: skipped_steps, first_blocks, first_blocks_threshold.
MAG_VARIANTS = ["extrapolate", 0, 0.2]


def pack():
    """The pack as ComfyUI loads it (``comfyui_magcache``): the test process's, else set up here."""
    if "comfyui_magcache" not in sys.modules:
        for extra in (ROOT / "bench", ROOT / "demo"):
            if str(extra) not in sys.path:
                sys.path.insert(0, str(extra))
        import quality
        quality.setup_comfy(tempfile.mkdtemp(prefix="magcache-build-"))
    return sys.modules["comfyui_magcache"]


# Socket (link) inputs and outputs of the node types used, in /object_info order:
# (inputs [(name, type, optional)], outputs [type or (name, type)]).
SOCKETS = {
    "UNETLoader": ([], ["MODEL"]),
    "CheckpointLoaderSimple": ([], ["MODEL", "CLIP", "VAE"]),
    "MagCacheApply": ([("model", "MODEL", False), ("ratios", "MAGCACHE_RATIOS", True)], ["MODEL"]),
    "MagCacheCalibrate": ([("model", "MODEL", False)], ["MODEL"]),
    "MagCacheRatios": ([], ["MAGCACHE_RATIOS"]),
    "TeaCacheApply": ([("model", "MODEL", False)], ["MODEL"]),
    "MagCacheDemoConditioning": ([], ["CONDITIONING"]),
    "MagCacheShapesPrompt": ([], ["CONDITIONING"]),
    "MagCacheShapesDecode": ([("samples", "LATENT", False)], ["IMAGE"]),
    "ModelSamplingSD3": ([("model", "MODEL", False)], ["MODEL"]),
    "ModelSamplingAuraFlow": ([("model", "MODEL", False)], ["MODEL"]),
    "CLIPLoader": ([], ["CLIP"]),
    "DualCLIPLoader": ([], ["CLIP"]),
    "T5TokenizerOptions": ([("clip", "CLIP", False)], ["CLIP"]),
    "CLIPTextEncode": ([("clip", "CLIP", False)], ["CONDITIONING"]),
    "FluxGuidance": ([("conditioning", "CONDITIONING", False)], ["CONDITIONING"]),
    "LoadImage": ([], ["IMAGE", "MASK"]),
    "FluxKontextImageScale": ([("image", "IMAGE", False)], ["IMAGE"]),
    "VAEEncode": ([("pixels", "IMAGE", False), ("vae", "VAE", False)], ["LATENT"]),
    "ConditioningZeroOut": ([("conditioning", "CONDITIONING", False)], ["CONDITIONING"]),
    "ReferenceLatent": ([("conditioning", "CONDITIONING", False), ("latent", "LATENT", True)], ["CONDITIONING"]),
    "LTXVConditioning": ([("positive", "CONDITIONING", False), ("negative", "CONDITIONING", False)],
                         [("positive", "CONDITIONING"), ("negative", "CONDITIONING")]),
    "EmptyHunyuanLatentVideo": ([], ["LATENT"]),
    "EmptySD3LatentImage": ([], ["LATENT"]),
    "EmptyLTXVLatentVideo": ([], ["LATENT"]),
    "LTXVScheduler": ([("latent", "LATENT", True)], ["SIGMAS"]),
    "KSamplerSelect": ([], ["SAMPLER"]),
    "KSampler": ([("model", "MODEL", False), ("positive", "CONDITIONING", False),
                  ("negative", "CONDITIONING", False), ("latent_image", "LATENT", False)], ["LATENT"]),
    "KSamplerAdvanced": ([("model", "MODEL", False), ("positive", "CONDITIONING", False),
                          ("negative", "CONDITIONING", False), ("latent_image", "LATENT", False)], ["LATENT"]),
    "SamplerCustom": ([("model", "MODEL", False), ("positive", "CONDITIONING", False),
                       ("negative", "CONDITIONING", False), ("sampler", "SAMPLER", False),
                       ("sigmas", "SIGMAS", False), ("latent_image", "LATENT", False)],
                      [("output", "LATENT"), ("denoised_output", "LATENT")]),
    "VAELoader": ([], ["VAE"]),
    "VAEDecode": ([("samples", "LATENT", False), ("vae", "VAE", False)], ["IMAGE"]),
    "VAEDecodeTiled": ([("samples", "LATENT", False), ("vae", "VAE", False)], ["IMAGE"]),
    "SaveLatent": ([("samples", "LATENT", False)], []),
    "SaveImage": ([("images", "IMAGE", False)], []),
    "SaveAnimatedWEBP": ([("images", "IMAGE", False)], []),
    "Note": ([], []),
}

# Where the front end offers to download a missing model from (the URLs of ComfyUI's own templates).
_HF_WAN21 = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
_HF_WAN22 = "https://huggingface.co/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/resolve/main/split_files"
_HF_FLUX_TE = "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main"
_HF_QWEN = "https://huggingface.co/Comfy-Org/Qwen-Image_ComfyUI/resolve/main/split_files"
_HF_HUNYUAN = "https://huggingface.co/Comfy-Org/HunyuanVideo_repackaged/resolve/main/split_files"
MODELS = {
    "wan2.1_t2v_1.3B_fp16.safetensors": (f"{_HF_WAN21}/diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors", "diffusion_models"),
    "wan2.1_t2v_14B_fp8_scaled.safetensors": (f"{_HF_WAN21}/diffusion_models/wan2.1_t2v_14B_fp8_scaled.safetensors", "diffusion_models"),
    "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors": (f"{_HF_WAN22}/diffusion_models/wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "diffusion_models"),
    "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors": (f"{_HF_WAN22}/diffusion_models/wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", "diffusion_models"),
    "umt5_xxl_fp8_e4m3fn_scaled.safetensors": (f"{_HF_WAN21}/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors", "text_encoders"),
    "wan_2.1_vae.safetensors": (f"{_HF_WAN21}/vae/wan_2.1_vae.safetensors", "vae"),
    "flux1-dev.safetensors": ("https://huggingface.co/Comfy-Org/flux1-dev/resolve/main/flux1-dev.safetensors", "diffusion_models"),
    "flux1-dev-kontext_fp8_scaled.safetensors": ("https://huggingface.co/Comfy-Org/flux1-kontext-dev_ComfyUI/resolve/main/split_files/diffusion_models/flux1-dev-kontext_fp8_scaled.safetensors", "diffusion_models"),
    "clip_l.safetensors": (f"{_HF_FLUX_TE}/clip_l.safetensors", "text_encoders"),
    "t5xxl_fp16.safetensors": (f"{_HF_FLUX_TE}/t5xxl_fp16.safetensors", "text_encoders"),
    "t5xxl_fp8_e4m3fn_scaled.safetensors": (f"{_HF_FLUX_TE}/t5xxl_fp8_e4m3fn_scaled.safetensors", "text_encoders"),
    "ae.safetensors": ("https://huggingface.co/Comfy-Org/Lumina_Image_2.0_Repackaged/resolve/main/split_files/vae/ae.safetensors", "vae"),
    "qwen_image_fp8_e4m3fn.safetensors": (f"{_HF_QWEN}/diffusion_models/qwen_image_fp8_e4m3fn.safetensors", "diffusion_models"),
    "qwen_2.5_vl_7b_fp8_scaled.safetensors": (f"{_HF_QWEN}/text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors", "text_encoders"),
    "qwen_image_vae.safetensors": (f"{_HF_QWEN}/vae/qwen_image_vae.safetensors", "vae"),
    "hunyuan_video_t2v_720p_bf16.safetensors": (f"{_HF_HUNYUAN}/diffusion_models/hunyuan_video_t2v_720p_bf16.safetensors", "diffusion_models"),
    "llava_llama3_fp8_scaled.safetensors": (f"{_HF_HUNYUAN}/text_encoders/llava_llama3_fp8_scaled.safetensors", "text_encoders"),
    "hunyuan_video_vae_bf16.safetensors": (f"{_HF_HUNYUAN}/vae/hunyuan_video_vae_bf16.safetensors", "vae"),
    "Chroma1-HD-fp8_scaled_rev2.safetensors": ("https://huggingface.co/silveroxides/Chroma1-HD-fp8-scaled/resolve/main/Chroma1-HD-fp8_scaled_rev2.safetensors", "diffusion_models"),
    "ltx-video-2b-v0.9.safetensors": ("https://huggingface.co/Lightricks/LTX-Video/resolve/main/ltx-video-2b-v0.9.safetensors", "checkpoints"),
}


@dataclass
class N:
    id: int
    type: str
    widgets: list
    pos: tuple[int, int]
    inputs: dict[str, tuple[int, int]] = field(default_factory=dict)
    title: str | None = None
    color: tuple[str, str] | None = None     # (color, bgcolor)
    mode: int = 0                            # 0 always, 2 muted (never), 4 bypassed


@dataclass
class Group:
    title: str
    nodes: tuple[int, ...]                   # the group's frame is drawn around these nodes
    color: str = "#3f789e"


@dataclass
class Template:
    """One workflow file. ``title`` is its file name, which is what the template browser shows."""
    title: str
    folder: Path
    nodes: list[N]
    thumbnail: dict                          # what thumbnails.py draws (also kept in the JPEG's comment)
    groups: list[Group] = field(default_factory=list)


POSITIVE_COLOR, NEGATIVE_COLOR, NOTE_COLOR, CACHE_COLOR = ("#232", "#353"), ("#322", "#533"), ("#432", "#653"), ("#223", "#335")
SEED = 20251122
MUTED = 2


def min_steps() -> int:
    """The apply nodes' default min_steps (their last widget)."""
    pack()
    return sys.modules["comfyui_magcache.nodes.schedule"].MIN_STEPS


def magcache_widgets(preset: str) -> list:
    """MagCacheApply's widgets with the preset's recommended threshold / retention / K."""
    from comfyui_magcache.strategies import all_presets
    params = all_presets()[preset][1].params
    return [preset, params.threshold, params.retention_ratio, params.max_skips, 0.0, 1.0, "main_device", "off"] + MAG_VARIANTS + [min_steps()]


def preset_steps(preset: str) -> int:
    """The step count the preset's curve was recorded at (the template samples with it)."""
    from comfyui_magcache.strategies import all_presets
    return all_presets()[preset][1].curves.length


def preset_uses_cfg(preset: str) -> bool:
    """Whether the preset has an uncond curve (recorded with CFG > 1)."""
    from comfyui_magcache.magcache_core import UNCOND
    from comfyui_magcache.strategies import all_presets
    return UNCOND in all_presets()[preset][1].curves.per_kind


def magcache_thumb(family: str, preset: str, ranges: list[tuple[int, int]] | None = None, labels=None) -> dict:
    steps = preset_steps(preset)
    return {"kind": "magcache", "family": family, "preset": preset, "steps": steps,
            "ranges": [list(r) for r in (ranges or [(0, steps)])], "labels": list(labels or [])}


def note(text: str, pos, nid: int, title: str = "MagCache") -> N:
    return N(nid, "Note", [text], pos, title=title, color=NOTE_COLOR)


def bypass_hint(node: str = "MagCache Apply") -> str:
    return f"Bypass the {node} node (select it, Ctrl+B) for the uncached result with the same seed."


# -- the pack's templates ------------------------------------------------------------------------
def flux_dev() -> Template:
    p = "flux"
    steps = preset_steps(p)
    text = (f"FLUX.1 dev with MagCache, preset '{p}' at the authors' settings (threshold, retention, K in "
            f"MagCache Apply) and the {steps} steps the curve was recorded at; CFG 1 with FLUX guidance 3.5. "
            "Other step counts work: the curve is resampled. " + bypass_hint())
    nodes = [
        N(1, "UNETLoader", ["flux1-dev.safetensors", "default"], (0, 0)),
        N(2, "MagCacheApply", magcache_widgets(p), (380, 0), {"model": (1, 0)}, color=CACHE_COLOR),
        N(3, "DualCLIPLoader", ["clip_l.safetensors", "t5xxl_fp16.safetensors", "flux", "default"], (0, 160)),
        N(4, "CLIPTextEncode", ["a cozy wooden cabin in a snowy forest at dusk, warm light in the windows, photograph"],
          (380, 300), {"clip": (3, 0)}, title="CLIP Text Encode (Positive Prompt)", color=POSITIVE_COLOR),
        N(5, "FluxGuidance", [3.5], (820, 300), {"conditioning": (4, 0)}),
        N(6, "CLIPTextEncode", [""], (380, 560), {"clip": (3, 0)}, title="CLIP Text Encode (Negative, unused at CFG 1)",
          color=NEGATIVE_COLOR),
        N(7, "EmptySD3LatentImage", [1024, 1024, 1], (0, 360)),
        N(8, "KSampler", [SEED, "fixed", steps, 1.0, "euler", "simple", 1.0], (1180, 0),
          {"model": (2, 0), "positive": (5, 0), "negative": (6, 0), "latent_image": (7, 0)}),
        N(9, "VAELoader", ["ae.safetensors"], (820, 460)),
        N(10, "VAEDecode", [], (1540, 0), {"samples": (8, 0), "vae": (9, 0)}),
        N(11, "SaveImage", ["magcache_flux"], (1800, 0), {"images": (10, 0)}),
        note(text, (0, 560), 12),
    ]
    return Template("FLUX.1 dev with MagCache", HERE, nodes, magcache_thumb("FLUX.1 dev", p))


def flux_kontext() -> Template:
    p = "flux_kontext"
    steps = preset_steps(p)
    text = (f"FLUX.1 Kontext dev (image editing) with MagCache, preset '{p}' at the authors' settings and the "
            f"{steps} steps its curve was recorded at; CFG 1 with FLUX guidance 2.5. Load the image to edit in "
            "Load Image and say what to change in the prompt. " + bypass_hint())
    nodes = [
        N(1, "UNETLoader", ["flux1-dev-kontext_fp8_scaled.safetensors", "default"], (0, 0)),
        N(2, "MagCacheApply", magcache_widgets(p), (380, 0), {"model": (1, 0)}, color=CACHE_COLOR),
        N(3, "DualCLIPLoader", ["clip_l.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors", "flux", "default"], (0, 160)),
        N(4, "LoadImage", ["example.png", "image"], (0, 360), title="Load Image (to edit)"),
        N(5, "FluxKontextImageScale", [], (380, 360), {"image": (4, 0)}),
        N(6, "VAELoader", ["ae.safetensors"], (0, 740)),
        N(7, "VAEEncode", [], (380, 480), {"pixels": (5, 0), "vae": (6, 0)}),
        N(8, "CLIPTextEncode", ["turn the scene into a watercolor painting, keep the composition"], (380, 600),
          {"clip": (3, 0)}, title="CLIP Text Encode (Edit Instruction)", color=POSITIVE_COLOR),
        N(9, "ReferenceLatent", [], (820, 360), {"conditioning": (8, 0), "latent": (7, 0)}),
        N(10, "FluxGuidance", [2.5], (820, 480), {"conditioning": (9, 0)}),
        N(11, "ConditioningZeroOut", [], (820, 620), {"conditioning": (8, 0)}, title="Negative (zero, unused at CFG 1)",
          color=NEGATIVE_COLOR),
        N(12, "KSampler", [SEED, "fixed", steps, 1.0, "euler", "simple", 1.0], (1180, 0),
          {"model": (2, 0), "positive": (10, 0), "negative": (11, 0), "latent_image": (7, 0)}),
        N(13, "VAEDecode", [], (1540, 0), {"samples": (12, 0), "vae": (6, 0)}),
        N(14, "SaveImage", ["magcache_kontext"], (1800, 0), {"images": (13, 0)}),
        note(text, (0, 860), 15),
    ]
    return Template("FLUX.1 Kontext dev with MagCache", HERE, nodes, magcache_thumb("FLUX.1 Kontext dev", p))


WAN_NEGATIVE = ("overexposed, static, blurry details, subtitles, worst quality, low quality, jpeg artifacts, "
                "deformed, extra fingers, still picture, cluttered background")
WAN_PROMPT = "a fox running through fresh snow in a winter forest, morning light, tracking camera"


def wan21(size: str) -> Template:
    p = f"wan2.1_t2v_{size}"
    steps = preset_steps(p)
    unet = "wan2.1_t2v_1.3B_fp16.safetensors" if size == "1.3B" else "wan2.1_t2v_14B_fp8_scaled.safetensors"
    frames = 33 if size == "1.3B" else 81
    text = (f"Wan 2.1 T2V {size} with MagCache, preset '{p}' at the authors' settings and the {steps} steps its "
            "curve was recorded at (CFG 6, shift 8). For output closer to the uncached one lower the threshold. "
            + bypass_hint())
    nodes = [
        N(1, "UNETLoader", [unet, "default"], (0, 0)),
        N(2, "MagCacheApply", magcache_widgets(p), (380, 0), {"model": (1, 0)}, color=CACHE_COLOR),
        N(3, "ModelSamplingSD3", [8.0], (820, 0), {"model": (2, 0)}),
        N(4, "CLIPLoader", ["umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan", "default"], (0, 160)),
        N(5, "CLIPTextEncode", [WAN_PROMPT], (380, 300), {"clip": (4, 0)}, title="CLIP Text Encode (Positive Prompt)",
          color=POSITIVE_COLOR),
        N(6, "CLIPTextEncode", [WAN_NEGATIVE], (380, 560), {"clip": (4, 0)}, title="CLIP Text Encode (Negative Prompt)",
          color=NEGATIVE_COLOR),
        N(7, "EmptyHunyuanLatentVideo", [832, 480, frames, 1], (0, 360)),
        N(8, "KSampler", [SEED, "fixed", steps, 6.0, "uni_pc", "simple", 1.0], (1180, 0),
          {"model": (3, 0), "positive": (5, 0), "negative": (6, 0), "latent_image": (7, 0)}),
        N(9, "VAELoader", ["wan_2.1_vae.safetensors"], (820, 300)),
        N(10, "VAEDecode", [], (1540, 0), {"samples": (8, 0), "vae": (9, 0)}),
        N(11, "SaveAnimatedWEBP", [f"magcache_wan21_{size}", 16.0, False, 90, "default"], (1800, 0), {"images": (10, 0)}),
        note(text, (0, 560), 12),
    ]
    return Template(f"Wan 2.1 T2V {size} with MagCache", HERE, nodes, magcache_thumb(f"Wan 2.1 T2V {size}", p))


def wan22() -> Template:
    p = "wan2.2_t2v_14B"
    steps = preset_steps(p)
    half = steps // 2
    text = (f"Wan 2.2 T2V 14B: the high-noise model samples steps 0-{half - 1} and the low-noise model steps "
            f"{half}-{steps - 1} of one {steps}-step schedule (two KSampler Advanced). Each model has its own "
            f"MagCache Apply with preset '{p}'; each reads its own part of the curve, and the low-noise model "
            "computes its first step (it has nothing cached yet). Bypass both MagCache Apply nodes for the "
            "uncached video.")
    nodes = [
        N(1, "UNETLoader", ["wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors", "default"], (0, 0),
          title="Load Diffusion Model (high noise)"),
        N(2, "MagCacheApply", magcache_widgets(p), (380, 0), {"model": (1, 0)}, color=CACHE_COLOR,
          title="MagCache Apply (high noise)"),
        N(3, "ModelSamplingSD3", [8.0], (820, 0), {"model": (2, 0)}),
        N(4, "UNETLoader", ["wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors", "default"], (0, 300),
          title="Load Diffusion Model (low noise)"),
        N(5, "MagCacheApply", magcache_widgets(p), (380, 300), {"model": (4, 0)}, color=CACHE_COLOR,
          title="MagCache Apply (low noise)"),
        N(6, "ModelSamplingSD3", [8.0], (820, 300), {"model": (5, 0)}),
        N(7, "CLIPLoader", ["umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan", "default"], (0, 600)),
        N(8, "CLIPTextEncode", [WAN_PROMPT], (380, 600), {"clip": (7, 0)}, title="CLIP Text Encode (Positive Prompt)",
          color=POSITIVE_COLOR),
        N(9, "CLIPTextEncode", [WAN_NEGATIVE], (380, 860), {"clip": (7, 0)}, title="CLIP Text Encode (Negative Prompt)",
          color=NEGATIVE_COLOR),
        N(10, "EmptyHunyuanLatentVideo", [832, 480, 81, 1], (0, 760)),
        N(11, "KSamplerAdvanced", ["enable", SEED, "fixed", steps, 3.5, "euler", "simple", 0, half, "enable"],
          (1180, 0), {"model": (3, 0), "positive": (8, 0), "negative": (9, 0), "latent_image": (10, 0)},
          title="KSampler (Advanced, high noise)"),
        N(12, "KSamplerAdvanced", ["disable", 0, "fixed", steps, 3.5, "euler", "simple", half, 10000, "disable"],
          (1540, 0), {"model": (6, 0), "positive": (8, 0), "negative": (9, 0), "latent_image": (11, 0)},
          title="KSampler (Advanced, low noise)"),
        N(13, "VAELoader", ["wan_2.1_vae.safetensors"], (1180, 460)),
        N(14, "VAEDecode", [], (1900, 0), {"samples": (12, 0), "vae": (13, 0)}),
        N(15, "SaveAnimatedWEBP", ["magcache_wan22", 16.0, False, 90, "default"], (2160, 0), {"images": (14, 0)}),
        note(text, (820, 600), 16),
    ]
    return Template("Wan 2.2 T2V 14B with MagCache", HERE, nodes,
                    magcache_thumb("Wan 2.2 T2V 14B", p, [(0, half), (half, steps)], ["high noise", "low noise"]))


def qwen_image() -> Template:
    p = "qwen_image"
    steps = preset_steps(p)
    text = (f"Qwen-Image with MagCache, preset '{p}' at the authors' settings and the {steps} steps its curve "
            "was recorded at (CFG 2.5, AuraFlow shift 3.1). " + bypass_hint())
    nodes = [
        N(1, "UNETLoader", ["qwen_image_fp8_e4m3fn.safetensors", "default"], (0, 0)),
        N(2, "MagCacheApply", magcache_widgets(p), (380, 0), {"model": (1, 0)}, color=CACHE_COLOR),
        N(3, "ModelSamplingAuraFlow", [3.1], (820, 0), {"model": (2, 0)}),
        N(4, "CLIPLoader", ["qwen_2.5_vl_7b_fp8_scaled.safetensors", "qwen_image", "default"], (0, 160)),
        N(5, "CLIPTextEncode", ['a neon-lit street market at night, a hand-painted sign that reads "MagCache", '
                                "rain reflections, photograph"], (380, 300), {"clip": (4, 0)},
          title="CLIP Text Encode (Positive Prompt)", color=POSITIVE_COLOR),
        N(6, "CLIPTextEncode", [""], (380, 560), {"clip": (4, 0)}, title="CLIP Text Encode (Negative Prompt)",
          color=NEGATIVE_COLOR),
        N(7, "EmptySD3LatentImage", [1328, 1328, 1], (0, 360)),
        N(8, "KSampler", [SEED, "fixed", steps, 2.5, "euler", "simple", 1.0], (1180, 0),
          {"model": (3, 0), "positive": (5, 0), "negative": (6, 0), "latent_image": (7, 0)}),
        N(9, "VAELoader", ["qwen_image_vae.safetensors"], (820, 300)),
        N(10, "VAEDecode", [], (1540, 0), {"samples": (8, 0), "vae": (9, 0)}),
        N(11, "SaveImage", ["magcache_qwen_image"], (1800, 0), {"images": (10, 0)}),
        note(text, (0, 560), 12),
    ]
    return Template("Qwen-Image with MagCache", HERE, nodes, magcache_thumb("Qwen-Image", p))


def hunyuan_video() -> Template:
    p = "hunyuan_video"
    steps = preset_steps(p)
    text = (f"HunyuanVideo T2V with MagCache, preset '{p}' at the authors' settings and the {steps} steps its "
            "curve was recorded at (CFG 1, embedded guidance 6, shift 7). Lower the tile size of VAE Decode "
            "(Tiled) if decoding runs out of memory. " + bypass_hint())
    nodes = [
        N(1, "UNETLoader", ["hunyuan_video_t2v_720p_bf16.safetensors", "default"], (0, 0)),
        N(2, "MagCacheApply", magcache_widgets(p), (380, 0), {"model": (1, 0)}, color=CACHE_COLOR),
        N(3, "ModelSamplingSD3", [7.0], (820, 0), {"model": (2, 0)}),
        N(4, "DualCLIPLoader", ["clip_l.safetensors", "llava_llama3_fp8_scaled.safetensors", "hunyuan_video",
                                "default"], (0, 160)),
        N(5, "CLIPTextEncode", ["a red fox trotting through a snowy birch forest, soft morning light, cinematic"],
          (380, 300), {"clip": (4, 0)}, title="CLIP Text Encode (Positive Prompt)", color=POSITIVE_COLOR),
        N(6, "FluxGuidance", [6.0], (820, 300), {"conditioning": (5, 0)}),
        N(7, "CLIPTextEncode", [""], (380, 560), {"clip": (4, 0)}, title="CLIP Text Encode (Negative, unused at CFG 1)",
          color=NEGATIVE_COLOR),
        N(8, "EmptyHunyuanLatentVideo", [848, 480, 73, 1], (0, 360)),
        N(9, "KSampler", [SEED, "fixed", steps, 1.0, "euler", "simple", 1.0], (1180, 0),
          {"model": (3, 0), "positive": (6, 0), "negative": (7, 0), "latent_image": (8, 0)}),
        N(10, "VAELoader", ["hunyuan_video_vae_bf16.safetensors"], (820, 460)),
        N(11, "VAEDecodeTiled", [256, 64, 64, 8], (1540, 0), {"samples": (9, 0), "vae": (10, 0)}),
        N(12, "SaveAnimatedWEBP", ["magcache_hunyuan_video", 24.0, False, 90, "default"], (1800, 0),
          {"images": (11, 0)}),
        note(text, (0, 560), 13),
    ]
    return Template("HunyuanVideo with MagCache", HERE, nodes, magcache_thumb("HunyuanVideo T2V", p))


def chroma() -> Template:
    p = "chroma"
    steps = preset_steps(p)
    text = (f"Chroma with MagCache, preset '{p}' at the authors' settings and the {steps} steps its curve was "
            "recorded at (CFG 3.5, beta scheduler). " + bypass_hint())
    nodes = [
        N(1, "UNETLoader", ["Chroma1-HD-fp8_scaled_rev2.safetensors", "default"], (0, 0)),
        N(2, "MagCacheApply", magcache_widgets(p), (380, 0), {"model": (1, 0)}, color=CACHE_COLOR),
        N(3, "ModelSamplingAuraFlow", [1.0], (820, 0), {"model": (2, 0)}),
        N(4, "CLIPLoader", ["t5xxl_fp8_e4m3fn_scaled.safetensors", "chroma", "default"], (0, 160)),
        N(5, "T5TokenizerOptions", [0, 0], (0, 300), {"clip": (4, 0)}),
        N(6, "CLIPTextEncode", ["a close-up photograph of a tiger's face in dappled jungle light, sharp fur detail"],
          (380, 300), {"clip": (5, 0)}, title="CLIP Text Encode (Positive Prompt)", color=POSITIVE_COLOR),
        N(7, "CLIPTextEncode", ["low quality, blurry, oversaturated, sketch, deformed"], (380, 560), {"clip": (5, 0)},
          title="CLIP Text Encode (Negative Prompt)", color=NEGATIVE_COLOR),
        N(8, "EmptySD3LatentImage", [1024, 1024, 1], (0, 440)),
        N(9, "KSampler", [SEED, "fixed", steps, 3.5, "euler", "beta", 1.0], (1180, 0),
          {"model": (3, 0), "positive": (6, 0), "negative": (7, 0), "latent_image": (8, 0)}),
        N(10, "VAELoader", ["ae.safetensors"], (820, 300)),
        N(11, "VAEDecode", [], (1540, 0), {"samples": (9, 0), "vae": (10, 0)}),
        N(12, "SaveImage", ["magcache_chroma"], (1800, 0), {"images": (11, 0)}),
        note(text, (0, 640), 13),
    ]
    return Template("Chroma with MagCache", HERE, nodes, magcache_thumb("Chroma", p))


def ltxv() -> Template:
    from comfyui_magcache.strategies import all_presets
    p = "ltxv"
    tea = all_presets("teacache")[p][1]
    steps = 30
    text = (f"LTX-Video with TeaCache (no MagCache curve has been published for it), preset '{p}' with its "
            f"published rel_l1_thresh {tea.params.rel_l1_thresh}. TeaCache decides while sampling, from how much "
            "the first block's input changed, which steps run the transformer blocks. Raise rel_l1_thresh for "
            "speed, lower it for fidelity. LTX-Video needs long, descriptive prompts. " + bypass_hint("TeaCache Apply"))
    nodes = [
        N(1, "CheckpointLoaderSimple", ["ltx-video-2b-v0.9.safetensors"], (0, 0)),
        N(2, "TeaCacheApply", [p, tea.params.rel_l1_thresh, tea.start_percent, 1.0, "main_device", 0, "off", "extrapolate", min_steps()], (380, 0),
          {"model": (1, 0)}, color=CACHE_COLOR),
        N(3, "CLIPLoader", ["t5xxl_fp16.safetensors", "ltxv", "default"], (0, 200)),
        N(4, "CLIPTextEncode", ["A red fox trots through deep fresh snow in a quiet birch forest at sunrise. Its breath "
                                "steams in the cold air, snow crystals sparkle in the low golden light, and the camera "
                                "tracks alongside at the fox's height as trees slide past in soft focus."],
          (380, 300), {"clip": (3, 0)}, title="CLIP Text Encode (Positive Prompt)", color=POSITIVE_COLOR),
        N(5, "CLIPTextEncode", ["low quality, worst quality, deformed, distorted, motion smear, motion artifacts, "
                                "blurry"], (380, 600), {"clip": (3, 0)}, title="CLIP Text Encode (Negative Prompt)",
          color=NEGATIVE_COLOR),
        N(6, "LTXVConditioning", [25.0], (820, 300), {"positive": (4, 0), "negative": (5, 0)}),
        N(7, "EmptyLTXVLatentVideo", [768, 512, 97, 1], (0, 360)),
        N(8, "LTXVScheduler", [steps, 2.05, 0.95, True, 0.1], (820, 460), {"latent": (7, 0)}),
        N(9, "KSamplerSelect", ["euler"], (820, 700)),
        N(10, "SamplerCustom", [True, SEED, "fixed", 3.0], (1180, 0),
          {"model": (2, 0), "positive": (6, 0), "negative": (6, 1), "sampler": (9, 0), "sigmas": (8, 0),
           "latent_image": (7, 0)}),
        N(11, "VAEDecode", [], (1540, 0), {"samples": (10, 0), "vae": (1, 2)}),
        N(12, "SaveAnimatedWEBP", ["teacache_ltxv", 24.0, False, 90, "default"], (1800, 0), {"images": (11, 0)}),
        note(text, (0, 560), 13, title="TeaCache"),
    ]
    thumb = {"kind": "teacache", "family": "LTX-Video", "preset": p, "steps": steps,
             "rel_l1_thresh": tea.params.rel_l1_thresh, "coefficients": list(tea.params.coefficients)}
    return Template("LTX-Video with TeaCache", HERE, nodes, thumb)


CALIBRATION_NAME = "wan2.1_1.3B_30steps"


def calibrate_and_reuse() -> Template:
    steps = 30
    text = ("Calibrate once, then reuse. Models without a published curve, or your own steps / sampler / shift: "
            "MagCache Calibrate records how much the transformer blocks' output changes from step to step in "
            "one normal run (nothing is skipped) and saves it in your ComfyUI user folder.\n"
            f"1. Run as it is: group 1 samples all {steps} steps and saves the calibration "
            f"'{CALIBRATION_NAME}'.\n"
            "2. Press R (refresh node definitions): MagCache Apply's preset list now holds "
            f"'calibration: {CALIBRATION_NAME}'.\n"
            "3. Mute group 1 and un-mute group 2 (select its nodes, Ctrl+M), then Run: MagCache Apply skips "
            "steps by your curve. Use the same step count, sampler and shift as the calibration run.\n"
            "This example is Wan 2.1 T2V 1.3B at 30 steps; swap in any model ComfyUI loads.")
    reuse = [9, 10, 11, 12, 13]
    nodes = [
        N(1, "UNETLoader", ["wan2.1_t2v_1.3B_fp16.safetensors", "default"], (0, 0)),
        N(2, "CLIPLoader", ["umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan", "default"], (0, 160)),
        N(3, "CLIPTextEncode", [WAN_PROMPT], (0, 300), {"clip": (2, 0)}, title="CLIP Text Encode (Positive Prompt)",
          color=POSITIVE_COLOR),
        N(4, "CLIPTextEncode", [WAN_NEGATIVE], (0, 560), {"clip": (2, 0)}, title="CLIP Text Encode (Negative Prompt)",
          color=NEGATIVE_COLOR),
        N(5, "EmptyHunyuanLatentVideo", [832, 480, 33, 1], (0, 820)),
        N(6, "VAELoader", ["wan_2.1_vae.safetensors"], (0, 1000)),
        # group 1: calibrate
        N(7, "MagCacheCalibrate", [CALIBRATION_NAME], (480, 40), {"model": (1, 0)}, color=CACHE_COLOR),
        N(8, "ModelSamplingSD3", [8.0], (880, 40), {"model": (7, 0)}),
        N(14, "KSampler", [SEED, "fixed", steps, 6.0, "uni_pc", "simple", 1.0], (1260, 40),
          {"model": (8, 0), "positive": (3, 0), "negative": (4, 0), "latent_image": (5, 0)},
          title="KSampler (calibration run)"),
        N(15, "VAEDecode", [], (1620, 40), {"samples": (14, 0), "vae": (6, 0)}),
        N(16, "SaveAnimatedWEBP", ["magcache_calibration_run", 16.0, False, 90, "default"], (1880, 40),
          {"images": (15, 0)}),
        # group 2: reuse (muted until the calibration exists)
        N(9, "MagCacheApply", [f"calibration: {CALIBRATION_NAME}", 0.12, 0.2, 4, 0.0, 1.0, "main_device", "off"] + MAG_VARIANTS + [min_steps()], (480, 480),
          {"model": (1, 0)}, color=CACHE_COLOR, mode=MUTED),
        N(10, "ModelSamplingSD3", [8.0], (880, 480), {"model": (9, 0)}, mode=MUTED),
        N(11, "KSampler", [SEED, "fixed", steps, 6.0, "uni_pc", "simple", 1.0], (1260, 480),
          {"model": (10, 0), "positive": (3, 0), "negative": (4, 0), "latent_image": (5, 0)},
          title="KSampler (MagCache)", mode=MUTED),
        N(12, "VAEDecode", [], (1620, 480), {"samples": (11, 0), "vae": (6, 0)}, mode=MUTED),
        N(13, "SaveAnimatedWEBP", ["magcache_calibrated", 16.0, False, 90, "default"], (1880, 480),
          {"images": (12, 0)}, mode=MUTED),
        note(text, (480, 900), 17, title="Calibrate, then reuse"),
    ]
    groups = [Group("1. Calibrate (run once)", (7, 8, 14, 15, 16), "#3f789e"),
              Group("2. Reuse the calibration (un-mute after step 1)", tuple(reuse), "#8A8")]
    thumb = {"kind": "calibration", "family": "Calibrate, then reuse", "example": "Wan 2.1 T2V 1.3B example",
             "name": CALIBRATION_NAME, "steps": steps}
    return Template("MagCache calibrate, then reuse", HERE, nodes, thumb, groups)


# -- graphs that need the demo package (tests, bench/demo.py) ----------------------------------------
def tiny_wan_demo() -> Template:
    p = "wan2.1_t2v_1.3B"
    nodes = [
        N(1, "UNETLoader", ["magcache_tiny_wan.safetensors", "default"], (0, 0)),
        N(2, "MagCacheApply", [p, 0.24, 0.2, 4, 0.0, 1.0, "main_device", "off"] + MAG_VARIANTS + [min_steps()], (380, 0), {"model": (1, 0)},
          color=CACHE_COLOR),
        N(3, "MagCacheDemoConditioning", ["a red fox running through fresh snow, winter forest, morning light"], (0, 160),
          title="Positive (demo conditioning)", color=POSITIVE_COLOR),
        N(4, "MagCacheDemoConditioning", ["blurry, low quality, static"], (0, 340),
          title="Negative (demo conditioning)", color=NEGATIVE_COLOR),
        N(5, "EmptyHunyuanLatentVideo", [64, 64, 1, 1], (0, 520)),
        N(6, "KSampler", [SEED, "fixed", 20, 5.0, "euler", "simple", 1.0], (780, 0),
          {"model": (2, 0), "positive": (3, 0), "negative": (4, 0), "latent_image": (5, 0)}),
        N(7, "SaveLatent", ["magcache_demo"], (1140, 0), {"samples": (6, 0)}),
    ]
    thumb = {"kind": "magcache", "family": "Tiny random Wan 2.1 (tests)", "preset": p, "steps": 20,
             "ranges": [[0, 20]], "labels": [], "params": [0.24, 0.2, 4]}
    return Template("Tiny Wan test model with MagCache", DEMO_DIR, nodes, thumb)


REFERENCE_PROMPT = "a red circle"


def reference_ratios() -> dict:
    """The reference model's calibrated curves (demo/calibrate_reference.py), rounded for the widget."""
    doc = json.loads(REFERENCE_CALIBRATION.read_text())
    return {kind: [round(r, 4) for r in curve] for kind, curve in sorted(doc["mag_ratios"].items())}


def reference_shapes() -> Template:
    ratios = reference_ratios()
    steps = len(ratios["cond"])
    text = ("The pack's trained reference model: a small Wan 2.1 DiT that draws one coloured shape (weights in "
            "demo/models/, prompt and decode nodes from the test-only comfyui_magcache_demo package). The MagCache "
            "Ratios node holds the curve MagCacheCalibrate recorded on this model (demo/calibrate_reference.py, "
            f"{steps} steps, CFG 4), so the first Run needs no calibration; connected to 'ratios' it overrides the "
            "preset. Bypass MagCache Apply (Ctrl+B) for the uncached image. bench/demo.py compares uncached, "
            "MagCache and TeaCache over HTTP.")
    nodes = [
        N(1, "UNETLoader", ["magcache_shapes_wan.safetensors", "default"], (0, 0)),
        N(2, "MagCacheApply", ["auto", 0.04, 0.1, 2, 0.0, 1.0, "main_device", "off"] + MAG_VARIANTS + [min_steps()], (400, 0),
          {"model": (1, 0), "ratios": (10, 0)}, color=CACHE_COLOR),
        N(10, "MagCacheRatios", [json.dumps(ratios, separators=(", ", ": "))], (0, 120),
          title="MagCache Ratios (reference model, 20 steps)", color=CACHE_COLOR),
        N(3, "MagCacheShapesPrompt", [REFERENCE_PROMPT], (0, 400), title="Positive (reference model prompt)",
          color=POSITIVE_COLOR),
        N(4, "MagCacheShapesPrompt", [""], (0, 520), title="Negative (empty = unconditional)", color=NEGATIVE_COLOR),
        N(5, "EmptyHunyuanLatentVideo", [128, 128, 1, 1], (0, 640)),
        N(6, "KSampler", [SEED, "fixed", steps, 4.0, "euler", "simple", 1.0], (780, 0),
          {"model": (2, 0), "positive": (3, 0), "negative": (4, 0), "latent_image": (5, 0)}),
        N(7, "MagCacheShapesDecode", [4], (1140, 0), {"samples": (6, 0)}),
        N(8, "SaveImage", ["magcache_shapes"], (1440, 0), {"images": (7, 0)}),
        note(text, (400, 320), 9, title="Reference model"),
    ]
    thumb = {"kind": "reference", "family": "Reference model (shapes)", "prompt": REFERENCE_PROMPT, "seed": SEED,
             "steps": steps, "cfg": 4.0, "params": [0.04, 0.1, 2], "ratios": ratios}
    return Template("Reference model with MagCache", DEMO_DIR, nodes, thumb)


def templates() -> list[Template]:
    pack()
    return [flux_dev(), flux_kontext(), wan21("1.3B"), wan21("14B"), wan22(), qwen_image(), hunyuan_video(),
            chroma(), ltxv(), calibrate_and_reuse(), tiny_wan_demo(), reference_shapes()]


# -- the front end's format ----------------------------------------------------------------------------
def _outputs(typ: str) -> list[tuple[str, str]]:
    return [o if isinstance(o, tuple) else (o, o) for o in SOCKETS[typ][1]]


def _size(n: N) -> list[int]:
    ins, outs = SOCKETS[n.type]
    long_text = any(isinstance(w, str) and len(w) > 40 for w in n.widgets)
    height = 26 + 22 * max(len(ins), len(outs), 0) + 26 * len(n.widgets) + (100 if long_text else 0)
    return [400 if long_text else 315, max(height, 58)]


def _order(nodes: list[N]) -> dict[int, int]:
    """Execution order the front end stores: a topological order, sources first, ties by id."""
    done: dict[int, int] = {}
    pending = sorted(nodes, key=lambda n: n.id)
    while pending:
        ready = [n for n in pending if all(src in done for src, _ in n.inputs.values())]
        if not ready:
            raise ValueError("cycle in workflow")
        for n in ready:
            done[n.id] = len(done)
        pending = [n for n in pending if n.id not in done]
    return done


def build(t: Template) -> dict:
    nodes = t.nodes
    by_id = {n.id: n for n in nodes}
    if len(by_id) != len(nodes):
        raise ValueError(f"{t.title}: duplicate node ids")
    order = _order(nodes)
    links, out_links, in_links = [], {}, {}
    for n in sorted(nodes, key=lambda n: order[n.id]):
        sockets = [s[0] for s in SOCKETS[n.type][0]]
        for sock, (src, slot) in n.inputs.items():
            typ = _outputs(by_id[src].type)[slot][1]
            link_id = len(links) + 1
            links.append([link_id, src, slot, n.id, sockets.index(sock), typ])
            out_links.setdefault((src, slot), []).append(link_id)
            in_links[(n.id, sock)] = link_id
    ui_nodes, sizes = [], {}
    for n in nodes:
        ins = SOCKETS[n.type][0]
        sizes[n.id] = _size(n)
        node = {
            "id": n.id, "type": n.type, "pos": list(n.pos), "size": sizes[n.id], "flags": {}, "order": order[n.id],
            "mode": n.mode,
            "inputs": [{"name": s, "type": typ, **({"shape": 7} if opt else {}), "link": in_links.get((n.id, s))}
                       for s, typ, opt in ins],
            "outputs": [{"name": name, "type": typ, "slot_index": i, "links": out_links.get((n.id, i), [])}
                        for i, (name, typ) in enumerate(_outputs(n.type))],
            "properties": {} if n.type == "Note" else {"Node name for S&R": n.type},
            "widgets_values": list(n.widgets),
        }
        models = [{"name": w, "url": MODELS[w][0], "directory": MODELS[w][1]} for w in n.widgets if w in MODELS]
        if models:
            node["properties"]["models"] = models
        if n.title:
            node["title"] = n.title
        if n.color:
            node["color"], node["bgcolor"] = n.color
        ui_nodes.append(node)
    groups = []
    for g in t.groups:
        x0 = min(by_id[i].pos[0] for i in g.nodes) - 20
        y0 = min(by_id[i].pos[1] for i in g.nodes) - 60
        x1 = max(by_id[i].pos[0] + sizes[i][0] for i in g.nodes) + 20
        y1 = max(by_id[i].pos[1] + sizes[i][1] for i in g.nodes) + 20
        groups.append({"id": len(groups) + 1, "title": g.title, "bounding": [x0, y0, x1 - x0, y1 - y0],
                       "color": g.color, "font_size": 24, "flags": {}})
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "comfyui-magcache/workflows/" + t.title)),
        "revision": 0,
        "last_node_id": max(n.id for n in nodes),
        "last_link_id": len(links),
        "nodes": ui_nodes,
        "links": links,
        "groups": groups,
        "config": {},
        "extra": {"ds": {"scale": 0.8, "offset": [40, 80]}},
        "version": 0.4,
    }


def render(t: Template) -> str:
    return json.dumps(build(t), indent=2, ensure_ascii=False) + "\n"


def paths(t: Template) -> tuple[Path, Path]:
    """(workflow, thumbnail) file of ``t``."""
    return t.folder / f"{t.title}.json", t.folder / f"{t.title}.jpg"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the files on disk instead of writing")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))
    import thumbnails

    stale = []
    for t in templates():
        wf_path, jpg_path = paths(t)
        text = render(t)
        if args.check:
            if not wf_path.is_file() or wf_path.read_text() != text:
                stale.append(wf_path.name)
            if thumbnails.stored_spec(jpg_path) != thumbnails.spec(t):
                stale.append(jpg_path.name)
        else:
            wf_path.parent.mkdir(parents=True, exist_ok=True)
            wf_path.write_text(text)
            thumbnails.write(t, build(t), jpg_path)
            print("wrote", wf_path.relative_to(ROOT), "and its .jpg")
    if stale:
        print("out of date (run example_workflows/build_workflows.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
