"""Choosing the forms of the pack's newer variants on the reference model (a small, targeted run).

Sweeps, on a few samples at one step count, the forms the skipped-step extrapolation and the
first-block-confirmed skip can take, next to plain MagCache, with bench/quality.py's machinery (same
calibration run, same uncached references, block passes counted at every block), and prints each form's
front: the best PSNR (pooled, and the mean of the per-sample PSNRs) at or above each block-pass speedup.
The forms are RunConfig settings (magcache_core/run.py, firstblock.py), patched directly: the nodes
expose only the forms this run chose.

    python bench/variant_forms.py --threads 1 --steps 20 --forms "reuse r0.1 K2" "step r0.1 K2" "sigma r0.1 K2" "ratio r0.1 K2"
    python bench/variant_forms.py --threads 1 --steps 20 --forms "reuse r0.1 K4" "fb1 p0.12 r0.1 K4" "fb1-acc p0.12 r0.1 K4" \
        "fb1+step p0.12 r0.1 K4"

(8 samples: the 8 prompts at seed 0 by default; about 5 minutes per 40 points at 20 steps on one thread.) The
runs behind the README's figures are those, at 20 steps, plus "reuse/step/sigma r0.1 K2", "reuse/step r0.2 K4" at
30 steps, "reuse/step r0.1 K2/K4" at 50 steps, and "fb1 p0.06 / p0.3 r0.1 K4", "fb1-noprior r0.1 K4" at 20.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402

MAG = [0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.12, 0.16, 0.22, 0.3]
FB_CONTENT = [0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 0.4]       # first blocks' relative L1 change


def parse_form(name: str):
    """A form's name -> (RunConfig keyword arguments, retention, K, [(MagCache threshold, content threshold)]).

    ``<skip>[+<extrapolation>] [p<prior threshold>] r<retention> K<K>``, where <skip> is reuse, step, sigma or
    ratio (MagCache, the residual reused or extrapolated in that form) or fb<N>[-acc][-noprior] (the first N
    blocks confirm; -acc: the change summed over the skipped steps; -noprior: MagCache's threshold is not applied,
    only its retention and K; p: MagCache's threshold, the prior, else none: the content threshold sweeps alone), and
    +<extrapolation> extrapolates a first-block run's residual. MagCache forms sweep the threshold (MAG),
    first-block forms the content threshold (FB_CONTENT)."""
    from comfyui_magcache.magcache_core.firstblock import FirstBlockParams
    words = name.split()
    head, extra = (words[0].split("+") + ["off"])[:2]
    opts = {w[0]: float(w[1:]) for w in words[1:]}
    r, k = opts["r"], int(opts["K"])
    if head.startswith("fb"):
        parts = head[2:].split("-")
        first = FirstBlockParams(int(parts[0]), 0.0, accumulate="acc" in parts, prior="noprior" not in parts)
        prior = opts.get("p", 1e9)
        return dict(extrapolate=extra, first=first), r, k, [(prior, c) for c in FB_CONTENT]
    return dict(extrapolate="off" if head == "reuse" else head), r, k, [(t, None) for t in MAG]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--forms", nargs="+", default=["reuse r0.1 K2", "step r0.1 K2", "sigma r0.1 K2", "ratio r0.1 K2"])
    ap.add_argument("--json", type=Path, help="also write the points here")
    ap.add_argument("--threads", type=int, help="torch CPU threads (1 on a shared, busy machine)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("comfyui-magcache").setLevel(logging.WARNING)
    t0 = time.time()
    pack, reference, easycache = quality.setup_comfy(tempfile.mkdtemp(prefix="magcache-forms-"))
    from comfyui_magcache.magcache_core import MagCacheParams, RunConfig
    from comfyui_magcache.magcache_core.storage import curves_of
    from comfyui_magcache.nodes.patching import patch_model
    from comfyui_magcache.strategies import detect
    from dataclasses import replace

    table = {name: parse_form(name) for name in args.forms}
    samples = [(p, s) for s in range(args.seeds) for p in reference.prompts(args.prompts)]
    bench = quality.Bench(pack, reference, easycache, samples)
    torch.set_grad_enabled(False)
    doc = bench.calibrate(args.steps)
    bench.uncached(args.steps)
    curves = curves_of(doc)
    strategy = detect(bench.base)

    def patched(kw, r, k, t, c):
        kw = dict(kw)
        first = kw.pop("first", None)
        if first is not None:
            first = replace(first, threshold=c)
        config = RunConfig("magcache", MagCacheParams(t, r, k), curves, label="forms", first_blocks=first, **kw)
        return patch_model(bench.base, strategy, config)

    # Skipped-step speedup, apart from the block passes: rows reaching the LAST block (a first-block run still runs
    # its first blocks on a skipped step; on a model with many blocks that costs little, on this 4-block one a quarter).
    last_rows = [0]
    hook = bench.base.model.diffusion_model.blocks[-1].register_forward_pre_hook(
        lambda m, a: last_rows.__setitem__(0, last_rows[0] + int(a[0].shape[0])))
    last_rows[0] = 0
    bench.run(bench.base, args.steps)
    uncached_last = last_rows[0]
    points, step_speedups = [], {}
    for name in args.forms:
        kw, r, k, grid = table[name]
        for t, c in grid:
            bench.patched = lambda method, threshold, steps, kw=kw, r=r, k=k, t=t, c=c: patched(kw, r, k, t, c)
            quality.FAMILY[name] = name
            last_rows[0] = 0
            p = bench.point(name, t if c is None else c, args.steps)
            p.setting = name if c is None else f"{name} prior {t}"
            points.append(p)
            step_speedups[len(points) - 1] = uncached_last / max(last_rows[0], 1)
            print(f"  {name:24} {t:<6} {'' if c is None else c:<5} blocks {p.computed_speedup:5.2f}x  steps "
                  f"{step_speedups[len(points) - 1]:5.2f}x  PSNR {p.psnr:6.2f}  mean {p.psnr_mean:6.2f}  min {p.psnr_min:6.2f}",
                  flush=True)
    grid_x = [round(1.5 + 0.1 * i, 2) for i in range(16)]
    for value in ("psnr", "psnr_mean"):
        print(f"\nbest {value} at >= each block-pass speedup ({len(samples)} samples, {args.steps} steps)")
        print(f"{'form':26}" + "".join(f"{x:>7}" for x in grid_x))
        for name in args.forms:
            pts = [p for p in points if p.method == name]
            cells = [quality.front(pts, x, value=value) for x in grid_x]
            print(f"{name:26}" + "".join(f"{c:7.2f}" if c is not None else "      -" for c in cells))
    if any(n.startswith("fb") for n in args.forms):
        import copy
        by_steps = []
        for i, p in enumerate(points):
            q = copy.copy(p)
            q.computed_speedup = step_speedups[i]
            by_steps.append(q)
        print(f"\nbest psnr at >= each SKIPPED-STEP speedup (rows at the last block; first blocks not counted)")
        print(f"{'form':26}" + "".join(f"{x:>7}" for x in grid_x))
        for name in args.forms:
            pts = [p for p in by_steps if p.method == name]
            cells = [quality.front(pts, x) for x in grid_x]
            print(f"{name:26}" + "".join(f"{c:7.2f}" if c is not None else "      -" for c in cells))
    hook.remove()
    if args.json:
        args.json.write_text(json.dumps({"steps": args.steps, "samples": len(samples),
                                         "points": [dict(asdict(p), step_speedup=step_speedups[i])
                                                    for i, p in enumerate(points)]}, indent=1))
    print(f"done in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
