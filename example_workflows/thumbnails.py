"""Thumbnails for the workflow templates (``<title>.jpg`` beside each ``<title>.json``), drawn with PIL.

Each shows the template's graph as a minimap (the cache node highlighted) and what the pack does with
it: for a MagCache preset, the preset's ratio curve and the strip of steps that run the transformer
blocks at the template's settings, from the pack's own rule (``magcache_core.MagCacheRule``, stepped
as a sampling run steps it: a model that starts at a later step of the schedule computes that step);
for the reference model, its actual samples, uncached and with MagCache. What is drawn (the spec) is
kept as JSON in the JPEG's comment, so that a check can tell a stale thumbnail without re-encoding.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SIZE = 512
BG, PANEL, TEXT, DIM = (24, 25, 31), (36, 38, 46), (235, 236, 240), (150, 153, 165)
ACCENT, ACCENT2, SKIP, MUTED_FILL = (92, 156, 255), (255, 170, 70), (58, 60, 72), (44, 46, 54)
LINK_COLORS = {"MODEL": (180, 140, 255), "CLIP": (255, 220, 90), "CONDITIONING": (255, 160, 90),
               "LATENT": (255, 120, 160), "VAE": (255, 90, 90), "IMAGE": (100, 180, 255),
               "MAGCACHE_RATIOS": ACCENT, "SIGMAS": (120, 220, 160), "SAMPLER": (120, 220, 160)}
CACHE_TYPES = {"MagCacheApply", "MagCacheCalibrate", "TeaCacheApply", "MagCacheRatios"}
SHORT = {"UNETLoader": "Load Model", "CheckpointLoaderSimple": "Load Checkpoint", "MagCacheApply": "MagCache",
         "MagCacheCalibrate": "Calibrate", "MagCacheRatios": "Ratios", "TeaCacheApply": "TeaCache",
         "CLIPLoader": "Text Encoder", "DualCLIPLoader": "Text Encoders", "CLIPTextEncode": "Prompt",
         "KSampler": "KSampler", "KSamplerAdvanced": "KSampler Adv.", "SamplerCustom": "Sampler",
         "VAELoader": "VAE", "VAEDecode": "Decode", "VAEDecodeTiled": "Decode", "VAEEncode": "Encode",
         "SaveImage": "Save", "SaveAnimatedWEBP": "Save", "SaveLatent": "Save", "Note": "Note",
         "ModelSamplingSD3": "Shift", "ModelSamplingAuraFlow": "Shift", "EmptySD3LatentImage": "Latent",
         "EmptyHunyuanLatentVideo": "Latent", "EmptyLTXVLatentVideo": "Latent", "LoadImage": "Image",
         "FluxGuidance": "Guidance", "MagCacheShapesPrompt": "Prompt", "MagCacheShapesDecode": "Decode",
         "MagCacheDemoConditioning": "Prompt"}


def font(size: int):
    return ImageFont.load_default(size=size)


# -- what is drawn ------------------------------------------------------------------------------------
def planned_steps(params, curves, num_steps: int, kinds, ranges) -> list[list[int]]:
    """Per sampler (a step range of one ``num_steps`` schedule), the steps that run the blocks."""
    from comfyui_magcache.magcache_core import MagCacheRule
    out = []
    for first, last in ranges:
        rule = MagCacheRule(params, lambda k: curves.for_steps(k, num_steps), num_steps)
        computed = []
        for step in range(first, last):
            skip = rule.decide(step, kinds)
            if skip and step == first:         # nothing cached yet in this run: it computes
                rule.reset()
                skip = False
            if not skip:
                computed.append(step)
        out.append(computed)
    return out


def _magcache_setup(thumb: dict):
    """(params, curves, kinds) of a MagCache thumbnail."""
    from comfyui_magcache.magcache_core import COND, UNCOND, MagCacheParams, RatioCurves
    from comfyui_magcache.strategies import all_presets
    if thumb["kind"] == "reference":
        curves = RatioCurves.from_json(thumb["ratios"])
        params = MagCacheParams(*thumb["params"])
    else:
        preset = all_presets()[thumb["preset"]][1]
        curves = preset.curves
        params = MagCacheParams(*thumb["params"]) if "params" in thumb else preset.params
    kinds = (COND, UNCOND) if UNCOND in curves.per_kind else (COND,)
    return params, curves, kinds


def spec(t) -> dict:
    """What the thumbnail of template ``t`` shows, as JSON-able data (kept in the JPEG's comment)."""
    thumb = dict(t.thumbnail)
    out = {"title": t.title, **thumb}
    if thumb["kind"] in ("magcache", "reference"):
        params, curves, kinds = _magcache_setup(thumb)
        ranges = thumb.get("ranges", [[0, thumb["steps"]]])
        out["params"] = [params.threshold, params.retention_ratio, params.max_skips]
        out["computed"] = planned_steps(params, curves, thumb["steps"], kinds, ranges)
    return out


def stored_spec(path: Path) -> dict | None:
    if not path.is_file():
        return None
    with Image.open(path) as im:
        comment = im.info.get("comment")
    return json.loads(comment) if comment else None


# -- drawing --------------------------------------------------------------------------------------------
def write(t, workflow: dict, path: Path) -> None:
    s = spec(t)
    img = Image.new("RGB", (SIZE, SIZE), BG)
    d = ImageDraw.Draw(img)
    d.text((16, 12), s["family"], font=font(28 if len(s["family"]) < 24 else 22), fill=TEXT)
    method = {"teacache": "TeaCache", "calibration": "MagCache Calibrate + Apply"}.get(s["kind"], "MagCache")
    sub = {"magcache": f"{method} · preset {s.get('preset', '')}", "reference": f"{method} · calibrated curve",
           "teacache": f"{method} · preset {s.get('preset', '')}", "calibration": f"{method} · {s.get('example', '')}"}[s["kind"]]
    d.text((16, 50), sub, font=font(17), fill=ACCENT)
    if s["kind"] == "reference":
        _reference_samples(img, d, s, (16, 84, SIZE - 16, 300))
    else:
        _minimap(d, workflow, (16, 84, SIZE - 16, 292))
    if s["kind"] in ("magcache", "reference"):
        params, curves, kinds = _magcache_setup(s)
        _curve(d, curves, kinds, s["steps"], s["computed"], (16, 304, SIZE - 16, 404))
        _strip(d, s["steps"], s["ranges"] if "ranges" in s else [[0, s["steps"]]], s["computed"],
               s.get("labels", []), (16, 418, SIZE - 16, 452))
        n = sum(len(c) for c in s["computed"])
        thr, ret, k = s["params"]
        d.text((16, 466), f"{n} of {s['steps']} steps run the transformer blocks ({s['steps'] / n:.1f}x fewer)",
               font=font(16), fill=TEXT)
        d.text((16, 488), f"threshold {thr} · retention {ret} · K {k} (the pack's rule)", font=font(14), fill=DIM)
    elif s["kind"] == "teacache":
        _text_block(d, ["TeaCache skips a step while the accumulated change of the",
                        "first block's modulated input, rescaled by the preset's",
                        f"polynomial, stays below rel_l1_thresh {s['rel_l1_thresh']}."], (16, 310))
        _strip(d, s["steps"], [[0, s["steps"]]], None, [], (16, 418, SIZE - 16, 452))
        d.text((16, 466), f"{s['steps']} steps, decided while sampling", font=font(16), fill=TEXT)
        d.text((16, 488), "computed steps depend on the model's inputs", font=font(14), fill=DIM)
    else:   # calibration
        _text_block(d, ["Run 1: MagCache Calibrate computes every step and saves",
                        f"the curve as '{s['name']}'.",
                        f"Run 2: MagCache Apply, preset 'calibration: {s['name']}',",
                        "skips steps by your own curve."], (16, 304))
        _strip(d, s["steps"], [[0, s["steps"]]], [list(range(s["steps"]))], ["run 1: all computed"],
               (16, 396, SIZE - 16, 420), color=ACCENT2)
        _strip(d, s["steps"], [[0, s["steps"]]], None, ["run 2: by your curve"], (16, 446, SIZE - 16, 470))
    img.save(path, "JPEG", quality=90, comment=json.dumps(s, sort_keys=True).encode())


def _text_block(d, lines, xy):
    x, y = xy
    for line in lines:
        d.text((x, y), line, font=font(15), fill=DIM)
        y += 21


def _minimap(d, wf: dict, box) -> None:
    x0, y0, x1, y1 = box
    d.rounded_rectangle(box, 8, fill=PANEL)
    nodes = {n["id"]: n for n in wf["nodes"]}
    rects = [(n["pos"][0], n["pos"][1], n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1]) for n in nodes.values()]
    rects += [(g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2],
               g["bounding"][1] + g["bounding"][3]) for g in wf.get("groups", [])]
    gx0, gy0 = min(r[0] for r in rects), min(r[1] for r in rects)
    gx1, gy1 = max(r[2] for r in rects), max(r[3] for r in rects)
    pad = 10
    scale = min((x1 - x0 - 2 * pad) / (gx1 - gx0), (y1 - y0 - 2 * pad) / (gy1 - gy0))
    ox = x0 + pad + ((x1 - x0 - 2 * pad) - (gx1 - gx0) * scale) / 2
    oy = y0 + pad + ((y1 - y0 - 2 * pad) - (gy1 - gy0) * scale) / 2

    def at(x, y):
        return ox + (x - gx0) * scale, oy + (y - gy0) * scale

    for g in wf.get("groups", []):
        bx, by, bw, bh = g["bounding"]
        d.rectangle((*at(bx, by), *at(bx + bw, by + bh)), outline=DIM, width=1)
    for _, src, slot, dst, dslot, typ in wf["links"]:
        s, t = nodes[src], nodes[dst]
        a = at(s["pos"][0] + s["size"][0], s["pos"][1] + 14 + 22 * slot)
        b = at(t["pos"][0], t["pos"][1] + 14 + 22 * dslot)
        color = LINK_COLORS.get(typ, DIM)
        if s.get("mode") == 2 or t.get("mode") == 2:
            color = tuple(c // 2 for c in color)
        mid = (a[0] + b[0]) / 2
        pts = [_bezier(a, (mid, a[1]), (mid, b[1]), b, i / 16) for i in range(17)]
        d.line(pts, fill=color, width=2)
    small = font(max(9, min(13, int(110 * scale))))
    for n in nodes.values():
        r = (*at(*n["pos"]), *at(n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1]))
        muted = n.get("mode") == 2
        if n["type"] == "Note":
            fill, outline = (70, 60, 40), None
        elif n["type"] in CACHE_TYPES:
            fill, outline = (ACCENT if not muted else (50, 80, 130)), TEXT
        else:
            fill, outline = (MUTED_FILL if muted else (72, 75, 88)), None
        d.rounded_rectangle(r, 3, fill=fill, outline=outline)
        label = SHORT.get(n["type"], n["type"])
        if d.textlength(label, font=small) < r[2] - r[0] - 4 and r[3] - r[1] > 12:
            d.text((r[0] + 3, r[1] + 2), label, font=small, fill=BG if n["type"] in CACHE_TYPES and not muted else TEXT)


