"""What the GPU and cost benches share: real ComfyUI from a given tree on sys.path (CPU mode where there is no
CUDA), calibrations in a temp folder, the pack loaded as ComfyUI loads a custom node package, and a handler
that keeps the pack's log lines (its per-run summary says which steps were computed); the FLUX.1-dev and Wan 2.1
14B model configs (and their tiny forms for CPU smoke tests)."""
from __future__ import annotations

import importlib.util
import logging
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The pack's per-run summary line: "computed C/N steps [..]".
SUMMARY_RE = re.compile(r"computed (\d+)/(\d+) steps (\[[0-9, ]*\])")

FLUX_DEV = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=19, depth_single_blocks=38,
                axes_dim=[16, 56, 56], theta=10000, qkv_bias=True, guidance_embed=True, patch_size=2)
WAN_14B = dict(image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=5120,
               ffn_dim=13824, freq_dim=256, text_dim=4096, out_dim=16, num_heads=40, num_layers=40,
               window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6)
TINY = {"flux": dict(FLUX_DEV, vec_in_dim=32, context_in_dim=48, hidden_size=64, mlp_ratio=2.0, num_heads=2,
                     depth=2, depth_single_blocks=2, axes_dim=[8, 12, 12]),
        "wan14b": dict(WAN_14B, dim=64, ffn_dim=128, freq_dim=32, text_dim=48, num_heads=2, num_layers=2)}


class Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    @classmethod
    def pack_log(cls) -> "Capture":
        """A handler keeping the pack's log lines (and only here: they are not passed on to the root logger)."""
        cap = cls()
        lg = logging.getLogger("comfyui-magcache")
        lg.addHandler(cap)
        lg.setLevel(logging.INFO)
        lg.propagate = False
        return cap


def load(comfy_root) -> tuple[bool, object]:
    """Import ComfyUI from ``comfy_root`` and the pack; returns (CUDA available, the pack module)."""
    comfy_root = str(Path(comfy_root).resolve())
    if comfy_root not in sys.path:
        sys.path.insert(0, comfy_root)
    import torch
    import comfy.cli_args
    cuda = torch.cuda.is_available()
    if not cuda:
        comfy.cli_args.args.cpu = True
    import comfy.model_management  # noqa: F401
    import folder_paths
    folder_paths.set_user_directory(tempfile.mkdtemp(prefix="magcache-bench-user-"))
    spec = importlib.util.spec_from_file_location("comfyui_magcache", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_magcache"] = pack
    spec.loader.exec_module(pack)
    return cuda, pack


def random_model(kind: str, config: dict, device, dtype, seed: int = 0):
    """ComfyUI's own FLUX ("flux") or Wan 2.1 T2V (any other ``kind``) model class built from ``config`` (fitted to
    this ComfyUI's parameters), its weights drawn normal(0, 0.02) from ``seed``: a ModelPatcher on ``device``."""
    import torch
    import comfy.model_patcher
    import comfy.supported_models as sm
    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))
    from tiny_zoo import fitted          # the config fitted to this ComfyUI's parameters (0.33 adds txt_ids_dims)
    mc = (sm.Flux if kind == "flux" else sm.WAN21_T2V)(fitted(config))
    mc.set_inference_dtype(dtype, None)
    model = mc.get_model({}, device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for prm in model.diffusion_model.parameters():
            prm.normal_(0.0, 0.02, generator=g)
    model.diffusion_model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)
