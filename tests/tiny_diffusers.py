"""Tiny diffusers transformers (from config, seeded random weights) in their real pipelines (FluxPipeline,
WanPipeline, QwenImagePipeline) with precomputed prompt embeddings and no VAE (``output_type="latent"``), and a
recorder of the steps on which the blocks really ran. Each pipeline call runs diffusers' own denoising loop:
``scheduler.set_timesteps``, ``cache_context("cond" / "uncond")`` around each transformer call, CFG as two calls
per step, ``maybe_free_model_hooks`` at the end."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import (FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel, QwenImagePipeline,
                       QwenImageTransformer2DModel, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel)


def flux_transformer(seed=0):
    torch.manual_seed(seed)
    return FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                                  attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                  pooled_projection_dim=24, guidance_embeds=True, axes_dims_rope=(4, 6, 6)).eval()


def wan_transformer(seed=0):
    torch.manual_seed(seed)
    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                 out_channels=4, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=3,
                                 rope_max_seq_len=32).eval()


def qwen_transformer(seed=0):
    torch.manual_seed(seed)
    return QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=3, attention_head_dim=16,
                                       num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 6, 6)).eval()


@dataclass
class Tiny:
    """One family: its pipeline around a tiny transformer, and how to run it."""

    family: str
    pipe: object

    @property
    def transformer(self):
        return self.pipe.transformer

    @property
    def scheduler(self):
        return self.pipe.scheduler

    def head_and_tail(self):
        """Submodules inside the first and the last block: they run only when that block computes."""
        t = self.transformer
        if self.family == "wan":
            return t.blocks[0].attn1, t.blocks[-1].attn1
        last = t.single_transformer_blocks[-1] if self.family == "flux" else t.transformer_blocks[-1]
        return t.transformer_blocks[0].attn, last.attn

    def run(self, steps=10, cfg=False, dtype=torch.float32, seed=2, **kw):
        """The pipeline's output latents; ``cfg``: with a negative prompt (two transformer calls per step)."""
        g = torch.Generator().manual_seed(1)
        emb = torch.randn(1, 6, 32, generator=g, dtype=torch.float32)
        neg = torch.randn(1, 6, 32, generator=g, dtype=torch.float32)
        common = dict(num_inference_steps=steps, output_type="latent", generator=torch.Generator().manual_seed(seed), **kw)
        if self.family == "flux":
            pooled = torch.randn(1, 24, generator=g)
            extra = dict(negative_prompt_embeds=neg.to(dtype), negative_pooled_prompt_embeds=-pooled.to(dtype),
                         true_cfg_scale=2.0) if cfg else {}
            return self.pipe(prompt_embeds=emb.to(dtype), pooled_prompt_embeds=pooled.to(dtype), height=64, width=64,
                             **extra, **common).images
        if self.family == "wan":
            extra = dict(negative_prompt_embeds=neg, guidance_scale=5.0) if cfg else dict(guidance_scale=1.0)
            return self.pipe(prompt_embeds=emb, height=32, width=32, num_frames=5, **extra, **common).frames
        mask = torch.ones(1, 6, dtype=torch.long)
        extra = dict(negative_prompt_embeds=neg, negative_prompt_embeds_mask=mask, true_cfg_scale=4.0) if cfg \
            else dict(true_cfg_scale=1.0)
        return self.pipe(prompt_embeds=emb, prompt_embeds_mask=mask, height=64, width=64, **extra, **common).images


def tiny(family: str, seed=0) -> Tiny:
    if family == "flux":
        pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None, tokenizer=None,
                            text_encoder_2=None, tokenizer_2=None, transformer=flux_transformer(seed))
    elif family == "wan":
        pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=wan_transformer(seed),
                           scheduler=UniPCMultistepScheduler(flow_shift=3.0, use_flow_sigmas=True,
                                                             prediction_type="flow_prediction"))
    else:
        pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None,
                                 tokenizer=None, transformer=qwen_transformer(seed))
    pipe.set_progress_bar_config(disable=True)
    return Tiny(family, pipe)


class BlockSteps:
    """The denoising steps on which the first and the last block really ran, seen from inside the blocks; the
    step comes from the pipeline's own loop (its ``callback_on_step_end``), not from the cache. Pass
    ``callback_on_step_end=rec.callback`` to the pipeline call."""

    def __init__(self, model: Tiny):
        self.step = 0
        self.head, self.tail = [], []
        head, tail = model.head_and_tail()
        self._handles = [head.register_forward_hook(lambda *a: self.head.append(self.step)),
                         tail.register_forward_hook(lambda *a: self.tail.append(self.step))]

    def callback(self, pipe, i, t, kwargs):
        self.step = i + 1
        return {}

    @property
    def steps(self) -> list[int]:
        assert self.head == self.tail, "the first and the last block ran on different calls"
        return sorted(set(self.head))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
