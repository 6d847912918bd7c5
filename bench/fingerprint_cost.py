"""What the fingerprint of 'auto' (nodes/auto.py ``weights_fingerprint``) costs on a FLUX.1-dev-sized model.

A real ComfyUI FLUX.1 dev model (11.9 B parameters, bf16, random weights; --hidden keeps its layout, every one of
its 780 tensors, at a smaller width) is built through ComfyUI's own classes on the GPU (else the CPU), and a rank-R LoRA over every 2-D weight of its blocks is loaded through ``comfy.lora.load_lora`` (the
LoraLoader path) and added to a clone with ``add_patches``. Timed, each the median of --reps calls after one
untimed call (the first call is reported too):

  gpu                weights on the GPU, no patches
  gpu_lora           the same with the LoRA patches (their tensors on the GPU)
  gpu_lora_applied   the LoRA clone loaded: ComfyUI patched the weights, the originals sit in its backup
  cpu                the model moved to CPU memory (as offloaded), no patches
  cpu_lora           the same with the LoRA patches on the CPU

It also checks that the fingerprint is the same whether or not the LoRA is applied to the weights.

    python bench/fingerprint_cost.py --comfyui PATH/TO/ComfyUI --out result.json [--hidden 1024] [--tiny]

The fingerprint reads a fixed number of elements per tensor, so its cost follows the number of tensors, not their
size: compare two --hidden values to see it (docs/benchmarks/fingerprint_cost.md).
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from comfy_setup import FLUX_DEV, TINY, load, random_model  # noqa: E402


def timed(fn, reps):
    import torch
    out, times, cpu = None, [], []
    for _ in range(reps + 1):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    # process time: the CPU time of this process (all its threads), less sensitive than wall time to other
    # processes on a shared machine.
    return out, {"first_s": round(times[0], 4), "median_s": round(statistics.median(times[1:]), 4),
                 "max_s": round(max(times[1:]), 4), "process_median_s": round(statistics.median(cpu[1:]), 4)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--comfyui", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--tiny", action="store_true", help="tiny FLUX on the CPU (smoke test)")
    p.add_argument("--hidden", type=int, default=3072, help="FLUX.1 dev's layout (every tensor of it) at another "
                   "width, heads of 128: 1024 gives 1.4 B parameters in 2.7 GB, for a machine without 24 GB to spare")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cuda, pack = load(a.comfyui)
    import torch
    import comfy.lora
    import comfy.utils
    from comfyui_magcache.nodes.auto import weights_fingerprint

    dev = torch.device("cuda") if cuda else torch.device("cpu")
    config = TINY["flux"] if a.tiny else dict(FLUX_DEV, hidden_size=a.hidden, num_heads=a.hidden // 128)
    base = random_model("flux", config, dev, torch.bfloat16)
    model, dm = base.model, base.model.diffusion_model
    params = list(dm.parameters())
    result = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if cuda else "cpu",
              "params": sum(x.numel() for x in params), "tensors": len(params) + len(list(dm.buffers())),
              "bytes": sum(x.numel() * x.element_size() for x in params), "rank": a.rank,
              "hidden": config["hidden_size"], "threads": torch.get_num_threads()}

    # A rank-R LoRA on every 2-D weight of the blocks, loaded the way LoraLoader loads a file.
    key_map = comfy.lora.model_lora_keys_unet(model, {})
    sd = model.state_dict()
    lora, g = {}, torch.Generator(device=dev).manual_seed(1)
    for lora_key, key in key_map.items():
        w = sd.get(key)
        if lora_key.startswith("lora_unet_") and w is not None and w.ndim == 2 and "blocks" in key:
            lora[f"{lora_key}.lora_up.weight"] = torch.randn(w.shape[0], a.rank, generator=g, device=dev,
                                                             dtype=torch.bfloat16) * 0.01
            lora[f"{lora_key}.lora_down.weight"] = torch.randn(a.rank, w.shape[1], generator=g, device=dev,
                                                               dtype=torch.bfloat16) * 0.01
            lora[f"{lora_key}.alpha"] = torch.tensor(float(a.rank))
    patches = comfy.lora.load_lora(lora, key_map, log_missing=False)
    with_lora = base.clone()
    result["lora_keys"] = len(with_lora.add_patches(patches, 1.0))

    plain, result["gpu" if cuda else "cpu_only"] = timed(lambda: weights_fingerprint(base), a.reps)
    patched, result["gpu_lora" if cuda else "cpu_only_lora"] = timed(lambda: weights_fingerprint(with_lora), a.reps)
    # Load the LoRA clone: ComfyUI patches the weights and backs up the originals.
    with_lora.patch_model(device_to=dev)
    key0 = next(iter(patches))
    result["weights_patched_now"] = len(with_lora.backup)
    assert not torch.equal(with_lora.backup[key0].weight, comfy.utils.get_attr(model, key0)), "not patched in"
    applied, result["gpu_lora_applied" if cuda else "cpu_only_lora_applied"] = timed(
        lambda: weights_fingerprint(with_lora), a.reps)
    result["same_fingerprint_applied_or_not"] = applied == patched
    result["base_fingerprint_while_lora_applied_unchanged"] = weights_fingerprint(base) == plain
    with_lora.unpatch_model()
    if cuda:          # the same model offloaded to CPU memory
        dm.to("cpu")
        patches_cpu = comfy.lora.load_lora({k: v.cpu() for k, v in lora.items()}, key_map, log_missing=False)
        lora_cpu = base.clone()
        lora_cpu.add_patches(patches_cpu, 1.0)
        torch.cuda.empty_cache()
        cpu_plain, result["cpu"] = timed(lambda: weights_fingerprint(base), a.reps)
        cpu_patched, result["cpu_lora"] = timed(lambda: weights_fingerprint(lora_cpu), a.reps)
        result["same_fingerprint_gpu_or_cpu"] = cpu_plain == plain and cpu_patched == patched
    print(json.dumps(result, indent=1))
    Path(a.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
