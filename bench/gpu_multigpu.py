"""The pack under ComfyUI's multi-GPU work units (ComfyUI 0.33+, ``comfy.multigpu``), against one GPU.

A FLUX.1-dev-sized or Wan 2.1 14B-sized model (ComfyUI's own classes, random bf16 weights) samples one prompt
with CFG on, so cond and uncond are work units that go to different GPUs. Each config runs on one GPU and on
two (``comfy.multigpu.create_multigpu_deepclones``, what the MultiGPU_WorkUnits node does):

  unpatched        plain ComfyUI
  magcache         MagCacheApply (FLUX: "flux" 0.24 / 0.1 / K 5; Wan: "wan2.1_t2v_14B" 0.24 / 0.2 / K 6)
  thresh0          MagCacheApply at threshold 0 (never skips: must equal unpatched bit for bit)
  teacache         TeaCacheApply (FLUX: "flux" 0.4; Wan: "wan2.1_t2v_14B" 0.2)
  calibrate        MagCacheCalibrate

What is checked per config: the steps each device's first block ran (a forward pre-hook on every device's
block 0, so a residual missing on a device would show as an extra computed step there), the output against
the one-GPU run of the same config (bf16 noise expected: the batches differ), and threshold 0 against
unpatched on the same devices (bit-identical). Wall clock: --warmup untimed runs, then the median of --reps,
``torch.cuda.synchronize`` around each run.

    python bench/gpu_multigpu.py --comfyui PATH --model flux --out r.json
    python bench/gpu_multigpu.py --comfyui PATH --model wan14b --steps 20 --frames 17 --out r.json
    python bench/gpu_multigpu.py --comfyui PATH --model flux --tiny --out /tmp/r.json     # CPU smoke test (one device)
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
from comfy_setup import FLUX_DEV, SUMMARY_RE, TINY, WAN_14B, Capture, load, random_model  # noqa: E402
SETTINGS = {"flux": dict(preset="flux", mag=(0.24, 0.1, 5), tea=0.4, cfg=3.5),
            "wan14b": dict(preset="wan2.1_t2v_14B", mag=(0.24, 0.2, 6), tea=0.2, cfg=5.0)}
CONFIGS = ["unpatched", "magcache", "thresh0", "teacache", "calibrate"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--comfyui", required=True)
    p.add_argument("--model", choices=sorted(SETTINGS), default="flux")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--size", type=int, default=1024, help="FLUX: image side in pixels")
    p.add_argument("--width", type=int, default=832, help="Wan: width in pixels")
    p.add_argument("--height", type=int, default=480, help="Wan: height in pixels")
    p.add_argument("--frames", type=int, default=17, help="Wan: frames")
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--tiny", action="store_true")
    return p.parse_args()


def main():
    a = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    cuda, pack = load(a.comfyui)
    import torch
    import comfy.model_management
    import comfy.multigpu
    import comfy.sample
    nodes = pack.NODE_CLASS_MAPPINGS
    capture = Capture()
    logging.getLogger("comfyui-magcache").addHandler(capture)
    st = SETTINGS[a.model]

    dev = torch.device("cuda", 0) if cuda else torch.device("cpu")
    dtype = torch.bfloat16
    config = TINY[a.model] if a.tiny else (FLUX_DEV if a.model == "flux" else WAN_14B)
    t0 = time.perf_counter()
    base = random_model(a.model, config, dev, dtype, a.seed)
    model = base.model
    n_devices = torch.cuda.device_count() if cuda else 1
    two = comfy.multigpu.create_multigpu_deepclones(base, 2) if n_devices >= 2 else None
    build_s = time.perf_counter() - t0
    print(f"built {a.model} ({sum(p.numel() for p in model.diffusion_model.parameters()) / 1e9:.2f} B params) "
          f"in {build_s:.1f} s; {n_devices} device(s)", flush=True)

    # -- block-0 hooks on every device's copy of the model ------------------------------------------
    seen: dict[str, list] = {}

    def hook_on(dm, label):
        block0 = dm.double_blocks[0] if hasattr(dm, "double_blocks") else dm.blocks[0]

        def pre(mod, args, kwargs):
            to = kwargs.get("transformer_options") or {}
            sig = to.get("sample_sigmas")
            s = float(to["sigmas"][0]) if "sigmas" in to else None
            step = None
            if sig is not None and s is not None:
                lst = sig.tolist()
                step = min(range(len(lst) - 1), key=lambda i: abs(lst[i] - s))
            seen.setdefault(label, []).append((step, tuple(to.get("cond_or_uncond") or ())))
        block0.register_forward_pre_hook(pre, with_kwargs=True)

    hook_on(base.model.diffusion_model, str(dev))
    if two is not None:
        for extra in two.get_additional_models_with_key("multigpu"):
            hook_on(extra.model.diffusion_model, str(extra.load_device))

    # -- conds and latent ------------------------------------------------------------------------------
    gc = torch.Generator().manual_seed(a.seed + 1)
    if a.model == "flux":
        ctx_w = config["context_in_dim"]
        mk = lambda: [[torch.randn(1, a.tokens, ctx_w, generator=gc).to(dtype),  # noqa: E731
                       {"pooled_output": torch.randn(1, config["vec_in_dim"], generator=gc), "guidance": 3.5}]]
        side = (64 if a.tiny else a.size) // 8
        latent = torch.zeros(1, 16, side, side)
    else:
        ctx_w = config["text_dim"]
        mk = lambda: [[torch.randn(1, a.tokens, ctx_w, generator=gc).to(dtype), {}]]  # noqa: E731
        w, h, f = (64, 64, 5) if a.tiny else (a.width, a.height, a.frames)
        latent = torch.zeros(1, 16, (f - 1) // 4 + 1, h // 8, w // 8)
    positive, negative = mk(), mk()
    noise = comfy.sample.prepare_noise(latent, a.seed + 2)

    def make(name, m):
        if name == "unpatched":
            return m
        if name == "magcache":
            return nodes["MagCacheApply"]().apply(m, st["preset"], *st["mag"])[0]
        if name == "thresh0":
            return nodes["MagCacheApply"]().apply(m, st["preset"], 0.0, *st["mag"][1:])[0]
        if name == "teacache":
            return nodes["TeaCacheApply"]().apply(m, st["preset"], st["tea"])[0]
        if name == "calibrate":
            return nodes["MagCacheCalibrate"]().calibrate(m, f"bench_{a.model}")[0]
        raise KeyError(name)

    def run(m):
        seen.clear()
        n_lines = len(capture.lines)
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = comfy.sample.sample(m, noise, a.steps, st["cfg"], "euler", "simple", positive, negative, latent,
                                  disable_pbar=True, seed=a.seed + 2)
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t
        steps = {d: sorted({s for s, _ in calls}) for d, calls in seen.items()}
        kinds = {d: sorted({k for _, ks in calls for k in ks}) for d, calls in seen.items()}
        summary = [ln for ln in capture.lines[n_lines:] if SUMMARY_RE.search(ln)]
        return out.float().cpu(), wall, steps, kinds, summary

    configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    results, outs = {}, {}
    for name in configs:
        for where, m0 in (("1gpu", base), ("2gpu", two)):
            if m0 is None:
                continue
            m = make(name, m0)
            for _ in range(a.warmup):
                run(m)
            walls = []
            for _ in range(a.reps):
                out, wall, steps, kinds, summary = run(m)
                walls.append(wall)
            key = f"{name}_{where}"
            outs[key] = out
            results[key] = dict(wall_s_median=statistics.median(walls), wall_s=walls, steps_by_device=steps,
                                conds_by_device=kinds, summary=summary, finite=bool(torch.isfinite(out).all()))
            print(key, json.dumps(results[key]), flush=True)
            del m

    for key, r in results.items():
        name, where = key.rsplit("_", 1)
        one = outs.get(f"{name}_1gpu")
        if where == "2gpu" and one is not None:
            d = (outs[key] - one).abs()
            r["max_abs_diff_vs_1gpu"] = d.max().item()
            r["rel_l1_vs_1gpu"] = (d.mean() / one.abs().mean()).item()
            one_steps = next(iter(results[f"{name}_1gpu"]["steps_by_device"].values()), [])
            r["same_steps_as_1gpu_on_every_device"] = all(s == one_steps for s in r["steps_by_device"].values())
        ref = outs.get(f"unpatched_{where}")
        if ref is not None:
            r["bit_identical_to_unpatched_same_devices"] = bool(torch.equal(outs[key], ref))
            r["speedup_vs_unpatched_same_devices"] = results[f"unpatched_{where}"]["wall_s_median"] / r["wall_s_median"]
        if f"unpatched_1gpu" in results:
            r["speedup_vs_unpatched_1gpu"] = results["unpatched_1gpu"]["wall_s_median"] / r["wall_s_median"]
    env = dict(torch=torch.__version__, cuda=torch.version.cuda, python=platform.python_version(),
               gpus=[torch.cuda.get_device_name(i) for i in range(n_devices)] if cuda else None,
               comfyui=(Path(a.comfyui) / "comfyui_version.py").read_text().split('"')[1], args=vars(a),
               unet_config=config, latent=list(latent.shape), build_s=build_s,
               date=time.strftime("%Y-%m-%d"))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(dict(env=env, results=results), indent=1))
    print(f"\n{'config':<16} {'wall med s':>10} {'x vs unp 1gpu':>13} {'steps per device'}")
    for key, r in results.items():
        print(f"{key:<16} {r['wall_s_median']:>10.3f} {r.get('speedup_vs_unpatched_1gpu', float('nan')):>12.2f}x "
              f"{json.dumps(r['steps_by_device'])} same_as_1gpu={r.get('same_steps_as_1gpu_on_every_device')} "
              f"maxdiff={r.get('max_abs_diff_vs_1gpu')} bitid_unp={r.get('bit_identical_to_unpatched_same_devices')}")


if __name__ == "__main__":
    main()
