"""How close the pack gets to the physical limit of block caching, on a FLUX.1-dev-sized or a Wan 2.1 14B-sized
model (ComfyUI's own classes, random bf16 weights), whole ``comfy.sample.sample`` runs on one GPU.

The limit for a schedule with C computed and S skipped steps is C * full + S * skip, where full is the
unpatched run's time per step and skip the time per step of a run whose every block is replaced by identity
(``identity``: ComfyUI's block-replace patches returning their input; embeddings, final layer and sampler still
run). ratio = limit / measured (1 = the schedule's floor; above 1 is possible where a skipped step's launches
overlap a computed step's GPU work).

Configs:
  unpatched            plain ComfyUI
  identity             every block replaced by identity (the skip floor; its output is meaningless)
  identity_sync        the same plus one host read per step (a float() of one element at block 0): the floor of
                       a method that reads a value from the device on every step, as TeaCache and EasyCache do
                       by design; their "ratio_to_sync_limit" is measured against it
  unpatched_resident, identity_resident
                       the same as unpatched and identity, with the run's conds put on the GPU once before
                       sampling, as the pack does for its own runs (nodes/resident_conds.py; ComfyUI copies them
                       from pageable host memory in every model call, which makes each call wait for the GPU).
                       With both, every config also gets "ratio_to_resident_limit": its limit taken from these
                       two, so that the pack's configs are measured against a floor with the same cond placement

--interleave: the timed runs go round-robin over the configs instead of config after config (the runs of one
config spread by 1-4 % on the H100, and a drift between configs moves every ratio); each config then also gets
"ratio_paired_median": the median over the rounds of its ratio to that round's own limit (from that round's
unpatched and identity runs). --warmup 0 there: no untimed run per config (one short run of the process first).
--sync-debug: one more run per config under torch.cuda's sync debug mode, which reports every synchronizing
CUDA call; the result's "syncs" counts them and names where they come from.
--count-copies: one more run per config under torch.profiler (CUDA activity): the result's "h2d_copies" counts
the host-to-device copies of the whole call to comfy.sample.sample by kind (pageable or pinned source). Use it
with --tiny: on the full-size FLUX model, profiled runs of ten configs took longer than 450 s.
  magcache             MagCacheApply (FLUX "flux" 0.24 / 0.1 / K 5; Wan "wan2.1_t2v_14B" 0.24 / 0.2 / K 6)
  magcache_reuse       the same with skipped_steps "reuse" (the node's default is "extrapolate")
  magcache_offload     the same, cache_device "cpu" (residuals offloaded to pinned host memory)
  teacache             TeaCacheApply (FLUX "flux" 0.6; Wan "wan2.1_t2v_14B" 0.2)
  thresh0              MagCacheApply at threshold 0 (never skips: the cost of the patches; bit-identical)
  calibrate            MagCacheCalibrate
  easycache            ComfyUI's EasyCache node, reuse_threshold 0.2 (its default)
  easycache_max        the same at reuse_threshold 3.0, the most its node allows: on random weights the default
                       never skips, so this is the config that shows how fast EasyCache's skipped steps are
  compiled_unpatched, compiled_identity, compiled_magcache
                       the same under ComfyUI's TorchCompileModel (inductor); graph breaks, recompiles and
                       compiled frames are counted (torch._dynamo counters) per config

Per config: --warmup untimed runs, --reps timed runs, the median; peak memory over the timed runs; "gc_per_run":
Python's garbage collections during each timed run ([count, their total ms, the oldest generation collected]).
Each run starts after gc.collect() and gc.freeze() (--no-gc-prep: not): a full sweep of the process's objects
takes 0.1-0.2 s and otherwise lands in some timed runs and not in others.

    python bench/gpu_last_percent.py --comfyui PATH --model flux --out r.json
    python bench/gpu_last_percent.py --comfyui PATH --model wan14b --steps 6 --reps 2 --warmup 0 --out r.json
    python bench/gpu_last_percent.py --comfyui PATH --model flux --tiny --out /tmp/r.json      # CPU smoke test
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
SETTINGS = {"flux": dict(preset="flux", mag=(0.24, 0.1, 5), tea=0.6, cfg=1.0),
            "wan14b": dict(preset="wan2.1_t2v_14B", mag=(0.24, 0.2, 6), tea=0.2, cfg=5.0)}
CONFIGS = ["unpatched", "identity", "identity_sync", "unpatched_resident", "identity_resident", "magcache",
           "magcache_reuse", "magcache_offload", "teacache", "thresh0", "calibrate", "easycache", "easycache_max",
           "compiled_unpatched", "compiled_identity", "compiled_magcache"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--comfyui", required=True)
    p.add_argument("--model", choices=sorted(SETTINGS), default="flux")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--size", type=int, default=1024, help="FLUX: image side in pixels")
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--budget-s", type=float, default=1e9, help="skip the remaining configs after this many seconds")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--interleave", action="store_true", help="eager configs only: build all, warm each up, then time "
                   "them round-robin (--reps rounds), so that a drift of clocks or load reaches every config alike")
    p.add_argument("--step-times", action="store_true", help="CUDA events at each step's callback: the last timed "
                   "run's time per step on the GPU stream (gaps included) and on the host (how far ahead it runs)")
    p.add_argument("--no-gc-prep", action="store_true", help="do not collect and freeze Python's garbage before "
                   "each run (by default each run starts after gc.collect() and gc.freeze(), so that a full sweep "
                   "of the process's objects, 0.1-0.2 s, cannot land in one timed run and not another)")
    p.add_argument("--count-copies", action="store_true", help="one more run per config under torch.profiler: "
                   "its host-to-device copies, by kind")
    p.add_argument("--sync-debug", action="store_true", help="one more run per config under torch.cuda's sync debug "
                   "mode: where host syncs happen (the innermost frames of each, counted)")
    return p.parse_args()


def identity_patches(m, strategy):
    """A clone whose every block (the pack's strategy names them) returns its input unchanged."""
    m = m.clone()
    for key in strategy.block_keys:
        m.set_model_patch_replace(lambda args, extra, s=strategy, k=key: s.passthrough(k, args), "dit", key[0], key[1])
    return m


def identity_sync_patches(m, strategy):
    """identity_patches plus one host read per model call, at the first block."""
    m = m.clone()
    first = strategy.block_keys[0]
    for key in strategy.block_keys:
        def patch(args, extra, s=strategy, k=key, read=key == first):
            if read:
                float(s.stream_in(k, args).flatten()[0])
            return s.passthrough(k, args)
        m.set_model_patch_replace(patch, "dit", key[0], key[1])
    return m


def resident_conds(m):
    """A clone whose runs get their conds on the sampling device once, before sampling, through the pack's own
    function (the pack does this in its SAMPLER_SAMPLE wrapper, for its runs only)."""
    import comfy.patcher_extension
    from comfyui_magcache.nodes.resident_conds import resident
    m = m.clone()

    def wrapper(executor, guider, sigmas, extra_args, callback, noise, *args, **kwargs):
        with resident(guider, noise.device):
            return executor(guider, sigmas, extra_args, callback, noise, *args, **kwargs)
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE, "bench-resident-conds", wrapper)
    return m


