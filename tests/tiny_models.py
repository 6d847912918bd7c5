"""Real ComfyUI model classes at tiny sizes with seeded random weights, and a sampling helper."""
from __future__ import annotations

import torch

import comfy.model_base
import comfy.model_patcher
import comfy.sample
import comfy.supported_models
from tiny_zoo import fitted

CPU = torch.device("cpu")

FLUX_CONFIG = dict(image_model="flux", guidance_embed=True, in_channels=16, out_channels=16, vec_in_dim=32,
                   context_in_dim=48, hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=2, depth_single_blocks=2,
                   axes_dim=[8, 12, 12], theta=10000, qkv_bias=True, patch_size=2)
WAN_CONFIG = dict(image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), text_len=16, in_dim=16, dim=64,
                  ffn_dim=128, freq_dim=32, text_dim=48, out_dim=16, num_heads=2, num_layers=3, window_size=(-1, -1),
                  qk_norm=True, cross_attn_norm=True, eps=1e-6)


def _patcher(config_cls, unet_config, seed):
    torch.manual_seed(seed)
    cfg = config_cls(fitted(unet_config))
    cfg.set_inference_dtype(torch.float32, None)
    model = cfg.get_model({}, device=CPU)
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.normal_(0, 0.05)
    model.diffusion_model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=CPU, offload_device=CPU)


def tiny_flux(seed=0, **overrides):
    return _patcher(comfy.supported_models.Flux, {**FLUX_CONFIG, **overrides}, seed)


def tiny_wan(seed=0, **overrides):
    return _patcher(comfy.supported_models.WAN21_T2V, {**WAN_CONFIG, **overrides}, seed)


def conds(model, seed=1, tokens=6):
    """(positive, negative) in ComfyUI's CONDITIONING format for the model's family."""
    g = torch.Generator().manual_seed(seed)
    dm = model.model.diffusion_model
    if hasattr(dm, "double_blocks"):
        width = FLUX_CONFIG["context_in_dim"]
        extra = lambda: {"pooled_output": torch.randn(1, FLUX_CONFIG["vec_in_dim"], generator=g), "guidance": 3.5}  # noqa: E731
    else:
        width = WAN_CONFIG["text_dim"]
        extra = dict
    pos = [[torch.randn(1, tokens, width, generator=g), extra()]]
    neg = [[torch.randn(1, tokens, width, generator=g), extra()]]
    return pos, neg


def latent(model, size=16, seed=2, batch=1):
    g = torch.Generator().manual_seed(seed)
    if hasattr(model.model.diffusion_model, "double_blocks"):
        return torch.randn(batch, 16, size, size, generator=g) * 0  # empty latent, as EmptySD3LatentImage
    return torch.zeros(batch, 16, 1, size, size)


def sample(model, steps=8, cfg=1.0, seed=3, size=16, sampler="euler", scheduler="simple", callback=None,
           positive=None, negative=None, denoise=1.0):
    lat = latent(model, size)
    if positive is None:
        positive, negative = conds(model)
    noise = comfy.sample.prepare_noise(lat, seed)
    return comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative, lat,
                               denoise=denoise, callback=callback, disable_pbar=True, seed=seed)


def _pytorch_attention(func, *args, **kwargs):
    import comfy.ldm.modules.attention as attention
    return attention.attention_pytorch(*args, **kwargs)


def with_pytorch_attention(model):
    """A clone of ``model`` whose attention is PyTorch's SDPA, through ComfyUI's own per-model option
    (transformer_options["optimized_attention_override"]). On the CPU ComfyUI picks sub-quadratic attention,
    which reads the host's free memory into the traced graph: dynamo guards on that number and recompiles
    whenever it moves, so graph counts taken with it depend on what else the machine is doing. On CUDA
    ComfyUI picks SDPA itself."""
    m = model.clone()
    m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = _pytorch_attention
    return m


def dynamo_counts(model, runs=3, steps=10):
    """Samples ``model`` (under ComfyUI's torch.compile wrapper, with PyTorch's attention: see
    with_pytorch_attention) ``runs`` times from a fresh dynamo: the set of graph-break reasons, and the count of
    unique graphs after each run (constant = nothing recompiled)."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    model = with_pytorch_attention(model)
    torch._dynamo.reset()
    counters.clear()
    graphs = []
    for _ in range(runs):
        sample(model, steps=steps)
        graphs.append(counters["stats"]["unique_graphs"])
    return set(counters["graph_break"]), graphs