def _bezier(p0, p1, p2, p3, t):
    u = 1 - t
    return (u ** 3 * p0[0] + 3 * u * u * t * p1[0] + 3 * u * t * t * p2[0] + t ** 3 * p3[0],
            u ** 3 * p0[1] + 3 * u * u * t * p1[1] + 3 * u * t * t * p2[1] + t ** 3 * p3[1])


def _curve(d, curves, kinds, steps: int, computed, box) -> None:
    """The ratio curve(s) at ``steps`` steps; computed steps marked on the first curve."""
    x0, y0, x1, y1 = box
    d.rounded_rectangle(box, 8, fill=PANEL)
    series = [curves.for_steps(k, steps) for k in kinds]
    lo = min(min(c) for c in series)
    hi = max(max(c) for c in series)
    lo, hi = min(lo, 1.0) - 0.01, max(hi, 1.0) + 0.01
    px0, px1, py0, py1 = x0 + 8, x1 - 8, y0 + 20, y1 - 8

    def at(i, v):
        return px0 + (px1 - px0) * i / max(steps - 1, 1), py1 - (py1 - py0) * (v - lo) / (hi - lo)

    d.line([at(0, 1.0), at(steps - 1, 1.0)], fill=(70, 72, 84), width=1)
    for j, c in enumerate(reversed(series)):
        d.line([at(i, v) for i, v in enumerate(c)], fill=DIM if j < len(series) - 1 else TEXT, width=2)
    done = {s for run in computed for s in run}
    for i, v in enumerate(series[0]):
        if i in done:
            x, y = at(i, v)
            d.ellipse((x - 3, y - 3, x + 3, y + 3), fill=ACCENT)
    d.text((x0 + 8, y0 + 3), "magnitude ratio per step" + (" (cond, uncond)" if len(series) > 1 else ""),
           font=font(12), fill=DIM)


