"""Where TeaCache's time goes against MagCache and the limit, on the GPU's own timeline (FLUX.1-dev size, random bf16
weights, 28 steps). Each config (unpatched, identity, MagCache, TeaCache) runs once as a warm-up, three times with
timers around the pack's per-call functions (their unprofiled host time per call, and the SM clock at each step's
end), then once under torch.profiler with CUDA activity. From the profiled run, per kind of step (computed /
skipped, as the pack's summary says): the host time of the steps, the GPU's busy time (the kernels and copies the
step launched, overlaps merged), the GPU's idle time inside the step, and the host time spent in synchronising CUDA
calls; per pack function (the TeaCache indicator, the decision, ``enter_blocks``...): its host time, the GPU time of
the kernels it launched, and the torch ops it called. After the TeaCache runs: the indicator and the decision timed
alone in a loop, and how ComfyUI runs the first block's modulation layer (weight casting, weight functions, device)
during a run and after it. The timers and profiler ranges are put around the pack's functions by this script, for
the measurement only; the traces are analysed and deleted (``tea_timeline.json`` keeps the figures).

    python bench/tea_timeline.py PATH_TO_COMFYUI --out DIR          # on the GPU machine
    python bench/tea_timeline.py PATH_TO_COMFYUI --out DIR --tiny   # CPU smoke test (no GPU timeline)
"""
from __future__ import annotations

import argparse
import bisect
import functools
import gc
import inspect
import json
import statistics as S
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from comfy_setup import FLUX_DEV, SUMMARY_RE, TINY, Capture, load, random_model  # noqa: E402

SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy",
              "cudaMemcpyAsync")


HOST: dict = {}            # name -> host seconds of each call, while TIMING[0] (the unprofiled runs)
TIMING = [False]


def ranged(fn, name):
    """``fn`` inside a profiler range, and its host time kept in HOST while TIMING[0]."""
    import torch

    @functools.wraps(fn)
    def inner(*a, **k):
        if TIMING[0]:
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                HOST.setdefault(name, []).append(time.perf_counter() - t)
        with torch.profiler.record_function(f"mc::{name}"):
            return fn(*a, **k)
    return inner


CAPTURED: list = []         # (dm, args) of the first block's last TeaCache call
FLAGS: dict = {}            # how ComfyUI runs the first block's modulation layer, during a run and after


def lin_flags(dm) -> dict:
    lin = dm.double_blocks[0].img_mod.lin
    return dict(comfy_cast_weights=bool(getattr(lin, "comfy_cast_weights", None)),
                weight_function=len(getattr(lin, "weight_function", []) or []),
                bias_function=len(getattr(lin, "bias_function", []) or []), weight_device=str(lin.weight.device),
                weight_dtype=str(lin.weight.dtype), type=type(lin).__module__ + "." + type(lin).__qualname__)


def micro(captured, strategy, cuda, n: int = 300) -> dict:
    """The indicator and the distance (its decision, with the read) alone, in a loop after the runs: host time per
    call, and per call until the device is done. Against the same functions' host time inside a run, this shows
    how much of that is the function itself."""
    import torch
    from comfyui_magcache.magcache_core.teacache import TeaCacheParams, TeaCacheRule
    dm, args = captured
    indicator = inspect.unwrap(type(strategy).modulated_input)      # without this script's ranges
    decide_all = inspect.unwrap(TeaCacheRule.decide_all)
    x = indicator(strategy, dm, args)
    rule = TeaCacheRule(TeaCacheParams(1e9), 0, 10 ** 9)
    rule.decide_all(1, [(0, x + 0.01)])
    forms = {"indicator": lambda: indicator(strategy, dm, args), "distance": lambda: decide_all(rule, 5, [(0, x)])}
    out = {}
    with torch.inference_mode():
        for name, f in forms.items():
            for _ in range(20):
                f()
            host, total = [], []
            for _ in range(5):
                if cuda:
                    torch.cuda.synchronize()
                t = time.perf_counter()
                for _ in range(n):
                    f()
                h = time.perf_counter()
                if cuda:
                    torch.cuda.synchronize()
                host.append((h - t) / n * 1e6)
                total.append((time.perf_counter() - t) / n * 1e6)
            out[name] = dict(host_us=round(S.median(host), 1), until_done_us=round(S.median(total), 1))
    return out


