"""Whole ComfyUI sampling runs on a FLUX.1-dev-sized model (random bf16 weights), with and without
this pack: wall clock and CUDA-event time around ``comfy.sample.sample``, computed steps, peak GPU
memory, and the output's difference from the unpatched run.

Configs (one model, built once; each patched model is a clone, the base is never changed):
  unpatched           plain ComfyUI
  magcache_flux       MagCacheApply, preset "flux", threshold 0.24, retention 0.1, K 5
  magcache_thresh0    MagCacheApply, same preset, threshold 0 (never skips: the cost of our patches)
  calibrate           MagCacheCalibrate (records the ratio curve while computing every step)
  teacache_flux_04    TeaCacheApply, preset "flux", rel_l1_thresh 0.4
  teacache_flux_06    TeaCacheApply, preset "flux", rel_l1_thresh 0.6
  magcache_flux_extrap     magcache_flux with skipped_steps "extrapolate" (same schedule: the extrapolation's cost)
  magcache_flux_fb1        magcache_flux with first_blocks 1, first_blocks_threshold 1.0 (the content allows
                           every skip the curve allows, so the same computed steps: the cost of the first block on
                           skipped steps and of the one host sync per call that reads its change)
  magcache_flux_fb1_extrap the two together
  teacache_flux_06_extrap  teacache_flux_06 with skipped_steps "extrapolate"
  unpatched_end       plain ComfyUI again, last, to see whether the machine drifted

Issue 11 asks of a variant whose extra work per step could cost more than it saves: wall-clock speedup at equal
computed steps within 2 % of plain MagCache. Each config's result has ``vs_same_schedule``: its median wall time /
that of the config it shares its schedule with (magcache_flux, teacache_flux_06), where both ran and computed the
same steps (1.02 = 2 % slower).

Each config: --warmup untimed runs, then --reps timed runs; the median is reported.

    python bench/gpu_wallclock.py --comfyui PATH/TO/ComfyUI --out result.json
    python bench/gpu_wallclock.py --comfyui PATH --out /tmp/r.json --tiny      # CPU smoke test
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from comfy_setup import FLUX_DEV, SUMMARY_RE, TINY, Capture, load, random_model  # noqa: E402
FLUX_TINY = TINY["flux"]        # --tiny: same classes, same code path, a size a CPU samples in seconds

CONFIGS = ["unpatched", "magcache_flux", "magcache_thresh0", "calibrate", "teacache_flux_04", "teacache_flux_06",
           "magcache_flux_extrap", "magcache_flux_fb1", "magcache_flux_fb1_extrap", "teacache_flux_06_extrap",
           "unpatched_end"]
SAME_SCHEDULE = {"magcache_flux_extrap": "magcache_flux", "magcache_flux_fb1": "magcache_flux",
                 "magcache_flux_fb1_extrap": "magcache_flux", "teacache_flux_06_extrap": "teacache_flux_06"}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--comfyui", required=True, help="ComfyUI tree (holds comfy/ and folder_paths.py)")
    p.add_argument("--out", required=True, help="result JSON file")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--size", type=int, default=1024, help="image side in pixels (latent side = size / 8)")
    p.add_argument("--reps", type=int, default=3, help="timed runs per config")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs per config before the timed ones")
    p.add_argument("--tokens", type=int, default=512, help="text tokens in the conditioning")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {CONFIGS}")
    p.add_argument("--tiny", action="store_true", help="tiny FLUX (hidden 64, 2+2 blocks) for a CPU smoke test")
    return p.parse_args()


def main():
    a = parse_args()
    configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        sys.exit(f"unknown configs {sorted(unknown)}; known: {CONFIGS}")

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    comfy_root = str(Path(a.comfyui).resolve())
    cuda, pack = load(comfy_root)        # calibrations land in a temp user folder
    import torch
    import comfy.model_management
    import comfy.sample
    nodes = pack.NODE_CLASS_MAPPINGS
    capture = Capture()
    logging.getLogger("comfyui-magcache").addHandler(capture)

    dev = torch.device("cuda") if cuda else torch.device("cpu")
    dtype = torch.bfloat16
    unet_config = FLUX_TINY if a.tiny else FLUX_DEV

    # -- the model, through ComfyUI's own classes ----------------------------------------------
    t0 = time.perf_counter()
    base = random_model("flux", unet_config, dev, dtype, a.seed)
    dm = base.model.diffusion_model
    if cuda:
        torch.cuda.synchronize()
    n_params = sum(p.numel() for p in dm.parameters())
    param_dtypes = sorted({str(p.dtype) for p in dm.parameters()})
    build_s = time.perf_counter() - t0
    print(f"built {type(dm).__module__}.{type(dm).__name__}: {n_params / 1e9:.3f} B params {param_dtypes} "
          f"on {dev} in {build_s:.1f} s", flush=True)

    # Every computed pass of the blocks calls double_blocks[0] and the last single block; a skipped one neither, a
    # first-block-confirmed skip the first only. Computed steps are counted at the last block.
    block0_calls, last_calls = [0], [0]
    dm.double_blocks[0].register_forward_pre_hook(lambda mod, args: block0_calls.__setitem__(0, block0_calls[0] + 1))
    dm.single_blocks[-1].register_forward_pre_hook(lambda mod, args: last_calls.__setitem__(0, last_calls[0] + 1))
    n_blocks = len(dm.double_blocks) + len(dm.single_blocks)

    # -- conditioning and latent --------------------------------------------------------------
    gc = torch.Generator().manual_seed(a.seed + 1)
    ctx_w, pooled_w = unet_config["context_in_dim"], unet_config["vec_in_dim"]

    def cond():
        return [[torch.randn(1, a.tokens, ctx_w, generator=gc).to(dtype),
                 {"pooled_output": torch.randn(1, pooled_w, generator=gc), "guidance": 3.5}]]

    positive, negative = cond(), cond()
    side = a.size // 8
    latent = torch.zeros(1, 16, side, side)
    noise = comfy.sample.prepare_noise(latent, a.seed + 2)

    # -- the configs --------------------------------------------------------------------------
    def make(name):
        if name in ("unpatched", "unpatched_end"):
            return base
        if name == "magcache_flux":
            return nodes["MagCacheApply"]().apply(base, "flux", 0.24, 0.1, 5)[0]
        if name == "magcache_thresh0":
            return nodes["MagCacheApply"]().apply(base, "flux", 0.0, 0.1, 5)[0]
        if name == "calibrate":
            return nodes["MagCacheCalibrate"]().calibrate(base, "bench_flux")[0]
        if name.startswith("magcache_flux_"):
            skipped = "extrapolate" if name.endswith("_extrap") else "reuse"
            first = 1 if "_fb1" in name else 0
            return nodes["MagCacheApply"]().apply(base, "flux", 0.24, 0.1, 5, skipped_steps=skipped, first_blocks=first,
                                                  first_blocks_threshold=1.0)[0]
        if name.startswith("teacache_flux_"):
            skipped = "extrapolate" if name.endswith("_extrap") else "reuse"
            return nodes["TeaCacheApply"]().apply(base, "flux", int(name[14:16]) / 10, skipped_steps=skipped)[0]
        raise KeyError(name)

    def sample_once(m):
        n_lines = len(capture.lines)
        block0_calls[0] = last_calls[0] = 0
        ev = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if cuda else None
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        if ev:
            ev[0].record()
        out = comfy.sample.sample(m, noise, a.steps, 1.0, "euler", "simple", positive, negative, latent,
                                  denoise=1.0, disable_pbar=True, seed=a.seed + 2)
        if ev:
            ev[1].record()
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t
        event_s = ev[0].elapsed_time(ev[1]) / 1000 if ev else None
        summary = None
        for line in capture.lines[n_lines:]:
            mm = SUMMARY_RE.search(line)
            if mm:
                summary = dict(computed=int(mm.group(1)), seen=int(mm.group(2)), steps=json.loads(mm.group(3)))
        return out.float().cpu(), wall, event_s, (block0_calls[0], last_calls[0]), summary

    results, outputs = {}, {}
    for name in configs:
        m = make(name)
        for _ in range(a.warmup):
            sample_once(m)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            mem_before = torch.cuda.memory_allocated()
        walls, events, calls, summaries, outs = [], [], [], [], []
        for _ in range(a.reps):
            out, wall, event_s, n_calls, summary = sample_once(m)
            walls.append(wall)
            events.append(event_s)
            calls.append(n_calls)
            summaries.append(summary)
            outs.append(out)
        r = dict(wall_s_median=statistics.median(walls), wall_s=walls,
                 cuda_event_s_median=statistics.median(events) if cuda else None, cuda_event_s=events if cuda else None,
                 block0_calls=[c[0] for c in calls], last_block_calls=[c[1] for c in calls], computed_steps=calls[0][1],
                 block_passes=calls[0][1] * n_blocks + (calls[0][0] - calls[0][1]),
                 pack_summary=summaries[0], out_mean_abs=outs[0].abs().mean().item(),
                 out_finite=bool(torch.isfinite(outs[0]).all()),
                 max_abs_diff_between_reps=max((o - outs[0]).abs().max().item() for o in outs))
        if cuda:
            r["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            r["peak_over_start_gib"] = (torch.cuda.max_memory_allocated() - mem_before) / 2**30
            r["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        if summaries[0] is not None and summaries[0]["computed"] != calls[0][1]:
            r["note"] = "pack summary and block-0 hook disagree"
        outputs[name] = outs[0]
        results[name] = r
        print(name, json.dumps(r), flush=True)
        del m

    ref = results.get("unpatched")
    for name, r in results.items():
        if ref is not None:
            r["speedup_vs_unpatched"] = ref["wall_s_median"] / r["wall_s_median"]
            if cuda:
                r["event_speedup_vs_unpatched"] = ref["cuda_event_s_median"] / r["cuda_event_s_median"]
            d = outputs[name] - outputs["unpatched"]
            r["max_abs_diff_vs_unpatched"] = d.abs().max().item()
            r["mean_abs_diff_vs_unpatched"] = d.abs().mean().item()
        same = results.get(SAME_SCHEDULE.get(name))
        if same is not None and same["computed_steps"] == r["computed_steps"]:
            r["vs_same_schedule"] = r["wall_s_median"] / same["wall_s_median"]
            if cuda:
                r["event_vs_same_schedule"] = r["cuda_event_s_median"] / same["cuda_event_s_median"]

    env = dict(torch=torch.__version__, cuda=torch.version.cuda, python=platform.python_version(),
               gpu=torch.cuda.get_device_name(0) if cuda else None, device=str(dev),
               comfyui=_comfy_version(comfy_root), params=n_params, param_dtypes=param_dtypes, build_s=build_s,
               total_vram_gib=comfy.model_management.total_vram / 1024,
               args=vars(a), unet_config=unet_config, sampler="euler", scheduler="simple", cfg=1.0,
               latent=[1, 16, side, side], context=[1, a.tokens, ctx_w], pooled=[1, pooled_w], guidance=3.5)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(dict(env=env, results=results), indent=1))

    print()
    print(f"{'config':<24} {'computed':>8} {'wall med s':>10} {'speedup':>7} {'event s':>8} {'peak GiB':>8} "
          f"{'mean|out|':>9} {'max|d| vs unp':>13} {'vs same schedule':>16}")
    for name, r in results.items():
        ev_s = f"{r['cuda_event_s_median']:.3f}" if r["cuda_event_s_median"] is not None else "-"
        pk = f"{r['peak_gib']:.2f}" if "peak_gib" in r else "-"
        same = f"{r['vs_same_schedule']:.3f}" if "vs_same_schedule" in r else "-"
        print(f"{name:<24} {r['computed_steps']:>5}/{a.steps:<2} {r['wall_s_median']:>10.3f} "
              f"{r.get('speedup_vs_unpatched', float('nan')):>6.2f}x {ev_s:>8} {pk:>8} {r['out_mean_abs']:>9.4f} "
              f"{r.get('max_abs_diff_vs_unpatched', float('nan')):>13.4g} {same:>16}")
    print("RESULTS", json.dumps(results))


def _comfy_version(root):
    try:
        return (Path(root) / "comfyui_version.py").read_text().split('"')[1]
    except (OSError, IndexError):
        return None


if __name__ == "__main__":
    main()