def _strip(d, steps: int, ranges, computed, labels, box, color=ACCENT) -> None:
    """One cell per step: filled = the blocks run, dark = skipped, hatched = not known before sampling."""
    x0, y0, x1, y1 = box
    w = (x1 - x0) / steps
    done = None if computed is None else {s for run in computed for s in run}
    colors = [color, ACCENT2]
    for r, (first, last) in enumerate(ranges):
        for s in range(first, last):
            cell = (x0 + s * w + 1, y0, x0 + (s + 1) * w - 1, y1)
            if done is None:
                d.rectangle(cell, fill=SKIP)
                d.line([(cell[0], cell[3]), (cell[2], cell[1])], fill=DIM, width=1)
            elif s in done:
                d.rectangle(cell, fill=colors[r % 2] if len(ranges) > 1 else color)
            else:
                d.rectangle(cell, fill=SKIP)
        if r < len(labels) and labels[r]:
            d.text((x0 + first * w + 2, y1 + 1), labels[r], font=font(11), fill=DIM)


def _reference_samples(img, d, s, box) -> None:
    """The reference model's image for the template's prompt and seed: uncached and with MagCache."""
    import numpy as np
    from comfyui_magcache.magcache_core import RatioCurves
    from comfyui_magcache.nodes.magcache_nodes import MagCacheApply
    from comfyui_magcache_demo import reference

    x0, y0, x1, y1 = box
    d.rounded_rectangle(box, 8, fill=PANEL)
    model = reference.load()
    thr, ret, k = s["params"]
    patched = MagCacheApply().apply(model, "auto", thr, ret, k, ratios=RatioCurves.from_json(s["ratios"]))[0]
    images = {}
    for name, m in (("uncached", model), ("MagCache", patched)):
        images[name] = reference.decode(reference.sample(m, s["prompt"], s["seed"], s["steps"], s["cfg"]))[0]
    mse = float(((images["uncached"] - images["MagCache"]) ** 2).mean())
    psnr = math.inf if mse == 0 else 10 * math.log10(1 / mse)
    side = 150
    n = sum(len(c) for c in s["computed"])
    for i, (name, image) in enumerate(images.items()):
        a = (image.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        x = x0 + 40 + i * (side + 90)
        img.paste(Image.fromarray(a).resize((side, side), Image.NEAREST), (x, y0 + 10))
        label = f"uncached, {s['steps']} steps" if i == 0 else f"MagCache, {n} steps, {psnr:.1f} dB"
        d.text((x, y0 + side + 16), label, font=font(13), fill=TEXT)
    d.text((x0 + 40, y0 + side + 38), f"\"{s['prompt']}\", seed {s['seed']}, CFG {s['cfg']}", font=font(12), fill=DIM)
