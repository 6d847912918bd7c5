"""The end-to-end demo: the pack in a real ComfyUI server (CPU), a tiny Wan 2.1 model, four runs of
example_workflows/magcache_tiny_wan_demo.json through POST /prompt:

  1. uncached             MagCacheApply bypassed (the reference)
  2. calibrate            MagCacheCalibrate in its place: records this model's ratio curve as "tiny_wan_demo"
  3. calibrated preset    MagCacheApply, preset "calibration: tiny_wan_demo"
  4. published preset     MagCacheApply, preset "wan2.1_t2v_1.3B" (as the workflow is saved)

and prints, per run, the steps computed / skipped (from the pack's log line), the prompt's wall time
(the server's execution_start -> execution_success timestamps) and how far its latent is from the
uncached one. Under a minute on two CPU cores, mostly ComfyUI start-up.

    python bench/demo.py [--workdir DIR] [--threshold 0.24]

The tiny model has random weights: it shows the mechanism and the bookkeeping, not speed-ups or
image quality (its steps take milliseconds, so wall times are dominated by per-prompt overhead).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from comfy_server import (BYPASSED, TINY_WAN_FILE, ComfyServer, edited, ensure_tiny_wan, latent_diff,  # noqa: E402
                          node_id, replaced, ui_to_api)

OUT = ROOT / "bench" / "out"
WORKFLOW = ROOT / "example_workflows" / "magcache_tiny_wan_demo.json"
CALIBRATION = "tiny_wan_demo"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, help="keep the ComfyUI copy, outputs and log here (default: a temp dir)")
    ap.add_argument("--threshold", type=float, default=None, help="MagCacheApply threshold (default: the workflow's)")
    args = ap.parse_args(argv)
    t0 = time.monotonic()

    tiny = ensure_tiny_wan(OUT / TINY_WAN_FILE)
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="magcache-demo-")
    workdir = args.workdir or Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"tiny Wan 2.1: {tiny}\nComfyUI work folder: {workdir}{' (removed at the end)' if tmp else ''}")
    try:
        rows = run_all(workdir, tiny, args.threshold, t0)
    finally:
        if tmp is not None:
            tmp.cleanup()
    if rows is None:
        return 1

    print(f"\n{'run':44} {'computed':>9} {'skipped':>8} {'wall s':>7} {'max |d|':>9} {'PSNR dB':>8}")
    for r in rows:
        print(f"{r['run']:44} {r['computed']:>4}/{r['steps']:<4} {r['skipped']:>8} {r['wall_s']:>7.3f} "
              f"{r['max_abs_diff']:>9.4g} {r['psnr_db']:>8.1f}")
    for r in rows:
        print(f"  {r['run']}: computed steps {r['computed_steps']}")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "demo_results.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"\n(differences are against the uncached latent; results in {OUT / 'demo_results.json'}; "
          f"total {time.monotonic() - t0:.1f} s)")
    return 0


def run_all(workdir: Path, tiny: Path, threshold: float | None, t0: float) -> list[dict] | None:
    """The four runs in one server; a row per run, or None (after printing why) if one failed."""
    with ComfyServer.start(workdir, models={"diffusion_models": [tiny]}) as server:
        print(f"server up at {server.url} after {time.monotonic() - t0:.1f} s")
        workflow = json.loads(WORKFLOW.read_text())
        info = server.get("/object_info")
        cached = ui_to_api(workflow, info)
        if threshold is not None:
            cached = edited(cached, "MagCacheApply", threshold=threshold)
        bypassed = copy.deepcopy(workflow)
        next(n for n in bypassed["nodes"] if n["type"] == "MagCacheApply")["mode"] = BYPASSED
        uncached = ui_to_api(bypassed, info)
        save, sampler = node_id(cached, "SaveLatent"), node_id(cached, "KSampler")
        steps = cached[sampler]["inputs"]["steps"]

        runs = [
            ("uncached (MagCacheApply bypassed)", uncached),
            (f"calibrate {CALIBRATION!r}", replaced(cached, "MagCacheApply", "MagCacheCalibrate",
                                                    calibration_name=CALIBRATION)),
            (f"preset 'calibration: {CALIBRATION}'", edited(cached, "MagCacheApply",
                                                            preset=f"calibration: {CALIBRATION}")),
            (f"preset {cached[node_id(cached, 'MagCacheApply')]['inputs']['preset']!r} (published)", cached),
        ]
        # Warm-up (another seed): loads the model, so that no timed run pays for it.
        server.run_prompt(edited(uncached, "KSampler", seed=cached[sampler]["inputs"]["seed"] + 1))

        rows, ref = [], None
        for i, (label, prompt) in enumerate(runs):
            prompt = edited(prompt, "SaveLatent", filename_prefix=f"magcache_demo_{i}")
            result = server.run_prompt(prompt)
            if not result.ok:
                print(json.dumps(result.history.get("status"), indent=1)[:4000], server.log_tail(), sep="\n")
                return None
            latent = server.load_latent(result.output(save))
            ref = latent if ref is None else ref
            max_abs, psnr = latent_diff(ref, latent)
            run = result.runs[0] if result.runs else None
            rows.append({"run": label, "computed": run["computed"] if run else steps, "steps": steps,
                         "computed_steps": run["steps"] if run else list(range(steps)),
                         "skipped": run["skipped"] if run else 0, "wall_s": result.wall_s,
                         "max_abs_diff": max_abs, "psnr_db": psnr})
            for line in result.log.splitlines():
                if "MagCacheCalibrate: saved" in line:
                    print(line.strip())
    return rows


if __name__ == "__main__":
    sys.exit(main())
