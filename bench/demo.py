"""The main job: the pack in a real ComfyUI server (CPU) on its trained reference model, uncached
vs MagCache vs TeaCache, queued over HTTP as the front end would queue
demo/comfyui_magcache_demo/example_workflows/Reference model with MagCache.json:

  1. calibrate      MagCacheCalibrate in MagCacheApply's place, one run ("a white ring", seed 999):
                    saves the ratio curve and a TeaCache fit as "shapes_demo"
  2. per prompt     (prompt i with seed i) uncached (MagCacheApply bypassed), MagCache (as the workflow is saved:
                    the curve in its MagCache Ratios node, the same calibration as step 1 made by
                    demo/calibrate_reference.py), TeaCache (TeaCacheApply, 'calibration: shapes_demo')

It prints, per run, the steps computed and skipped (the pack's log line), the prompt's wall time
(the server's execution_start -> execution_success timestamps) and PSNR / SSIM of the saved image
against the uncached one, and writes a side-by-side PNG and a JSON of the rows into bench/out/.

    python bench/demo.py [--workdir DIR] [--mag-threshold 0.06] [--tea-threshold 0.1] [--steps 20]

On a model this small (4.8 M parameters, 32x32 images) a step takes milliseconds on the CPU, so the
wall times include ComfyUI's per-prompt overhead; bench/quality.py measures speed and quality over
many samples.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import metrics  # noqa: E402
from comfy_server import BYPASSED, ComfyServer, edited, node_id, replaced, ui_to_api  # noqa: E402
from comfyui_magcache_demo.reference import MODEL_PATH  # noqa: E402

OUT = ROOT / "bench" / "out"
WORKFLOW = ROOT / "demo" / "comfyui_magcache_demo" / "example_workflows" / "Reference model with MagCache.json"
CALIBRATION = "shapes_demo"
PROMPTS = ["a red circle", "a blue triangle", "a yellow ring", "a green cross", "an orange square", "a magenta ring"]
SCALE = 4                                   # the workflow's decode upscale (nearest neighbour)


def load_image(path: Path) -> torch.Tensor:
    """A saved PNG as [H, W, 3] in [0, 1], at the model's 32x32 (the workflow enlarges by SCALE)."""
    a = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(a[::SCALE, ::SCALE].copy())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, help="keep the ComfyUI copy, outputs and log here (default: a temp dir)")
    ap.add_argument("--mag-threshold", type=float, default=None, help="MagCacheApply threshold (default: the workflow's)")
    ap.add_argument("--tea-threshold", type=float, default=0.1, help="TeaCacheApply rel_l1_thresh (default 0.1)")
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the workflow's)")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="magcache-demo-")
    workdir = args.workdir or Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"reference model: {MODEL_PATH}\nComfyUI work folder: {workdir}{' (removed at the end)' if tmp else ''}")
    try:
        rows, grid = run_all(workdir, args, t0)
    finally:
        if tmp is not None:
            tmp.cleanup()
    if rows is None:
        return 1

    print(f"\n{'prompt':18} {'run':10} {'computed':>9} {'skipped':>8} {'wall s':>7} {'PSNR dB':>8} {'SSIM':>7}")
    for r in rows:
        print(f"{r['prompt']:18} {r['run']:10} {r['computed']:>4}/{r['steps']:<4} {r['skipped']:>8} {r['wall_s']:>7.3f} "
              f"{r['psnr_db']:>8.2f} {r['ssim']:>7.4f}")
    print()
    for run in ("MagCache", "TeaCache"):
        sel = [r for r in rows if r["run"] == run]
        ref = [r for r in rows if r["run"] == "uncached"]
        print(f"{run}: mean {sum(r['computed'] for r in sel) / len(sel):.1f}/{sel[0]['steps']} steps computed "
              f"({sum(r['steps'] for r in sel) / sum(r['computed'] for r in sel):.2f}x fewer), mean PSNR "
              f"{sum(r['psnr_db'] for r in sel) / len(sel):.2f} dB, SSIM {sum(r['ssim'] for r in sel) / len(sel):.4f}, "
              f"wall {sum(r['wall_s'] for r in sel):.2f} s vs uncached {sum(r['wall_s'] for r in ref):.2f} s")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "reference_demo.json").write_text(json.dumps(rows, indent=1) + "\n")
    grid.save(OUT / "reference_demo.png")
    print(f"\nside by side: {OUT / 'reference_demo.png'}; rows: {OUT / 'reference_demo.json'} "
          f"(total {time.monotonic() - t0:.1f} s)")
    return 0


