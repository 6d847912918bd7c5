"""Writes the example workflows (ComfyUI front-end format, version 0.4) from the compact specs below.

    python example_workflows/build_workflows.py           # (re)write the .json files next to this script
    python example_workflows/build_workflows.py --check   # exit 1 if a committed file differs

Each node is ``N(id, type, widgets, pos, inputs={socket: (source id, output slot)})``; widgets are in
the order of the node's widget inputs in /object_info (a seed widget is followed by its
"control_after_generate" value). tests/test_server.py checks the results against a live server.
"""
from __future__ import annotations

import argparse
import json
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Socket (link) inputs and outputs of the node types used: (inputs [(name, type, optional)], outputs [type]).
SOCKETS = {
    "UNETLoader": ([], ["MODEL"]),
    "MagCacheApply": ([("model", "MODEL", False), ("ratios", "MAGCACHE_RATIOS", True)], ["MODEL"]),
    "MagCacheCalibrate": ([("model", "MODEL", False)], ["MODEL"]),
    "MagCacheDemoConditioning": ([], ["CONDITIONING"]),
    "MagCacheShapesPrompt": ([], ["CONDITIONING"]),
    "MagCacheShapesDecode": ([("samples", "LATENT", False)], ["IMAGE"]),
    "TeaCacheApply": ([("model", "MODEL", False)], ["MODEL"]),
    "ModelSamplingSD3": ([("model", "MODEL", False)], ["MODEL"]),
    "CLIPLoader": ([], ["CLIP"]),
    "DualCLIPLoader": ([], ["CLIP"]),
    "CLIPTextEncode": ([("clip", "CLIP", False)], ["CONDITIONING"]),
    "FluxGuidance": ([("conditioning", "CONDITIONING", False)], ["CONDITIONING"]),
    "EmptyHunyuanLatentVideo": ([], ["LATENT"]),
    "EmptySD3LatentImage": ([], ["LATENT"]),
    "KSampler": ([("model", "MODEL", False), ("positive", "CONDITIONING", False),
                  ("negative", "CONDITIONING", False), ("latent_image", "LATENT", False)], ["LATENT"]),
    "VAELoader": ([], ["VAE"]),
    "VAEDecode": ([("samples", "LATENT", False), ("vae", "VAE", False)], ["IMAGE"]),
    "SaveLatent": ([("samples", "LATENT", False)], []),
    "SaveImage": ([("images", "IMAGE", False)], []),
    "SaveAnimatedWEBP": ([("images", "IMAGE", False)], []),
    "Note": ([], []),
}

