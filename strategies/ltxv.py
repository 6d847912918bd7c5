"""LTX-Video: ``comfy.ldm.lightricks.model.LTXVModel``; LTX-2 (audio + video, ComfyUI 0.33+):
``comfy.ldm.lightricks.av_model.LTXAVModel``.

LTX-Video residual: video tokens before the first transformer block -> after the last.

LTX-2's blocks carry two streams, ``args["img"] = (video tokens, audio tokens)`` (widths differ:
4096 and 2048 in LTX-2), which attend to each other in every block. The residual covers both:
the two are packed into one zero-padded token sequence (``base.pack_streams``), so the step's
magnitude ratio is the mean over video and audio tokens together and a skipped step moves both
streams by their cached residual. Caching one stream alone would not save anything: each block
updates both. Video-only runs (no audio latent) have zero audio tokens and cache the video alone.
No published curve or TeaCache coefficients: calibrate.
"""
from __future__ import annotations

from ..magcache_core import TeaCacheParams
from .base import BlockStrategy, TeaPreset, pack_streams, unpack_streams

# github.com/welltop-cn/ComfyUI-TeaCache nodes.py at 91dff8e (threshold from its README).
TEA_LTXV = (21.4700694, -12.8016453, 2.31279151, 0.792487521, 0.00969274326)


def _rms_norm(x):
    import comfy.ldm.common_dit          # here, not at the top: the presets load without ComfyUI (diffusers_api)
    return comfy.ldm.common_dit.rms_norm(x)


class LTXVStrategy(BlockStrategy):
    name = "ltxv"
    title = "LTX-Video"
    residual = "video tokens before the first transformer block -> after the last"
    model_classes = ("comfy.ldm.lightricks.model.LTXVModel",)
    double_blocks = "transformer_blocks"
    tea_presets = {"ltxv": TeaPreset("ltxv", TeaCacheParams(0.06, TEA_LTXV), 0.0, "LTX-Video 0.9.x")}

    def detect_variant(self, model_patcher):
        return None, "ltxv", "LTX-Video"

    def modulated_input(self, dm, args):
        # The first block's attention input: rms_norm(x) * (1 + scale_msa) + shift_msa.
        block, x, t = dm.transformer_blocks[0], args["img"], args["vec"]
        table = block.scale_shift_table
        ada = table[None, None].to(device=x.device, dtype=x.dtype) + t.reshape(x.shape[0], t.shape[1], table.shape[0], -1)
        shift, scale = ada[:, :, 0], ada[:, :, 1]
        return _rms_norm(x) * (1 + scale) + shift


class LTXAVStrategy(BlockStrategy):
    name = "ltx2"
    title = "LTX-2 (audio + video)"
    residual = ("video and audio tokens before the first transformer block -> after the last "
                "(one zero-padded sequence)")
    model_classes = ("comfy.ldm.lightricks.av_model.LTXAVModel",)
    double_blocks = "transformer_blocks"

    def detect_variant(self, model_patcher):
        dm = model_patcher.model.diffusion_model
        return None, None, f"LTX-2 (video width {dm.inner_dim}, audio width {dm.audio_inner_dim}, {dm.num_layers} blocks)"

    def stream_in(self, key, args):
        return pack_streams(args["img"])

    def stream_out(self, key, out, n_tokens):
        return pack_streams(out["img"])

    def with_stream(self, key, args, stream):
        return {"img": unpack_streams(stream, args["img"])}

    def modulated_input(self, dm, args):
        # Each stream's attention input in the first block: rms_norm(x) * (1 + scale_msa) + shift_msa.
        block = dm.transformer_blocks[0]
        parts = []
        for x, table, t in zip(args["img"], (block.scale_shift_table, block.audio_scale_shift_table),
                               (args["v_timestep"], args["a_timestep"])):
            if x.shape[1] == 0:
                continue
            shift, scale = block.get_ada_values(table, x.shape[0], t, slice(0, 2))
            parts.append(_rms_norm(x) * (1 + scale) + shift)
        return pack_streams(parts)
