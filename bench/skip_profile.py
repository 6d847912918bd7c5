"""Where the host's time goes on skipped steps (FLUX.1-dev size, random bf16 weights, 28 steps): per config
(identity, identity_sync, MagCache, TeaCache; see gpu_last_percent.py) the host time of every step (median of 3
runs, each after gc.collect() and gc.freeze()), then one more run under cProfile, profiling the skipped steps
only (switched on and off in the sampler's step callback), its 30 largest self times.

    python bench/skip_profile.py PATH_TO_COMFYUI            # on the GPU machine
    python bench/skip_profile.py PATH_TO_COMFYUI --tiny     # CPU smoke test
"""
import sys, time, json, cProfile, pstats, io, gc, statistics as S
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from comfy_setup import FLUX_DEV, TINY, SUMMARY_RE, Capture, load, random_model
tiny = "--tiny" in sys.argv
cuda, pack = load(sys.argv[1])
import torch, comfy.sample
import gpu_last_percent as g
from comfyui_magcache.strategies import detect
dev = torch.device("cuda" if cuda else "cpu"); dtype = torch.bfloat16
cfg = TINY["flux"] if tiny else FLUX_DEV
base = random_model("flux", cfg, dev, dtype, 0)
st = detect(base); nodes = pack.NODE_CLASS_MAPPINGS
cap = Capture.pack_log()
gcn = torch.Generator().manual_seed(1)
mk = lambda: [[torch.randn(1, 512, cfg["context_in_dim"], generator=gcn).to(dtype), {"pooled_output": torch.randn(1, cfg["vec_in_dim"], generator=gcn), "guidance": 3.5}]]
pos, neg = mk(), mk()
side = 8 if tiny else 128
latent = torch.zeros(1, 16, side, side); noise = comfy.sample.prepare_noise(latent, 2)
configs = {"identity": g.identity_patches(base, st), "identity_sync": g.identity_sync_patches(base, st),
           "magcache": nodes["MagCacheApply"]().apply(base, "flux", 0.24, 0.1, 5)[0],
           "teacache": nodes["TeaCacheApply"]().apply(base, "flux", 0.6)[0]}
def run(m, prof=None, skipped=()):
    marks = []; on = [False]
    def cb(i, *r):
        marks.append(time.perf_counter())
        if prof is not None:
            want = i + 1 in skipped
            if want and not on[0]: prof.enable()
            elif on[0] and not want: prof.disable()
            on[0] = want
    gc.collect(); gc.freeze()
    if cuda: torch.cuda.synchronize()
    marks.append(time.perf_counter())
    n = len(cap.lines)
    comfy.sample.sample(m, noise, 28, 1.0, "euler", "simple", pos, neg, latent, disable_pbar=True, seed=2, callback=cb)
    if prof is not None and on[0]: prof.disable()
    if cuda: torch.cuda.synchronize()
    gc.unfreeze()
    computed = list(range(28))
    for ln in cap.lines[n:]:
        mm = SUMMARY_RE.search(ln)
        if mm: computed = json.loads(mm.group(3))
    return [(marks[i + 1] - marks[i]) * 1000 for i in range(len(marks) - 1)], computed
for name, m in configs.items():
    times, computed = run(m)
    if name.startswith("identity"): computed = [0, 1]
    skipped = [i for i in range(2, 28) if i not in computed]
    reps = [run(m)[0] for _ in range(3)]
    per = [S.median(x) for x in zip(*reps)]
    pr = cProfile.Profile()
    run(m, pr, set(skipped))
    out = io.StringIO()
    ps = pstats.Stats(pr, stream=out); ps.sort_stats("tottime").print_stats(30)
    print(f"\n=== {name}: skipped steps {skipped}; host ms per step (median of 3):", [round(x, 2) for x in per])
    print(f"    skipped steps: median host ms {S.median(per[i] for i in skipped):.2f}; profiled calls {ps.total_calls} "
          f"({ps.total_calls / max(len(skipped), 1):.0f} per skipped step), profiled time {ps.total_tt * 1000:.1f} ms")
    print("\n".join(out.getvalue().splitlines()[6:40]))