def instrument(strategy):
    """Profiler ranges and host timers around the pack's per-call functions (this process only, for the
    measurement)."""
    from comfyui_magcache.magcache_core import run, teacache
    run.RunState.enter_blocks = ranged(run.RunState.enter_blocks, "enter_blocks")
    run.RunState.leave_blocks = ranged(run.RunState.leave_blocks, "leave_blocks")
    run.RunState.end_call = ranged(run.RunState.end_call, "end_call")
    teacache.TeaCacheRule.decide_all = ranged(teacache.TeaCacheRule.decide_all, "tea_decide")
    cls = type(strategy)
    cls.modulated_input = ranged(cls.modulated_input, "indicator")
    inner = cls.modulated_input

    @functools.wraps(inner)
    def keep(self, dm, args):
        if not CAPTURED:
            FLAGS["in_run"] = lin_flags(dm)
        CAPTURED[:] = [(dm, args)]
        return inner(self, dm, args)
    cls.modulated_input = keep


def merged(spans):
    """Total length of the union of (start, end) spans."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(spans):
        if s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def analyse(trace: dict, computed: list[int], steps: int) -> dict:
    ev = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    ann = sorted((e for e in ev if e.get("cat") == "user_annotation" and e["name"].startswith("step")),
                 key=lambda e: e["ts"])
    gpu = [e for e in ev if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    launches = sorted((e for e in ev if e.get("cat") in ("cuda_runtime", "cuda_driver")), key=lambda e: e["ts"])
    starts = [e["ts"] for e in launches]
    by_corr: dict = {}
    for k in gpu:
        by_corr.setdefault(k["args"].get("correlation"), []).append(k)

    def launched(t0, t1):
        """The GPU work launched by runtime calls made between host times t0 and t1."""
        return [k for l in launches[bisect.bisect_left(starts, t0):bisect.bisect_left(starts, t1)]
                for k in by_corr.get(l["args"].get("correlation"), [])]
    syncs = [e for e in ev if e.get("cat") in ("cuda_runtime", "cuda_driver") and e["name"] in SYNC_CALLS]
    mc = [e for e in ev if e.get("cat") == "user_annotation" and e["name"].startswith("mc::")]
    per_step = []
    for a in ann:
        i = int(a["name"][4:])
        t0, t1 = a["ts"], a["ts"] + a["dur"]
        mine = launched(t0, t1)
        busy = merged([(k["ts"], k["ts"] + k["dur"]) for k in mine])
        span = (max(k["ts"] + k["dur"] for k in mine) - min(k["ts"] for k in mine)) if mine else 0.0
        wait = sum(e["dur"] for e in syncs if t0 <= e["ts"] < t1)
        per_step.append(dict(step=i, host_ms=a["dur"] / 1e3, gpu_busy_ms=busy / 1e3, gpu_span_ms=span / 1e3,
                             gpu_idle_in_span_ms=(span - busy) / 1e3, sync_wait_ms=wait / 1e3, kernels=len(mine),
                             computed=i in computed))
    ops = sorted((e for e in ev if e.get("cat") == "cpu_op"), key=lambda e: e["ts"])
    op_starts = [e["ts"] for e in ops]
    inside: dict = {}
    for e in mc:                        # the host time of the torch ops each pack range calls, by op (top level)
        t0, t1 = e["ts"], e["ts"] + e["dur"]
        agg = inside.setdefault(e["name"][4:], {})
        end = float("-inf")
        for o in ops[bisect.bisect_left(op_starts, t0):bisect.bisect_left(op_starts, t1)]:
            if o["ts"] < end:           # nested in the previous top-level op
                continue
            end = o["ts"] + o["dur"]
            a = agg.setdefault(o["name"], [0, 0.0])
            a[0] += 1
            a[1] += o["dur"]
    ranges: dict = {}
    for e in mc:
        t0, t1 = e["ts"], e["ts"] + e["dur"]
        ks = launched(t0, t1)
        r = ranges.setdefault(e["name"][4:], dict(calls=0, host_ms=0.0, gpu_ms=0.0, kernels=0, sync_wait_ms=0.0))
        r["calls"] += 1
        r["host_ms"] += e["dur"] / 1e3
        r["gpu_ms"] += sum(k["dur"] for k in ks) / 1e3
        r["kernels"] += len(ks)
        r["sync_wait_ms"] += sum(s["dur"] for s in syncs if t0 <= s["ts"] < t1) / 1e3
    kinds = {}
    for name, pick in (("computed", True), ("skipped", False)):
        rows = [p for p in per_step if p["computed"] == pick]
        if rows:
            kinds[name] = {f: dict(sum=round(sum(p[f] for p in rows), 3), median=round(S.median(p[f] for p in rows), 3))
                           for f in ("host_ms", "gpu_busy_ms", "gpu_span_ms", "gpu_idle_in_span_ms", "sync_wait_ms",
                                     "kernels")}
            kinds[name]["steps"] = len(rows)
    all_gpu = merged([(k["ts"], k["ts"] + k["dur"]) for k in gpu])
    first = min((a["ts"] for a in ann), default=0.0)
    last = max((a["ts"] + a["dur"] for a in ann), default=0.0)
    range_ops = {k: {n: dict(calls=c, host_ms=round(d / 1e3, 3)) for n, (c, d) in
                     sorted(v.items(), key=lambda kv: -kv[1][1])[:12]} for k, v in inside.items()}
    return dict(by_kind=kinds, range_ops=range_ops, pack_ranges={k: {f: round(v, 3) if isinstance(v, float) else v for f, v in r.items()}
                                            for k, r in ranges.items()},
                gpu_busy_total_ms=round(all_gpu / 1e3, 3), host_steps_total_ms=round((last - first) / 1e3, 3),
                per_step=[{k: round(v, 3) if isinstance(v, float) else v for k, v in p.items()} for p in per_step])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("comfyui")
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--steps", type=int, default=28)
    p.add_argument("--configs", default="unpatched,identity,magcache,teacache")
    a = p.parse_args()
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cuda, pack = load(a.comfyui)
    import torch
    import comfy.sample
    import gpu_last_percent as g
    from comfyui_magcache.strategies import detect
    dev = torch.device("cuda" if cuda else "cpu")
    cfg = TINY["flux"] if a.tiny else FLUX_DEV
    base = random_model("flux", cfg, dev, torch.bfloat16, 0)
    strategy = detect(base)
    instrument(strategy)
    nodes = pack.NODE_CLASS_MAPPINGS
    cap = Capture.pack_log()
    gcn = torch.Generator().manual_seed(1)
    mk = lambda: [[torch.randn(1, 512, cfg["context_in_dim"], generator=gcn).to(torch.bfloat16),  # noqa: E731
                   {"pooled_output": torch.randn(1, cfg["vec_in_dim"], generator=gcn), "guidance": 3.5}]]
    pos, neg = mk(), mk()
    side = 8 if a.tiny else 128
    latent = torch.zeros(1, 16, side, side)
    noise = comfy.sample.prepare_noise(latent, 2)
    st = g.SETTINGS["flux"]
    makers = {"unpatched": lambda: base, "identity": lambda: g.identity_patches(base, strategy),
              "magcache": lambda: nodes["MagCacheApply"]().apply(base, st["preset"], *st["mag"])[0],
              "teacache": lambda: nodes["TeaCacheApply"]().apply(base, st["preset"], st["tea"])[0]}
    def clock():
        try:
            return torch.cuda.clock_rate() if cuda else None
        except Exception as e:           # pynvml missing
            return repr(e)[:80]

    results = {}
    for name in a.configs.split(","):
        m = makers[name]()

        def run(prof=None, clocks=None):
            current = [None]

            def cb(i, *rest):
                if clocks is not None:
                    clocks.append(clock())
                if prof is not None:
                    if current[0] is not None:
                        current[0].__exit__(None, None, None)
                    if i + 1 < a.steps:
                        current[0] = torch.profiler.record_function(f"step{i + 1}")
                        current[0].__enter__()
                    else:
                        current[0] = None
            n = len(cap.lines)
            gc.collect()
            gc.freeze()
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            if prof is not None:
                current[0] = torch.profiler.record_function("step0")
                current[0].__enter__()
            comfy.sample.sample(m, noise, a.steps, 1.0, "euler", "simple", pos, neg, latent, disable_pbar=True,
                                seed=2, callback=cb)
            if current[0] is not None:
                current[0].__exit__(None, None, None)
            if cuda:
                torch.cuda.synchronize()
            wall = time.perf_counter() - t
            gc.unfreeze()
            computed = list(range(a.steps))
            for ln in cap.lines[n:]:
                mm = SUMMARY_RE.search(ln)
                if mm:
                    computed = json.loads(mm.group(3))
            if name == "identity":
                computed = []
            return wall, computed

        run()
        HOST.clear()
        TIMING[0] = True
        clock_runs = [[] for _ in range(3)]
        walls = [run(clocks=c)[0] for c in clock_runs]
        TIMING[0] = False
        host_us = {k: dict(calls=len(v), median_us=round(S.median(v) * 1e6, 1), total_ms=round(sum(v) / len(walls) * 1e3, 3))
                   for k, v in HOST.items()}
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        with torch.profiler.profile(activities=acts) as prof:
            wall_prof, computed = run(prof)
        path = out_dir / f"trace_{name}.json"
        prof.export_chrome_trace(str(path))
        trace = json.loads(path.read_text())
        path.unlink()
        r = analyse(trace, computed, a.steps)
        r.update(wall_s=[round(w, 4) for w in walls], wall_profiled_s=round(wall_prof, 4), computed=computed,
                 host_unprofiled=host_us, sm_clock_mhz=clock_runs)
        results[name] = r
        print(f"=== {name}: wall {[round(w, 4) for w in walls]} s (profiled {wall_prof:.4f}), computed {computed}")
        for kind, v in r["by_kind"].items():
            print(f"  {kind:9s} steps {v['steps']:2d}: " + ", ".join(f"{f} sum {v[f]['sum']:.2f} med {v[f]['median']:.3f}"
                                                         for f in ("host_ms", "gpu_busy_ms", "gpu_idle_in_span_ms",
                                                                   "sync_wait_ms", "kernels")))
        for k, v in r["pack_ranges"].items():
            print(f"  pack {k:13s}: {v}")
        for k, v in r["range_ops"].items():
            print(f"  ops in {k:13s}: " + ", ".join(f"{n} {d['calls']}x {d['host_ms']:.2f} ms" for n, d in v.items()))
        for k, v in host_us.items():
            print(f"  unprofiled host {k:13s}: {v} (total_ms: per run)")
        print(f"  SM clock MHz at each step's end (first unprofiled run): {clock_runs[0]}")
        print(f"  GPU busy total {r['gpu_busy_total_ms']:.1f} ms of host steps {r['host_steps_total_ms']:.1f} ms",
              flush=True)
    if "teacache" in results and CAPTURED:
        FLAGS["after"] = lin_flags(CAPTURED[-1][0])
        results["micro"] = micro(CAPTURED[-1], strategy, cuda)
        results["lin_flags"] = FLAGS
        print("img_mod.lin:", FLAGS, flush=True)
        print("micro (host us per call, and with the device's work / call):", results["micro"], flush=True)
    env = dict(torch=torch.__version__, gpu=torch.cuda.get_device_name() if cuda else "cpu", tiny=a.tiny,
               date=time.strftime("%Y-%m-%d"))
    (out_dir / "tea_timeline.json").write_text(json.dumps(dict(env=env, results=results), indent=1))


if __name__ == "__main__":
    main()