def run_all(workdir: Path, args, t0: float):
    """(rows, side-by-side image), or (None, None) after printing why a prompt failed."""
    with ComfyServer.start(workdir, models={"diffusion_models": [MODEL_PATH]}) as server:
        print(f"server up at {server.url} after {time.monotonic() - t0:.1f} s")
        workflow = json.loads(WORKFLOW.read_text())
        info = server.get("/object_info")
        cached = ui_to_api(workflow, info)
        if args.mag_threshold is not None:
            cached = edited(cached, "MagCacheApply", threshold=args.mag_threshold)
        if args.steps is not None:
            cached = edited(cached, "KSampler", steps=args.steps)
        bypassed = copy.deepcopy(workflow)
        next(n for n in bypassed["nodes"] if n["type"] == "MagCacheApply")["mode"] = BYPASSED
        uncached = ui_to_api(bypassed, info)
        if args.steps is not None:
            uncached = edited(uncached, "KSampler", steps=args.steps)
        mag = cached[node_id(cached, "MagCacheApply")]["inputs"]
        tea = replaced(cached, "MagCacheApply", "TeaCacheApply", preset=f"calibration: {CALIBRATION}",
                       rel_l1_thresh=args.tea_threshold, start_percent=0.0, end_percent=1.0, cache_device="main_device")
        prompt_nodes = [k for k, v in cached.items() if v["class_type"] == "MagCacheShapesPrompt"]
        positive = cached[node_id(cached, "KSampler")]["inputs"]["positive"][0]
        assert positive in prompt_nodes
        save = node_id(cached, "SaveImage")
        steps = cached[node_id(cached, "KSampler")]["inputs"]["steps"]

        def with_prompt(p: dict, text: str, prefix: str) -> dict:
            p = copy.deepcopy(p)
            p[positive]["inputs"]["text"] = text
            return edited(p, "SaveImage", filename_prefix=prefix)

        # Calibrate on a prompt and seed that are not shown below; the first prompt also loads the model.
        calib = replaced(cached, "MagCacheApply", "MagCacheCalibrate", calibration_name=CALIBRATION)
        calib = edited(with_prompt(calib, "a white ring", "calibration"), "KSampler", seed=999)
        result = server.run_prompt(calib)
        if not result.ok:
            print(json.dumps(result.history.get("status"), indent=1)[:4000], server.log_tail(), sep="\n")
            return None, None
        for line in result.log.splitlines():
            if "MagCacheCalibrate: saved" in line:
                print(line.strip()[line.find("MagCacheCalibrate"):])
        print(f"MagCache: threshold {mag['threshold']}, retention {mag['retention_ratio']}, K {mag['max_skip_steps']}; "
              f"TeaCache: rel_l1_thresh {args.tea_threshold}; {steps} steps, CFG 4")

        rows, tiles = [], []
        for i, text in enumerate(PROMPTS):
            images = {}
            for run, prompt in (("uncached", uncached), ("MagCache", cached), ("TeaCache", tea)):
                result = server.run_prompt(edited(with_prompt(prompt, text, f"demo_{i}_{run}"), "KSampler", seed=i))
                if not result.ok:
                    print(json.dumps(result.history.get("status"), indent=1)[:4000], server.log_tail(), sep="\n")
                    return None, None
                images[run] = load_image(server.output_path(result.output(save, "images")))
                summary = result.runs[0] if result.runs else None
                rows.append({"prompt": text, "run": run, "steps": steps,
                             "computed": summary["computed"] if summary else steps,
                             "computed_steps": summary["steps"] if summary else list(range(steps)),
                             "skipped": summary["skipped"] if summary else 0, "wall_s": round(result.wall_s, 4),
                             "psnr_db": metrics.psnr(images[run], images["uncached"])[0],
                             "ssim": round(metrics.ssim(images[run], images["uncached"])[0], 5)})
            tiles.append([images["uncached"], images["MagCache"], images["TeaCache"]])
    return rows, side_by_side(tiles, [r for r in rows if r["run"] != "uncached"])


def side_by_side(tiles, cached_rows, zoom: int = 4) -> Image.Image:
    """Rows of prompts; columns uncached | MagCache | TeaCache, each labelled with its PSNR."""
    side, pad, head = 32 * zoom, 6, 18
    img = Image.new("RGB", (3 * side + 4 * pad, len(tiles) * (side + head + pad) + head + pad), (24, 24, 24))
    draw = ImageDraw.Draw(img)
    for c, name in enumerate(("uncached", "MagCache", "TeaCache")):
        draw.text((pad + c * (side + pad), 4), name, fill=(230, 230, 230))
    for r, row in enumerate(tiles):
        y = head + pad + r * (side + head + pad)
        for c, tile in enumerate(row):
            x = pad + c * (side + pad)
            a = (tile.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
            img.paste(Image.fromarray(a).resize((side, side), Image.NEAREST), (x, y + head))
            if c:
                cr = cached_rows[2 * r + c - 1]
                label = f"{cr['computed']}/{cr['steps']}  {cr['psnr_db']:.1f} dB"
            else:
                label = PROMPTS[r]
            draw.text((x, y + 3), label, fill=(200, 200, 200))
    return img


if __name__ == "__main__":
    sys.exit(main())