def h2d_copies(fn) -> dict:
    """Runs ``fn`` under torch.profiler with CUDA activity: its host-to-device copies, counted by kind."""
    import collections
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
    kinds = collections.Counter(e.name for e in prof.events() if e.name.startswith("Memcpy HtoD"))
    return dict(kinds)


def against(c: int, steps: int, full: dict, skip: dict, r: dict):
    """The limit of a schedule of ``c`` computed steps out of ``steps``, each computed step costing a step of
    ``full``'s runs and each other one a step of ``skip``'s: (limit in s, limit / ``r``'s median wall, and with
    --interleave the ratio of each round to that round's own limit, else None). Taken round by round, a drift of
    the machine between rounds cancels."""
    limit = (c * full["wall_s_median"] + (steps - c) * skip["wall_s_median"]) / steps
    rounds = [full.get("wall_s"), skip.get("wall_s"), r["wall_s"]]
    paired = None
    if r.get("interleaved") and all(w and len(w) == len(r["wall_s"]) for w in rounds):
        paired = [(c * u + (steps - c) * i) / steps / w for u, i, w in zip(*rounds)]
    return limit, limit / r["wall_s_median"], paired


def sync_sites(fn, depth: int = 6) -> dict:
    """Runs ``fn`` under torch.cuda's sync debug mode ("warn"); returns {"count", "sites": [[count, frames], ...]}
    with the innermost Python frames (file:line function) of each synchronizing CUDA call, most frequent first."""
    import collections
    import traceback
    import warnings
    import torch
    sites = collections.Counter()
    seen = [0]

    def show(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return
        seen[0] += 1
        frames = [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in traceback.extract_stack()[:-1]
                  if "warnings" not in f.filename][-depth:]
        sites[" <- ".join(reversed(frames))] += 1

    old = warnings.showwarning
    warnings.showwarning = show
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = show
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode("default")
    finally:
        warnings.showwarning = old
    return {"count": seen[0], "sites": [[n, k] for k, n in sites.most_common(12)]}


def easycache_module():
    """ComfyUI's own EasyCache node module, or None where it cannot import: its module imports
    comfy_api.latest, which needs PyAV (not installed on the GPU machine, too large to carry there)."""
    try:
        import comfy_extras.nodes_easycache as ec
        return ec
    except ImportError as e:
        print(f"easycache: cannot import ComfyUI's EasyCache here ({e}); skipped", flush=True)
        return None


def main():
    a = parse_args()
    t_start = time.perf_counter()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
    cuda, pack = load(a.comfyui)
    import torch
    import comfy.model_management
    import comfy.sample
    nodes = pack.NODE_CLASS_MAPPINGS
    from comfyui_magcache.strategies import detect
    capture = Capture.pack_log()

    dev = torch.device("cuda") if cuda else torch.device("cpu")
    dtype = torch.bfloat16
    st = SETTINGS[a.model]
    config = TINY[a.model] if a.tiny else (FLUX_DEV if a.model == "flux" else WAN_14B)
    t0 = time.perf_counter()
    base = random_model(a.model, config, dev, dtype, a.seed)
    dm = base.model.diffusion_model
    n_params = sum(p.numel() for p in dm.parameters())
    print(f"built {type(dm).__name__}: {n_params / 1e9:.3f} B params in {time.perf_counter() - t0:.1f} s", flush=True)
    strategy = detect(base)

    first = dm.double_blocks[0] if a.model == "flux" else dm.blocks[0]
    block0 = [0]
    hook = [None]

    def count_block0(on: bool):
        """A forward pre-hook counting block 0's calls; off under torch.compile (dynamo would guard on the count
        and recompile every call), where the pack's own summary line gives the computed steps."""
        if on and hook[0] is None:
            hook[0] = first.register_forward_pre_hook(lambda mod, args: block0.__setitem__(0, block0[0] + 1))
        elif not on and hook[0] is not None:
            hook[0].remove()
            hook[0] = None

    gc = torch.Generator().manual_seed(a.seed + 1)
    if a.model == "flux":
        mk = lambda: [[torch.randn(1, a.tokens, config["context_in_dim"], generator=gc).to(dtype),  # noqa: E731
                       {"pooled_output": torch.randn(1, config["vec_in_dim"], generator=gc), "guidance": 3.5}]]
        side = 64 // 8 if a.tiny else a.size // 8
        latent = torch.zeros(1, 16, side, side)
    else:
        mk = lambda: [[torch.randn(1, a.tokens, config["text_dim"], generator=gc).to(dtype), {}]]  # noqa: E731
        w, h, f = (64, 64, 5) if a.tiny else (a.width, a.height, a.frames)
        latent = torch.zeros(1, 16, (f - 1) // 4 + 1, h // 8, w // 8)
    positive, negative = mk(), mk()
    noise = comfy.sample.prepare_noise(latent, a.seed + 2)
    ec_note = None

    def make(name):
        nonlocal ec_note
        plain = name.removeprefix("compiled_")
        m = base
        if name.startswith("compiled_"):
            from comfy_api.torch_helpers import set_torch_compile_wrapper
            m = base.clone()
            set_torch_compile_wrapper(m, backend="inductor")
        if plain == "unpatched":
            return m
        if plain == "identity":
            return identity_patches(m, strategy)
        if plain == "identity_sync":
            return identity_sync_patches(m, strategy)
        if plain == "unpatched_resident":
            return resident_conds(m)
        if plain == "identity_resident":
            return resident_conds(identity_patches(m, strategy))
        if plain == "magcache":
            return nodes["MagCacheApply"]().apply(m, st["preset"], *st["mag"])[0]
        if plain == "magcache_reuse":
            return nodes["MagCacheApply"]().apply(m, st["preset"], *st["mag"], skipped_steps="reuse")[0]
        if plain == "magcache_offload":
            return nodes["MagCacheApply"]().apply(m, st["preset"], *st["mag"], cache_device="cpu")[0]
        if plain == "thresh0":
            return nodes["MagCacheApply"]().apply(m, st["preset"], 0.0, *st["mag"][1:])[0]
        if plain == "teacache":
            return nodes["TeaCacheApply"]().apply(m, st["preset"], st["tea"])[0]
        if plain == "calibrate":
            return nodes["MagCacheCalibrate"]().calibrate(m, f"bench_{a.model}")[0]
        if plain in ("easycache", "easycache_max"):
            ec = easycache_module()
            if ec is None:
                ec_note = "ComfyUI's EasyCache could not be imported here (PyAV missing): not measured"
                return None
            out = ec.EasyCacheNode.execute(m, 0.2 if plain == "easycache" else 3.0, 0.15, 0.95, False)
            return out.result[0] if hasattr(out, "result") else out[0]
        raise KeyError(name)

    gc_log: list = []                       # per run: [collections, their total ms, the oldest generation]
    last_steps = [None]                     # --step-times: the last run's per-step times
    import gc
    gc_pauses: list[tuple[int, float]] = []  # (generation, ms) of the garbage collections during a timed run
    gc_start = [0.0]

    def on_gc(phase, info):
        if phase == "start":
            gc_start[0] = time.perf_counter()
        else:
            gc_pauses.append((info["generation"], (time.perf_counter() - gc_start[0]) * 1000))
    gc.callbacks.append(on_gc)

    def run(m):
        n_lines = len(capture.lines)
        block0[0] = 0
        callback, marks = None, []
        if a.step_times and cuda:
            def callback(step, *rest):
                ev = torch.cuda.Event(enable_timing=True)
                ev.record()
                marks.append((ev, time.perf_counter()))
        if not a.no_gc_prep:                # a full collection now, the survivors frozen: no old-generation sweep
            gc.collect()                    # of the whole process (~0.2 s) lands inside a timed run
            gc.freeze()
        gc_pauses.clear()
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        if a.step_times and cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            marks.append((ev, t))
        out = comfy.sample.sample(m, noise, a.steps, st["cfg"], "euler", "simple", positive, negative, latent,
                                  disable_pbar=True, seed=a.seed + 2, callback=callback)
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t
        gc_log.append([len(gc_pauses), round(sum(ms for _, ms in gc_pauses), 2),
                       max((g for g, _ in gc_pauses), default=-1)])
        if not a.no_gc_prep:
            gc.unfreeze()                   # what this run left behind can be collected again before the next
        if len(marks) > 1:
            last_steps[0] = dict(
                gpu_ms=[round(marks[i][0].elapsed_time(marks[i + 1][0]), 3) for i in range(len(marks) - 1)],
                cpu_ms=[round((marks[i + 1][1] - marks[i][1]) * 1000, 3) for i in range(len(marks) - 1)])
        summary = None
        for ln in capture.lines[n_lines:]:
            mm = SUMMARY_RE.search(ln)
            if mm:
                summary = dict(computed=int(mm.group(1)), seen=int(mm.group(2)), steps=json.loads(mm.group(3)))
        return out.float().cpu(), wall, block0[0], summary

    calls_per_step = 1                     # cond and uncond batched: one model call per step
    configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        sys.exit(f"unknown configs {sorted(unknown)}; known: {CONFIGS}")
    results, outs, skipped = {}, {}, []
    if a.warmup == 0:                       # one short run first, so the first config does not pay the start-up
        comfy.sample.sample(base, noise, 1, st["cfg"], "euler", "simple", positive, negative, latent,
                            disable_pbar=True, seed=a.seed + 2)
    if a.interleave:
        if any(n.startswith("compiled_") for n in configs):
            sys.exit("--interleave takes eager configs only (a compiled one warms up for a minute or more)")
        count_block0(True)
        models = {}
        for name in configs:
            m = make(name)
            if m is None:
                skipped.append(name)
                continue
            tc = time.perf_counter()
            for _ in range(a.warmup):
                run(m)
            models[name] = (m, time.perf_counter() - tc)
        walls, last, peaks = {n: [] for n in models}, {}, {n: 0.0 for n in models}
        gcs = {n: [] for n in models}
        for _ in range(a.reps):                   # round-robin: a drift of the machine reaches every config alike
            for name, (m, _) in models.items():
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                o, wall, calls, summary = run(m)
                walls[name].append(wall)
                gcs[name].append(gc_log[-1])
                last[name] = (o, calls, summary, last_steps[0])
                if cuda:
                    peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated() / 2**30)
        copies = {n: h2d_copies(lambda: run(m)) for n, (m, _) in models.items()} if a.count_copies and cuda else {}
        for name, (m, warm_s) in models.items():
            o, calls, summary, steps_log = last[name]
            r = dict(wall_s_median=statistics.median(walls[name]), wall_s=walls[name],
                     computed_steps=calls // calls_per_step, pack_summary=summary, warmup_s=warm_s,
                     out_finite=bool(torch.isfinite(o).all()), interleaved=True, gc_per_run=gcs[name])
            if steps_log is not None:
                r["step_times"] = steps_log
            if name in copies:
                r["h2d_copies"] = copies[name]
            if cuda:
                r["peak_gib"] = peaks[name]
            results[name], outs[name] = r, o
            print(name, json.dumps({k: v for k, v in r.items() if k != "wall_s"}), flush=True)
        configs, models = [], None
    for name in configs:
        if time.perf_counter() - t_start > a.budget_s:
            skipped.append(name)
            continue
        count_block0(not name.startswith("compiled_"))
        m = make(name)
        if m is None:
            skipped.append(name)
            continue
        dyn = None
        if name.startswith("compiled_"):
            import torch._dynamo
            from torch._dynamo.utils import counters
            torch._dynamo.reset()
            counters.clear()
        tc = time.perf_counter()
        warm = max(a.warmup, 1 if name.startswith("compiled_") else 0)
        for _ in range(warm):
            run(m)
        warm_s = time.perf_counter() - tc
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        walls, o, calls, summary, gcs = [], None, None, None, []
        for _ in range(a.reps):
            o, wall, calls, summary = run(m)
            walls.append(wall)
            gcs.append(gc_log[-1])
        if a.sync_debug and cuda:
            r_syncs = sync_sites(lambda: run(m))
        if a.count_copies and cuda:
            r_copies = h2d_copies(lambda: run(m))
        if name.startswith("compiled_"):
            dyn = dict(graph_breaks=sum(counters["graph_break"].values()),
                       graph_break_reasons=[k.split("\n")[0][:200] for k in counters["graph_break"]],
                       unique_graphs=counters["stats"]["unique_graphs"], frames=dict(counters["frames"]),
                       recompiles=dict(counters.get("recompiles", {})))
        steps_computed = calls // calls_per_step
        if name.startswith("compiled_"):
            steps_computed = summary["computed"] if summary else (0 if name.endswith("identity") else a.steps)
        r = dict(wall_s_median=statistics.median(walls), wall_s=walls, computed_steps=steps_computed,
                 pack_summary=summary, warmup_s=warm_s, out_finite=bool(torch.isfinite(o).all()), gc_per_run=gcs)
        if cuda:
            r["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if dyn is not None:
            r["dynamo"] = dyn
        if a.sync_debug and cuda:
            r["syncs"] = r_syncs
        if a.count_copies and cuda:
            r["h2d_copies"] = r_copies
        if a.step_times and last_steps[0] is not None:
            r["step_times"] = last_steps[0]
        results[name], outs[name] = r, o
        print(name, json.dumps({k: v for k, v in r.items() if k != "wall_s"}), flush=True)
        del m

    # The limit per schedule, eager and compiled.
    for prefix in ("", "compiled_"):
        full, skip = results.get(prefix + "unpatched"), results.get(prefix + "identity")
        if full is None or skip is None:
            continue
        res_full, res_skip = results.get(prefix + "unpatched_resident"), results.get(prefix + "identity_resident")
        sync = results.get(prefix + "identity_sync")
        for name, r in results.items():
            if name.startswith("compiled_") != (prefix == "compiled_"):
                continue
            c = r["computed_steps"] if not name.removeprefix(prefix).startswith("identity") else 0
            r["limit_s"], r["ratio_to_limit"], paired = against(c, a.steps, full, skip, r)
            r["speedup_vs_unpatched"] = full["wall_s_median"] / r["wall_s_median"]
            if paired is not None:
                r["ratio_per_round"] = [round(x, 4) for x in paired]
                r["ratio_paired_median"] = statistics.median(paired)
            if res_full is not None and res_skip is not None:
                # The same limit with the conds on the GPU before sampling, as in the pack's runs.
                r["resident_limit_s"], r["ratio_to_resident_limit"], paired = against(c, a.steps, res_full, res_skip, r)
                if paired is not None:
                    r["ratio_to_resident_limit_paired"] = statistics.median(paired)
            if sync is not None and name.removeprefix(prefix) in ("teacache", "easycache", "easycache_max"):
                r["sync_limit_s"], r["ratio_to_sync_limit"], _ = against(c, a.steps, full, sync, r)
    ref = outs.get("unpatched")
    for name, r in results.items():
        if ref is not None and name in outs:
            r["max_abs_diff_vs_unpatched"] = (outs[name] - ref).abs().max().item()
    env = dict(torch=torch.__version__, cuda=torch.version.cuda, python=platform.python_version(),
               gpu=torch.cuda.get_device_name(0) if cuda else None, params=n_params, args=vars(a),
               comfyui=_version(a.comfyui), latent=list(latent.shape), cfg=st["cfg"], sampler="euler/simple",
               skipped_for_budget=skipped, easycache_note=ec_note, total_s=time.perf_counter() - t_start)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(dict(env=env, results=results), indent=1))
    print(f"\n{'config':<20} {'computed':>8} {'wall s':>8} {'ratio':>6} {'speedup':>7} {'peak GiB':>8} {'max|d|':>9} "
          f"{'sync ratio':>10} {'paired':>6} {'resident':>8} {'paired':>6}")
    for name, r in results.items():
        print(f"{name:<20} {r['computed_steps']:>5}/{a.steps:<2} {r['wall_s_median']:>8.3f} "
              f"{r.get('ratio_to_limit', float('nan')):>6.3f} {r.get('speedup_vs_unpatched', float('nan')):>6.2f}x "
              f"{r.get('peak_gib', float('nan')):>8.2f} {r.get('max_abs_diff_vs_unpatched', float('nan')):>9.3g} "
              f"{r.get('ratio_to_sync_limit', float('nan')):>10.3f} {r.get('ratio_paired_median', float('nan')):>6.3f} "
              f"{r.get('ratio_to_resident_limit', float('nan')):>8.3f} "
              f"{r.get('ratio_to_resident_limit_paired', float('nan')):>6.3f}")


def _version(root):
    try:
        return (Path(root) / "comfyui_version.py").read_text().split('"')[1]
    except (OSError, IndexError):
        return None


if __name__ == "__main__":
    main()