_HF_WAN = "https://huggingface.co/Comfy-Org/Wan_2.1_ComfyUI_repackaged/resolve/main/split_files"
MODELS = {   # where the front end offers to download a missing model from
    "wan2.1_t2v_1.3B_fp16.safetensors": (f"{_HF_WAN}/diffusion_models/wan2.1_t2v_1.3B_fp16.safetensors", "diffusion_models"),
    "umt5_xxl_fp8_e4m3fn_scaled.safetensors": (f"{_HF_WAN}/text_encoders/umt5_xxl_fp8_e4m3fn_scaled.safetensors", "text_encoders"),
    "wan_2.1_vae.safetensors": (f"{_HF_WAN}/vae/wan_2.1_vae.safetensors", "vae"),
    "flux1-dev.safetensors": ("https://huggingface.co/Comfy-Org/flux1-dev/resolve/main/flux1-dev.safetensors", "diffusion_models"),
    "clip_l.safetensors": ("https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors", "text_encoders"),
    "t5xxl_fp16.safetensors": ("https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors", "text_encoders"),
    "ae.safetensors": ("https://huggingface.co/Comfy-Org/Lumina_Image_2.0_Repackaged/resolve/main/split_files/vae/ae.safetensors", "vae"),
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


POSITIVE_COLOR, NEGATIVE_COLOR, NOTE_COLOR, CACHE_COLOR = ("#232", "#353"), ("#322", "#533"), ("#432", "#653"), ("#223", "#335")
SEED = 20251122

TINY_WAN_DEMO = [
    N(1, "UNETLoader", ["magcache_tiny_wan.safetensors", "default"], (0, 0)),
    N(2, "MagCacheApply", ["wan2.1_t2v_1.3B", 0.24, 0.2, 4, 0.0, 1.0, "main_device", "off"], (360, 0), {"model": (1, 0)},
      color=CACHE_COLOR),
    N(3, "MagCacheDemoConditioning", ["a red fox running through fresh snow, winter forest, morning light"], (0, 160),
      title="Positive (demo conditioning)", color=POSITIVE_COLOR),
    N(4, "MagCacheDemoConditioning", ["blurry, low quality, static"], (0, 340),
      title="Negative (demo conditioning)", color=NEGATIVE_COLOR),
    N(5, "EmptyHunyuanLatentVideo", [64, 64, 1, 1], (0, 520)),
    N(6, "KSampler", [SEED, "fixed", 20, 5.0, "euler", "simple", 1.0], (740, 0),
      {"model": (2, 0), "positive": (3, 0), "negative": (4, 0), "latent_image": (5, 0)}),
    N(7, "SaveLatent", ["magcache_demo"], (1100, 0), {"samples": (6, 0)}),
]

SHAPES_NOTE = ("The pack's trained reference model (a small Wan 2.1 DiT that draws coloured shapes; weights in "
               "demo/models/, nodes from the test-only comfyui_magcache_demo package). First run it once with "
               "MagCache Apply replaced by MagCache Calibrate (calibration_name 'shapes_demo', any seed): that "
               "saves the ratio curve (and a TeaCache fit) this MagCache Apply reads. Bypass MagCache Apply "
               "(Ctrl+B) for the uncached image. bench/demo.py does all of this over HTTP.")
REFERENCE_SHAPES = [
    N(1, "UNETLoader", ["magcache_shapes_wan.safetensors", "default"], (0, 0)),
    N(2, "MagCacheApply", ["calibration: shapes_demo", 0.04, 0.1, 2, 0.0, 1.0, "main_device", "off"], (360, 0),
      {"model": (1, 0)}, color=CACHE_COLOR),
    N(3, "MagCacheShapesPrompt", ["a red circle"], (0, 160), title="Positive (reference model prompt)",
      color=POSITIVE_COLOR),
    N(4, "MagCacheShapesPrompt", [""], (0, 300), title="Negative (empty = unconditional)", color=NEGATIVE_COLOR),
    N(5, "EmptyHunyuanLatentVideo", [128, 128, 1, 1], (0, 440)),
    N(6, "KSampler", [SEED, "fixed", 20, 4.0, "euler", "simple", 1.0], (740, 0),
      {"model": (2, 0), "positive": (3, 0), "negative": (4, 0), "latent_image": (5, 0)}),
    N(7, "MagCacheShapesDecode", [4], (1100, 0), {"samples": (6, 0)}),
    N(8, "SaveImage", ["magcache_shapes"], (1400, 0), {"images": (7, 0)}),
    N(9, "Note", [SHAPES_NOTE], (360, 300), title="Reference model", color=NOTE_COLOR),
]

WAN_NOTE = ("MagCache on Wan 2.1 T2V. Preset 'auto' picks the published ratio curve for the loaded "
            "checkpoint (1.3B or 14B). Threshold 0.24 / retention 0.2 / K 4 are the authors' defaults; "
            "lower the threshold (0.12) for output closer to the uncached one. Bypass the MagCache Apply "
            "node (Ctrl+B) to compare against the uncached run with the same seed.")
WAN21_T2V = [
    N(1, "UNETLoader", ["wan2.1_t2v_1.3B_fp16.safetensors", "default"], (0, 0)),
    N(2, "MagCacheApply", ["auto", 0.24, 0.2, 4, 0.0, 1.0, "main_device", "off"], (360, 0), {"model": (1, 0)}, color=CACHE_COLOR),
    N(3, "ModelSamplingSD3", [8.0], (740, 0), {"model": (2, 0)}),
    N(4, "CLIPLoader", ["umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan", "default"], (0, 160)),
    N(5, "CLIPTextEncode", ["a fox running through fresh snow in a winter forest, morning light, tracking camera"],
      (360, 300), {"clip": (4, 0)}, title="CLIP Text Encode (Positive Prompt)", color=POSITIVE_COLOR),
    N(6, "CLIPTextEncode", ["overexposed, static, blurry details, subtitles, worst quality, low quality, jpeg artifacts, "
                            "deformed, extra fingers, still picture, cluttered background"],
      (360, 520), {"clip": (4, 0)}, title="CLIP Text Encode (Negative Prompt)", color=NEGATIVE_COLOR),
    N(7, "EmptyHunyuanLatentVideo", [832, 480, 33, 1], (0, 340)),
    N(8, "KSampler", [SEED, "fixed", 30, 6.0, "uni_pc", "simple", 1.0], (1100, 0),
      {"model": (3, 0), "positive": (5, 0), "negative": (6, 0), "latent_image": (7, 0)}),
    N(9, "VAELoader", ["wan_2.1_vae.safetensors"], (740, 300)),
    N(10, "VAEDecode", [], (1460, 0), {"samples": (8, 0), "vae": (9, 0)}),
    N(11, "SaveAnimatedWEBP", ["magcache_wan21", 16.0, False, 90, "default"], (1700, 0), {"images": (10, 0)}),
    N(12, "Note", [WAN_NOTE], (0, 540), title="MagCache", color=NOTE_COLOR),
]

FLUX_NOTE = ("MagCache on FLUX.1-dev with the authors' settings: preset 'flux', threshold 0.24, retention 0.1, "
             "K 5, 28 steps: 8 of 28 steps run the transformer blocks ([0, 1, 3, 6, 10, 16, 22, 26]). Bypass the MagCache Apply node "
             "(Ctrl+B) to compare against the uncached image with the same seed.")
FLUX_DEV = [
    N(1, "UNETLoader", ["flux1-dev.safetensors", "default"], (0, 0)),
    N(2, "MagCacheApply", ["flux", 0.24, 0.1, 5, 0.0, 1.0, "main_device", "off"], (360, 0), {"model": (1, 0)}, color=CACHE_COLOR),
    N(3, "DualCLIPLoader", ["clip_l.safetensors", "t5xxl_fp16.safetensors", "flux", "default"], (0, 160)),
    N(4, "CLIPTextEncode", ["a cozy wooden cabin in a snowy forest at dusk, warm light in the windows, photograph"],
      (360, 300), {"clip": (3, 0)}, title="CLIP Text Encode (Positive Prompt)", color=POSITIVE_COLOR),
    N(5, "FluxGuidance", [3.5], (740, 300), {"conditioning": (4, 0)}),
    N(6, "CLIPTextEncode", [""], (360, 520), {"clip": (3, 0)}, title="CLIP Text Encode (Negative, unused at CFG 1)",
      color=NEGATIVE_COLOR),
    N(7, "EmptySD3LatentImage", [1024, 1024, 1], (0, 340)),
    N(8, "KSampler", [SEED, "fixed", 28, 1.0, "euler", "simple", 1.0], (1100, 0),
      {"model": (2, 0), "positive": (5, 0), "negative": (6, 0), "latent_image": (7, 0)}),
    N(9, "VAELoader", ["ae.safetensors"], (740, 520)),
    N(10, "VAEDecode", [], (1460, 0), {"samples": (8, 0), "vae": (9, 0)}),
    N(11, "SaveImage", ["magcache_flux"], (1700, 0), {"images": (10, 0)}),
    N(12, "Note", [FLUX_NOTE], (0, 520), title="MagCache", color=NOTE_COLOR),
]

WORKFLOWS = {
    "magcache_tiny_wan_demo.json": TINY_WAN_DEMO,
    "magcache_reference_shapes.json": REFERENCE_SHAPES,
    "magcache_wan21_t2v.json": WAN21_T2V,
    "magcache_flux_dev.json": FLUX_DEV,
}


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


def build(name: str, nodes: list[N]) -> dict:
    by_id = {n.id: n for n in nodes}
    order = _order(nodes)
    links, out_links, in_links = [], {}, {}
    for n in sorted(nodes, key=lambda n: order[n.id]):
        sockets = [s[0] for s in SOCKETS[n.type][0]]
        for sock, (src, slot) in n.inputs.items():
            typ = SOCKETS[by_id[src].type][1][slot]
            link_id = len(links) + 1
            links.append([link_id, src, slot, n.id, sockets.index(sock), typ])
            out_links.setdefault((src, slot), []).append(link_id)
            in_links[(n.id, sock)] = link_id
    ui_nodes = []
    for n in nodes:
        ins, outs = SOCKETS[n.type]
        node = {
            "id": n.id, "type": n.type, "pos": list(n.pos), "size": _size(n), "flags": {}, "order": order[n.id],
            "mode": 0,
            "inputs": [{"name": s, "type": t, **({"shape": 7} if opt else {}), "link": in_links.get((n.id, s))}
                       for s, t, opt in ins],
            "outputs": [{"name": t, "type": t, "slot_index": i, "links": out_links.get((n.id, i), [])}
                        for i, t in enumerate(outs)],
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
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "comfyui-magcache/example_workflows/" + name)),
        "revision": 0,
        "last_node_id": max(n.id for n in nodes),
        "last_link_id": len(links),
        "nodes": ui_nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 1.0, "offset": [40, 40]}},
        "version": 0.4,
    }


def render(name: str) -> str:
    return json.dumps(build(name, WORKFLOWS[name]), indent=2, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the files on disk instead of writing")
    args = ap.parse_args(argv)
    stale = []
    for name in WORKFLOWS:
        path, text = HERE / name, render(name)
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
            print("wrote", path)
    if stale:
        print("out of date (run build_workflows.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
