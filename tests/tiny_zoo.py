"""A zoo of tiny ComfyUI models: ComfyUI's own model classes (0.3.75) at toy sizes, random weights, CPU float32.

Each ``ZOO`` entry names a ``comfy.supported_models`` class and a tiny ``unet_config`` for it, plus what it takes
to sample it: the text width, the extra cond keys its ``model_base`` class needs, and the latent shape.

    model = build("flux")                       # ModelPatcher around the real comfy.model_base.Flux
    positive, negative = conds("flux")          # [[tensor, {extra}]] CONDITIONING lists
    out = sample(model, "flux", steps=3, cfg=3.0)   # or simply sample("flux")

ComfyUI must already be importable with ``comfy.cli_args.args.cpu = True`` set before ``comfy.model_management``
is imported (tests/conftest.py does both); this module does not touch sys.path.

Every entry samples 3 euler steps at cfg 3 in 0.02-0.16 s on CPU (after a one-off ~0.2 s first call in a
process) and gives a finite result of the latent's shape.

Gotchas
-------
* Flux-derived ``model_base`` classes (Flux2, Chroma, ChromaRadiance) and HunyuanVideo15 read
  ``kwargs["pooled_output"]`` unconditionally: the cond must carry ``pooled_output`` (``None`` when the net has no
  vector input).
* LTXV, Mochi and OmniGen2 need ``attention_mask`` in the cond (a positional forward argument, or the only source
  of ``num_tokens``). HiDream needs ``conditioning_llama3``; Hunyuan DiT needs ``attention_mask``,
  ``conditioning_mt5xl`` and ``attention_mask_mt5xl`` (its mT5 length is fixed at ``text_len_t5``).
* Latent channels must match the class's latent_format (Flux2 128, LTXV 128, Wan22 48, HunyuanImage21 64,
  HunyuanVideo15 32, Mochi 12, ChromaRadiance 3 pixels); Qwen Image and Cosmos Predict2 use the Wan21 format and
  therefore a 5-D (B, 16, 1, H, W) latent.
* ``BASE.__init__`` overwrites unet_config with the class's ``unet_extra_config`` (SDXL: num_head_channels 64,
  SD15: num_heads 8), so those cannot be shrunk through unet_config.
* Weights are N(0, ``init_std``). 0.05 (tiny_models.py's value) leaves the text nearly without effect on several
  DiTs, hence 0.1 by default; EPS/v-prediction models (SD15, SDXL, PixArt, Hunyuan DiT) keep 0.05. Their output
  is large (|x| 5-1000): an untrained eps-predictor leaves sigma_max-scaled noise, and process_latent_out divides
  by the VAE scale. ChromaRadiance's output barely depends on the text even at 0.2 (its NeRF head normalises the
  generated weights), so use it for plumbing, not for cond/uncond differences.
* On a CPU shared with another busy process, torch's intra-op threads turn every op into a ~10 ms stall (a 3-step
  run then takes seconds); ``torch.set_num_threads(1)`` avoids it.
* ``dit`` below is what the diffusion model asks of ``transformer_options["patches_replace"]["dit"]`` per forward
  ({key kind: count}, measured by ``dit_replace_keys``). Lumina2, Z-Image, HiDream, Cosmos Predict2, OmniGen2,
  PixArt and the UNets do not use that hook (the UNets use patches_replace["attn1"/"attn2"] instead). Block lists:
  Flux/Chroma/Hunyuan* double_blocks + single_blocks, Wan blocks (VACE's vace_blocks are not hooked), LTXV and
  Qwen transformer_blocks, Mochi/Hunyuan DiT/Cosmos/PixArt blocks, SD3 joint_blocks, AuraFlow double_layers +
  single_layers, Lumina2/Z-Image/OmniGen2 layers (+ refiners), HiDream double_stream_blocks + single_stream_blocks,
  Stable Audio transformer.layers, Hunyuan3D 2.1 and SeedVR2 blocks (keys ("block", i)), MiniMax H3 blocks.
* Hunyuan-DiT, Hunyuan3D 2.1 and SeedVR2 pass no transformer_options in a block patch's args.
* Stable Audio and MiniMax H3 leave buffers empty that checkpoints fill (rope tables): ``Entry.buffers`` fills
  them; the Stable Audio seconds conditioners live outside the net and come in through ``Entry.weights``.
* ComfyUI 0.33 image models: LongCat-Image/Ovis-Image as Flux, MageFlow and Lens transformer_blocks, JoyImage
  double_blocks, Kandinsky 5 visual_transformer_blocks (stream "x"; its original_block raises TypeError),
  HiDream-O1 language_model.layers (stream "x").

* Several-stream latents (LTX-2: video + audio): ``latent_shape`` is a list of shapes, the latent a
  ``comfy.nested_tensor.NestedTensor`` (the sampler packs it into one (B, 1, N) tensor and sets ``latent_shapes``);
  ``sample`` returns that packed form. The LTX-2 block patches get ``img = (video tokens, audio tokens)``.
* Wan Animate 2 calls its blocks' ``forward_gen`` / ``forward_pose``, not the modules: forward hooks on its blocks
  never fire. Its pose branch, S2V's audio injectors and WanDancer's music injectors run between the block
  patches, outside them. Causal Wan's ``ar_video`` sampler calls ``forward_block``, which asks no patches at all.
* Wan models with an I2V-shaped cross-attention (model_type i2v internally: Animate 2, WanDancer, SCAIL, Fun
  Control) carry the 1280-wide CLIP projection (~1.7M weights); HuMo is not in the zoo: its audio projection is
  fixed at 26M weights.

Left out: see ``LEFT_OUT``.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from typing import Callable

import torch

import comfy.model_patcher
import comfy.sample
import comfy.supported_models as sm
import comfy.utils

CPU = torch.device("cpu")


def _none(g, tokens):
    return {}


@dataclass
class Entry:
    config_cls: type                     # a comfy.supported_models class
    unet_config: dict                    # tiny config, passed to config_cls(...)
    context_dim: int                     # width of the text tokens (c_crossattn)
    latent_shape: tuple                  # batch of 1; channels must match the class's latent_format; a list of
                                         # shapes: one stream each, a NestedTensor latent (LTX-2's video + audio)
    extra: Callable = _none              # extra(generator, tokens) -> dict of extra cond keys
    init_std: float = 0.1                # std of the random weights
    dit: dict = field(default_factory=dict)   # patches_replace["dit"] keys asked per forward: {kind: count}
    notes: str = ""
    params: str | None = None            # the model's Params dataclass (dotted), if its kwargs all go there
    weights: Callable | None = None      # weights() -> the state dict get_model needs besides the net (embedders)
    buffers: Callable | None = None      # buffers(diffusion_model): fills buffers the checkpoint would (rope tables)

    def __post_init__(self):
        if self.params is None:
            self.params = PARAMS_OF.get(self.unet_config.get("image_model"))


# image_model -> the Params dataclass its diffusion model passes every other kwarg to
PARAMS_OF = {"flux": "comfy.ldm.flux.model.FluxParams", "flux2": "comfy.ldm.flux.model.FluxParams",
             "chroma": "comfy.ldm.chroma.model.ChromaParams",
             "chroma_radiance": "comfy.ldm.chroma_radiance.model.ChromaRadianceParams",
             "hunyuan_video": "comfy.ldm.hunyuan_video.model.HunyuanVideoParams"}


# Params fields that newer ComfyUI added without a default (0.33: FLUX/Chroma txt_ids_dims, Chroma vec_in_dim,
# Chroma Radiance use_x0/use_sequential_txt_ids, HunyuanVideo meanflow_sum), with the value ComfyUI's detection
# gives a checkpoint of the original layout. Older ComfyUI rejects these keys, so configs are fitted to the
# dataclass of the ComfyUI in use (``fit_params``).
NEW_FIELDS = {"txt_ids_dims": [], "meanflow_sum": False, "vec_in_dim": None, "use_x0": False,
              "use_sequential_txt_ids": False}
MODEL_KWARGS = {"image_model", "final_layer"}   # taken by the model's __init__ itself, never by Params


def fitted(unet_config: dict) -> dict:
    """A unet_config for this ComfyUI (fit_params with the Params class its image_model implies)."""
    return fit_params(unet_config, PARAMS_OF.get(unet_config.get("image_model")))


def fit_params(config: dict, params: str | None) -> dict:
    """``config`` fitted to the Params dataclass ``params`` of this ComfyUI: keys it does not know are dropped,
    fields it requires that the config lacks get their NEW_FIELDS value."""
    if params is None:
        return dict(config)
    module, _, name = params.rpartition(".")
    fields = {f.name: f for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
    out = {k: v for k, v in config.items() if k in fields or k in MODEL_KWARGS}
    for f in fields.values():
        if f.name not in out and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            if f.name not in NEW_FIELDS:
                raise KeyError(f"{params} needs {f.name!r}, which the tiny config lacks")
            out[f.name] = NEW_FIELDS[f.name]
    return out


def _pooled(dim, **more):
    """Extra keys: a random pooled_output of width `dim`, plus constants such as guidance."""
    return lambda g, tokens: {"pooled_output": torch.randn(1, dim, generator=g), **more}


def _no_pooled(**more):
    """Extra keys: pooled_output=None, for model_base classes that read it unconditionally but have no vector input."""
    return lambda g, tokens: {"pooled_output": None, **more}


def _mask(**more):
    """Extra keys: an all-ones text attention mask."""
    return lambda g, tokens: {"attention_mask": torch.ones(1, tokens, dtype=torch.long), **more}


def _hidream_o1_ids(g, tokens):
    """HiDream-O1's prompt: <|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n<|boi|><|tms|>."""
    text = torch.randint(1000, 100000, (tokens,), generator=g).tolist()
    return torch.tensor([[151644, 872, 198] + text + [151645, 198, 151644, 77091, 198, 151669, 151673]])


def _blocks(double=0, single=0):
    return {k: v for k, v in (("double_block", double), ("single_block", single)) if v}


# Shared tiny configs: width 64, 2 heads (head dim 32), rope axes summing to 32, text width 32.
FLUX_BASE = dict(in_channels=16, out_channels=16, context_in_dim=32, hidden_size=64, mlp_ratio=2.0, num_heads=2,
                 depth=2, depth_single_blocks=2, axes_dim=[8, 12, 12], theta=10000, qkv_bias=True, patch_size=2)
HV_BASE = dict(image_model="hunyuan_video", in_channels=16, out_channels=16, vec_in_dim=32, context_in_dim=32,
               hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[8, 12, 12],
               theta=256, patch_size=[1, 2, 2], qkv_bias=True, guidance_embed=True, byt5=False, meanflow=False,
               use_cond_type_embedding=False, vision_in_dim=None)
WAN_BASE = dict(image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), text_len=16, in_dim=16, dim=64,
                ffn_dim=128, freq_dim=32, text_dim=32, out_dim=16, num_heads=2, num_layers=2, window_size=(-1, -1),
                qk_norm=True, cross_attn_norm=True, eps=1e-6)
LUMINA_BASE = dict(image_model="lumina2", patch_size=2, in_channels=16, dim=64, n_layers=2, n_refiner_layers=1,
                   n_heads=2, n_kv_heads=1, multiple_of=16, ffn_dim_multiplier=2.0, qk_norm=True, cap_feat_dim=32,
                   axes_dims=[8, 12, 12], axes_lens=[64, 64, 64], rope_theta=10000.0)
UNET_BASE = dict(use_checkpoint=False, image_size=32, use_spatial_transformer=True, legacy=False, in_channels=4,
                 out_channels=4, num_res_blocks=[1, 1], channel_mult=[1, 2], transformer_depth=[0, 1],
                 transformer_depth_output=[0, 0, 1, 1], transformer_depth_middle=1, use_temporal_resblock=False,
                 use_temporal_attention=False)

SA3_BASE = dict(audio_model="dit1.0", io_channels=256, embed_dim=64, depth=2, num_heads=2, cond_token_dim=768,
                project_cond_tokens=True, global_cond_dim=768, input_concat_dim=0, global_cond_shared_embed=True,
                global_cond_type="adaLN", timestep_features_type="expo", norm_type="rms_norm",
                attn_kwargs={"qk_norm": "rms", "differential": False}, num_memory_tokens=2)


def _seconds(*names, features=None):
    """weights(): random Stable Audio seconds conditioners (768 wide, as model_base builds them)."""
    def weights():
        from comfy.ldm.audio.embedders import NumberConditioner
        sd = {}
        for n in names:
            cond = NumberConditioner(768, **({} if features is None else {"fourier_features_type": features}))
            sd.update({f"conditioner.conditioners.{n}.{k}": torch.randn(v.shape) * 0.1   # (comfy.ops layers
                       for k, v in cond.state_dict().items()})                            # are left empty)
        return sd
    return weights


def _audio_rope(dm):
    """Stable Audio's rope inv_freq is an empty buffer that checkpoints fill: the standard table."""
    inv = dm.transformer.rotary_pos_emb.inv_freq
    inv.copy_(1.0 / 10000 ** (torch.arange(0, 2 * inv.shape[0], 2, dtype=torch.float32) / (2 * inv.shape[0])))


def _minimax_rope(dm):
    """MiniMax H3's rope inv_freq is an empty buffer that checkpoints fill: a standard table."""
    inv = dm.rope.inv_freq
    inv.copy_(1.0 / 10000 ** (torch.arange(inv.shape[0], dtype=torch.float32) / inv.shape[0]))


_NEW_CLASSES: set[str] = set()         # supported_models classes that ComfyUI 0.3.75 lacks (named through since())


def since(name: str):
    """``comfy.supported_models.<name>``, or None where this ComfyUI has no such class (the entry is then left
    out of ZOO: architectures that newer ComfyUI added are tested on the versions that have them). Use it for
    every class ComfyUI 0.3.75 lacks: the README's support table reads which versions test an entry from it."""
    _NEW_CLASSES.add(name)
    return getattr(sm, name, None)


def tested_on(name: str) -> tuple[str, ...]:
    """The ComfyUI versions whose suite runs entry ``name``."""
    e = _ENTRIES[name]
    new = e.config_cls is None or e.config_cls.__name__ in _NEW_CLASSES or name in _FIELD_GATED
    return ("0.33",) if new else ("0.3.75", "0.33")


_FIELD_GATED = {"ovis_image"}     # entries made with since_field (a Params flag 0.3.75 lacks)


def since_field(config_cls, params: str, field_name: str):
    """``config_cls``, or None where this ComfyUI's Params dataclass ``params`` has no ``field_name`` (a variant
    that only a config flag tells apart: fit_params would silently drop the flag and build another model)."""
    module, _, name = params.rpartition(".")
    names = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
    return config_cls if field_name in names else None


_ENTRIES: dict[str, Entry] = {
    # --- Flux family ---------------------------------------------------------------------------------------------
    "flux": Entry(sm.Flux, dict(FLUX_BASE, image_model="flux", guidance_embed=True, vec_in_dim=32), 32,
                  (1, 16, 16, 16), _pooled(32, guidance=3.5), dit=_blocks(2, 2)),
    "flux_schnell": Entry(sm.FluxSchnell, dict(FLUX_BASE, image_model="flux", guidance_embed=False, vec_in_dim=32),
                          32, (1, 16, 16, 16), _pooled(32), dit=_blocks(2, 2)),
    # Flux2: 128-channel latent at patch 1, four rope axes, no vector input; model_base pads the text to 512 tokens.
    "flux2": Entry(sm.Flux2, dict(image_model="flux2", in_channels=128, out_channels=128, vec_in_dim=None,
                                  context_in_dim=32, hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=1,
                                  depth_single_blocks=1, axes_dim=[8, 8, 8, 8], theta=2000, qkv_bias=False,
                                  patch_size=1, guidance_embed=True, global_modulation=True, mlp_silu_act=True,
                                  ops_bias=False, default_ref_method="index", ref_index_scale=10.0),
                   32, (1, 128, 8, 8), _no_pooled(guidance=3.5), init_std=0.15, dit=_blocks(1, 1)),
    # Chroma: in_channels is the packed 16*2*2; the distilled-guidance MLP maps 16+16+32=64 -> hidden_size.
    "chroma": Entry(sm.Chroma, dict(FLUX_BASE, image_model="chroma", in_channels=64, out_channels=64, in_dim=64,
                                    out_dim=64, hidden_dim=64, n_layers=1),
                    32, (1, 16, 16, 16), _no_pooled(), dit=_blocks(2, 2)),
    # Chroma Radiance: pixel space (3 channels), patch 16, so a 32x32 image is 2x2 patches; no NeRF tiling.
    "chroma_radiance": Entry(sm.ChromaRadiance, dict(FLUX_BASE, image_model="chroma_radiance", in_channels=3,
                                                     out_channels=3, depth=1, depth_single_blocks=1, patch_size=16,
                                                     in_dim=64, out_dim=64, hidden_dim=64, n_layers=1,
                                                     nerf_hidden_size=16, nerf_mlp_ratio=2, nerf_depth=1,
                                                     nerf_max_freqs=4, nerf_tile_size=0,
                                                     nerf_final_head_type="linear",
                                                     nerf_embedder_dtype=torch.float32),
                             32, (1, 3, 32, 32), _no_pooled(), init_std=0.2, dit=_blocks(1, 1),
                             notes="text has almost no effect on the output"),
    # --- Hunyuan ---------------------------------------------------------------------------------------------------
    "hunyuan_video": Entry(sm.HunyuanVideo, dict(HV_BASE), 32, (1, 16, 1, 8, 8), _pooled(32, guidance=6.0),
                           dit=_blocks(2, 2)),
    # I2V: 16 noise + 16 image + 1 mask channels, filled by concat_keys ("concat_image", "mask_inverted").
    "hunyuan_video_i2v": Entry(sm.HunyuanVideoI2V, dict(HV_BASE, in_channels=33), 32, (1, 16, 1, 8, 8),
                               _pooled(32, guidance=6.0), dit=_blocks(2, 2)),
    # 1.5: 32-channel latent, patch 1, in = 32 noise + 32 image + 1 mask (zeros without an image); no vector_in.
    "hunyuan_video15": Entry(sm.HunyuanVideo15, dict(HV_BASE, in_channels=65, out_channels=32, vec_in_dim=None,
                                                     patch_size=[1, 1, 1], use_cond_type_embedding=True,
                                                     vision_in_dim=32),
                             32, (1, 32, 1, 8, 8), _no_pooled(guidance=6.0), dit=_blocks(2, 2)),
    # Image 2.1: 2-D patches (so two rope axes), 64-channel latent, no vector_in.
    "hunyuan_image21": Entry(sm.HunyuanImage21, dict(HV_BASE, in_channels=64, out_channels=64, vec_in_dim=None,
                                                     patch_size=[1, 1], axes_dim=[16, 16]),
                             32, (1, 64, 8, 8), lambda g, t: {"guidance": 6.0}, dit=_blocks(2, 2)),
    # --- Wan -------------------------------------------------------------------------------------------------------
    "wan21_t2v": Entry(sm.WAN21_T2V, dict(WAN_BASE), 32, (1, 16, 1, 8, 8), dit=_blocks(2)),
    # I2V: in_dim 36 = 16 noise + 4 mask + 16 image; model_base fills the concat with zeros when no image is given.
    "wan21_i2v": Entry(sm.WAN21_I2V, dict(WAN_BASE, model_type="i2v", in_dim=36), 32, (1, 16, 1, 8, 8),
                       dit=_blocks(2)),
    # VACE: model_base builds vace_context from zeros/ones: 16*2 frame + 64 mask channels = vace_in_dim 96.
    "wan21_vace": Entry(sm.WAN21_Vace, dict(WAN_BASE, model_type="vace", vace_in_dim=96, vace_layers=1), 32,
                        (1, 16, 1, 8, 8), dit=_blocks(2)),
    # Wan 2.2 TI2V 5B: 48-channel latent in and out.
    "wan22_ti2v_5b": Entry(sm.WAN22_T2V, dict(WAN_BASE, in_dim=48, out_dim=48), 32, (1, 48, 1, 8, 8),
                           dit=_blocks(2)),
    # --- other video -------------------------------------------------------------------------------------------
    # LTXV: inner dim = heads * head_dim = cross_attention_dim; attention_mask is a positional forward argument.
    "ltxv": Entry(sm.LTXV, dict(image_model="ltxv", in_channels=128, cross_attention_dim=64, attention_head_dim=32,
                                num_attention_heads=2, caption_channels=32, num_layers=2),
                  32, (1, 128, 1, 4, 4), _mask(), dit=_blocks(2)),
    # Mochi: a hard assert wants hidden_size_x * mlp_ratio_x == 1536*8 (hence ratio 192: the MLP dominates the
    # 3.3M parameters); attention_mask is a required forward argument.
    "mochi": Entry(sm.GenmoMochi, dict(image_model="mochi_preview", depth=2, patch_size=2, num_heads=2,
                                       hidden_size_x=64, hidden_size_y=32, mlp_ratio_x=192.0, mlp_ratio_y=2.0,
                                       learn_sigma=False, in_channels=12, qk_norm=True, qkv_bias=False, out_bias=True,
                                       attn_drop=0.0, patch_embed_bias=True, posenc_preserve_area=True,
                                       timestep_mlp_bias=True, attend_to_padding=False, timestep_scale=1000.0,
                                       use_t5=True, t5_feat_dim=32, t5_token_length=8, rope_theta=10000.0),
                   32, (1, 12, 1, 8, 8), _mask(), dit=_blocks(2)),
    # --- image DiTs ----------------------------------------------------------------------------------------------
    # SD3: MMDiT width is 64*depth (head dim 64); no pos_embed buffer -> sin-cos computed on the fly.
    "sd3": Entry(sm.SD3, dict(in_channels=16, out_channels=16, patch_size=2, depth=2, input_size=None,
                              adm_in_channels=32, pos_embed_scaling_factor=None, qk_norm="rms",
                              context_embedder_config={"target": "torch.nn.Linear",
                                                       "params": {"in_features": 32, "out_features": 128}}),
                 32, (1, 16, 16, 16), _pooled(32), dit=_blocks(2)),
    # AuraFlow: learned positional encoding over max_seq (a 16x16 grid of patches, >= the 8x8 used here).
    "auraflow": Entry(sm.AuraFlow, dict(in_channels=4, out_channels=4, patch_size=2, dim=64, n_layers=3,
                                        n_double_layers=1, n_heads=2, global_conddim=64, cond_seq_dim=32,
                                        max_seq=256),
                      32, (1, 4, 16, 16), dit=_blocks(1, 2)),
    # Lumina 2 (NextDiT): head dim = sum(axes_dims); model_base takes num_tokens from c_crossattn.
    "lumina2": Entry(sm.Lumina2, dict(LUMINA_BASE), 32, (1, 16, 16, 16)),
    # Z-Image: NextDiT with z_image_modulation (adaLN input is min(dim, 256) but the t-embedder emits 256, so
    # dim must be >= 256) and pad tokens.
    "zimage": Entry(sm.ZImage, dict(LUMINA_BASE, dim=256, n_heads=4, n_kv_heads=4, axes_dims=[16, 24, 24],
                                    z_image_modulation=True, time_scale=1000.0, pad_tokens_multiple=8),
                    32, (1, 16, 16, 16)),
    # Qwen Image: packed in_channels 16*2*2; Wan21 latent format -> 5-D latent.
    "qwen_image": Entry(sm.QwenImage, dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16,
                                           num_layers=2, attention_head_dim=32, num_attention_heads=2,
                                           joint_attention_dim=32, axes_dims_rope=(8, 12, 12)),
                        32, (1, 16, 1, 16, 16), init_std=0.15, dit=_blocks(2)),
    # HiDream: context is the T5 stream; conditioning_llama3 is (1, n_llama_layers, tokens, llama_dim) and
    # llama_layers picks one of them per block (num_layers + num_single_layers entries); pooled_output -> y.
    "hidream": Entry(sm.HiDream, dict(image_model="hidream", patch_size=2, in_channels=16, out_channels=16,
                                      num_layers=1, num_single_layers=1, attention_head_dim=32,
                                      num_attention_heads=2, caption_channels=[32, 24], text_emb_dim=32,
                                      num_routed_experts=2, num_activated_experts=1, axes_dims_rope=[8, 12, 12],
                                      max_resolution=[32, 32], llama_layers=[0, 1]),
                     32, (1, 16, 16, 16),
                     lambda g, t: {"pooled_output": torch.randn(1, 32, generator=g),
                                   "conditioning_llama3": torch.randn(1, 2, t, 24, generator=g)}),
    # Cosmos Predict2 (T2I): Wan21 latent format -> 5-D latent; learnable rope3d, adaLN-LoRA as in the real model.
    "cosmos_predict2": Entry(sm.CosmosT2IPredict2, dict(image_model="cosmos_predict2", max_img_h=64, max_img_w=64,
                                                        max_frames=8, in_channels=16, out_channels=16,
                                                        patch_spatial=2, patch_temporal=1, concat_padding_mask=True,
                                                        model_channels=64, num_blocks=2, num_heads=2, mlp_ratio=2.0,
                                                        crossattn_emb_channels=32, pos_emb_cls="rope3d",
                                                        pos_emb_learnable=True, pos_emb_interpolation="crop",
                                                        use_adaln_lora=True, adaln_lora_dim=16,
                                                        extra_per_block_abs_pos_emb=False,
                                                        rope_enable_fps_modulation=False),
                             32, (1, 16, 1, 16, 16)),
    # OmniGen2: forward needs num_tokens, which model_base only derives from an attention_mask.
    "omnigen2": Entry(sm.Omnigen2, dict(image_model="omnigen2", patch_size=2, in_channels=16, out_channels=None,
                                        hidden_size=64, num_layers=2, num_refiner_layers=1, num_attention_heads=2,
                                        num_kv_heads=1, multiple_of=16, ffn_dim_multiplier=None, norm_eps=1e-5,
                                        axes_dim_rope=[8, 12, 12], axes_lens=[64, 64, 64], text_feat_dim=32,
                                        timestep_scale=1000.0),
                      32, (1, 16, 16, 16), _mask()),
    # Hunyuan DiT (v-prediction): CLIP stream (context, >= text_len tokens) + mT5 stream of exactly text_len_t5
    # tokens (the attention pooler's positional table), both with masks. Depth 4 so that a long skip connection
    # runs (block 0's output feeds block 3).
    "hunyuan_dit": Entry(sm.HunyuanDiT, dict(image_model="hydit", input_size=16, patch_size=2, in_channels=4,
                                             hidden_size=64, depth=4, num_heads=2, mlp_ratio=2.0,
                                             text_states_dim=32, text_states_dim_t5=24, text_len=4, text_len_t5=4),
                         32, (1, 4, 16, 16),
                         lambda g, t: {"attention_mask": torch.ones(1, t, dtype=torch.long),
                                       "conditioning_mt5xl": torch.randn(1, 4, 24, generator=g),
                                       "attention_mask_mt5xl": torch.ones(1, 4, dtype=torch.long)},
                         init_std=0.05, dit=_blocks(4)),
    # PixArt Sigma (EPS, no micro conditions). The pos-embed base size round((H+W)/2/64)*64 // patch is zero (a
    # ZeroDivisionError) unless (H+W)/2 >= 48 (round(0.5) == 0), so a 48x48 latent; patch 4 keeps 12x12 tokens.
    "pixart": Entry(sm.PixArtSigma, dict(image_model="pixart_sigma", input_size=48, patch_size=4, in_channels=4,
                                         hidden_size=64, depth=2, num_heads=2, mlp_ratio=2.0, caption_channels=32,
                                         pe_interpolation=1.0, model_max_length=8, micro_condition=False),
                    32, (1, 4, 48, 48), init_std=0.05),
    # Hunyuan3D 2.0: a 1-D shape latent (B, 64, tokens); cross_attn is the image-encoder feature sequence.
    "hunyuan3d": Entry(sm.Hunyuan3Dv2, dict(image_model="hunyuan3d2", in_channels=64, context_in_dim=32,
                                            hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=2,
                                            depth_single_blocks=2),
                       32, (1, 64, 16), dit=_blocks(2, 2)),
    # --- UNets (EPS) ---------------------------------------------------------------------------------------------
    # SDXL forces num_head_channels=64, hence model_channels 64; adm = pooled (32) + 6 size embeddings * 256.
    "sdxl": Entry(sm.SDXL, dict(UNET_BASE, model_channels=64, use_linear_in_transformer=True, context_dim=32,
                                adm_in_channels=32 + 6 * 256, num_classes="sequential"),
                  32, (1, 4, 16, 16), _pooled(32, width=128, height=128), init_std=0.05),
    # SD1.5 forces num_heads=8 -> head dim 4 at 32 channels.
    "sd15": Entry(sm.SD15, dict(UNET_BASE, model_channels=32, use_linear_in_transformer=False, context_dim=32,
                                adm_in_channels=None), 32, (1, 4, 16, 16), init_std=0.05),
    # --- ComfyUI 0.33: video (LTX-2, Wan subclasses) ---------------------------------------------------------------
    # LTX-2: video (128 ch) + audio (8 ch x 16 mel bins) latents in one NestedTensor. The text is already
    # "processed" (width 2 * caption_channels, so model_base skips the embeddings connectors, kept tiny anyway);
    # video inner width 2*32 = cross_attention_dim, audio 2*16 = audio_cross_attention_dim.
    "ltx2": Entry(since("LTXAV"), dict(image_model="ltxav", in_channels=128, audio_in_channels=128,
                                       cross_attention_dim=64, attention_head_dim=32, num_attention_heads=2,
                                       audio_cross_attention_dim=32, audio_attention_head_dim=16,
                                       audio_num_attention_heads=2, caption_channels=32, num_layers=2,
                                       connector_attention_head_dim=16, connector_num_attention_heads=2,
                                       connector_num_layers=1),
                  64, [(1, 128, 2, 4, 4), (1, 8, 5, 16)], _mask(), dit=_blocks(2)),
    # Wan S2V (0.3.75 too, where its patches get no transformer_options): audio features (1, 25 layers, audio_dim,
    # 4 per latent frame) injected after blocks 0 and 1; a reference frame and framepacked motion frames (8x8 so
    # the 4x bucket is one patch) appended to the tokens.
    "wan22_s2v": Entry(sm.WAN22_S2V, dict(WAN_BASE, model_type="s2v", audio_dim=16, num_audio_token=4,
                                          enable_adain=True, cond_dim=16, audio_inject_layers=[0, 1],
                                          adain_mode="attn_norm", framepack_drop_mode="padd"),
                       32, (1, 16, 1, 8, 8),
                       lambda g, t: {"audio_embed": torch.randn(1, 25, 16, 4, generator=g),
                                     "reference_latents": [torch.randn(1, 16, 1, 8, 8, generator=g)],
                                     "reference_motion": torch.randn(1, 16, 2, 8, 8, generator=g)},
                       dit=_blocks(2)),
    # Wan Animate 2: I2V-shaped (in 36 = 16 + 4 mask + 16 image, CLIP projection 1280 wide); latent frame 0 is the
    # reference slot, the pose video has one latent frame per generated frame after it.
    "wan_animate2": Entry(since("WAN_Animate2"), dict(WAN_BASE, model_type="animate2", in_dim=36), 32,
                          (1, 16, 2, 8, 8),
                          lambda g, t: {"pose_video_latent": torch.randn(1, 16, 1, 8, 8, generator=g)},
                          dit=_blocks(2)),
    # WanDancer: music features (1, frames, 35) -> a small encoder (music_dim) injected after blocks 0 and 1.
    "wan22_wandancer": Entry(since("WAN22_WanDancer"), dict(WAN_BASE, model_type="wandancer", in_dim=36,
                                                             audio_inject_layers=[0, 1], music_dim=16, music_heads=2,
                                                             music_feature_dim=35, music_latent_dim=16),
                             32, (1, 16, 2, 8, 8),
                             lambda g, t: {"audio_embed": torch.randn(1, 8, 35, generator=g)}, dit=_blocks(2)),
    # SCAIL: in 20 = 16 + 4 mask; reference frame in front of the video and pose tokens after it (all in the stream).
    "wan21_scail": Entry(since("WAN21_SCAIL"), dict(WAN_BASE, model_type="scail", in_dim=20), 32, (1, 16, 2, 8, 8),
                         lambda g, t: {"reference_latents": [torch.randn(1, 16, 1, 8, 8, generator=g)],
                                       "pose_video_latent": torch.randn(1, 16, 2, 8, 8, generator=g)},
                         dit=_blocks(2)),
    # SCAIL-2: plus additive 28-channel identity masks (reference frames + video, and over the pose frames).
    "wan21_scail2": Entry(since("WAN21_SCAIL2"), dict(WAN_BASE, model_type="scail2", in_dim=20, mask_in_dim=28), 32,
                          (1, 16, 2, 8, 8),
                          lambda g, t: {"reference_latents": [torch.randn(1, 16, 1, 8, 8, generator=g)],
                                        "pose_video_latent": torch.randn(1, 16, 2, 8, 8, generator=g),
                                        "ref_mask_28ch": torch.rand(1, 3, 28, 8, 8, generator=g).round(),
                                        "driving_mask_28ch": torch.rand(1, 2, 28, 8, 8, generator=g).round()},
                          dit=_blocks(2)),
    # Causal Wan (self-forcing): WanModel weights with KV-cache blocks; an ordinary sampler goes through the patches.
    "wan21_causal": Entry(since("WAN21_CausalAR_T2V"), dict(WAN_BASE, causal_ar=True), 32, (1, 16, 2, 8, 8),
                          dit=_blocks(2)),
    # FlowRVS: the plain WanModel (t2v) on its own model_base (image-to-image flow).
    "wan21_flowrvs": Entry(since("WAN21_FlowRVS"), dict(WAN_BASE, model_type="flow_rvs"), 32, (1, 16, 1, 8, 8),
                           dit=_blocks(2)),
    # Fun Control: WanModel, i2v-shaped with 48 input channels (16 noise + 32 control/image, zeros here).
    "wan21_fun_control": Entry(sm.WAN21_FunControl2V, dict(WAN_BASE, model_type="i2v", in_dim=48), 32,
                               (1, 16, 1, 8, 8), dit=_blocks(2)),
    # Wan 2.2 Fun Camera (0.3.75 too): t2v-shaped, in 36; Plücker camera embedding (24 ch) at 8x the latent size,
    # pixel-unshuffled and added to the patch embedding. (HuMo is not here: its audio projection is 26M weights.)
    "wan22_camera": Entry(sm.WAN22_Camera, dict(WAN_BASE, model_type="camera_2.2", in_dim=36), 32,
                          (1, 16, 1, 8, 8), lambda g, t: {"camera_conditions": torch.randn(1, 24, 1, 64, 64, generator=g)},
                          dit=_blocks(2)),
    # --- ComfyUI 0.33: misc (Hunyuan-DiT is above) ------------------------------------------------------------
    # Stable Audio Open 1.0: the seconds conditioners are fixed at 768 wide, so the text (c_crossattn, which
    # model_base extends by the two seconds tokens) is 768 wide and global_cond_dim 2*768; the global embed is
    # prepended to the audio tokens (global_cond_type "prepend"), as in the real model. The text is projected to
    # the width 64 (project_cond_tokens; the real model keeps 768: 0.33 then wants 768 / head dim kv heads).
    "stable_audio": Entry(sm.StableAudio, dict(audio_model="dit1.0", io_channels=64, embed_dim=64, depth=2,
                                               num_heads=2, cond_token_dim=768, project_cond_tokens=True,
                                               global_cond_dim=1536, input_concat_dim=0),
                          768, (1, 64, 16), weights=_seconds("seconds_start", "seconds_total"), buffers=_audio_rope,
                          dit=_blocks(2)),
    # Stable Audio 3 as ComfyUI detects it: shared adaLN embedder, expo time features, RMS norms, memory tokens,
    # 256-channel latent and the local (inpainting) conditioning cat(mask, image) = 257 channels, which the
    # block patch path drops (so this layout must stay whole-model cached).
    "stable_audio3": Entry(since("StableAudio3"), dict(SA3_BASE, local_add_cond_dim=257), 768, (1, 256, 16),
                           weights=_seconds("seconds_total", features="expo"), buffers=_audio_rope,
                           dit=_blocks(2)),
    # The same without local conditioning weights: block patches are exact.
    "stable_audio3_nolocal": Entry(since("StableAudio3"), dict(SA3_BASE), 768, (1, 256, 16),
                                   weights=_seconds("seconds_total", features="expo"), buffers=_audio_rope,
                                   dit=_blocks(2)),
    # Hunyuan3D 2mini: the 2.0 network (here at the 2.0 entry's size) under its own supported_models class.
    "hunyuan3d_mini": Entry(sm.Hunyuan3Dv2mini, dict(image_model="hunyuan3d2", in_channels=64, context_in_dim=32,
                                                     hidden_size=64, mlp_ratio=2.0, num_heads=2, depth=2,
                                                     depth_single_blocks=2),
                            32, (1, 64, 16), dit=_blocks(2, 2)),
    # Hunyuan3D 2.1: depth 4 so that a long skip runs (block 0 -> block 3), the last block a MoE (2 experts, top 1).
    # ComfyUI 0.3.75's forward needs a CFG batch (it splits the image features in two).
    "hunyuan3d21": Entry(sm.Hunyuan3Dv2_1, dict(image_model="hunyuan3d2_1", in_channels=64, hidden_size=64,
                                                context_dim=32, depth=4, num_heads=2, qk_norm=True, qkv_bias=False,
                                                num_moe_layers=1, num_experts=2, moe_top_k=1,
                                                guidance_cond_proj_dim=None),
                         32, (1, 64, 16), dit={"block": 4}),
    # SeedVR2 (3B layout: mmrope3d, SwiGLU, output norm; an even depth, the blocks alternate two window kinds;
    # the strategy's span starts at block 1): emb_dim is 6 * vid_dim; the text width txt_in_dim is
    # free (the real 5120 only binds the model's own positive/negative embeddings, unused when a text is given).
    # "condition" (SeedVR2Conditioning: the VAE latent of the input video + a ones mask) has the latent's shape
    # plus one channel.
    "seedvr2": Entry(since("SeedVR2"), dict(image_model="seedvr2", vid_dim=64, heads=2, head_dim=32, num_layers=4,
                                            mm_layers=1, norm_eps=1e-5, mlp_type="swiglu", vid_out_norm=True,
                                            txt_in_dim=32, rope_dim=16),
                     32, (1, 16, 1, 8, 8), lambda g, t: {"condition": torch.randn(1, 17, 1, 8, 8, generator=g)},
                     dit={"block": 4}),
    # MiniMax H3 (audio + video in one packed single-stream sequence, batch size 1): latents video (24 channels,
    # even H/W for its 2x2 patches) + stereo audio (32 channels, round(5/3 * frames) steps); head_dim >= 6 *
    # rope_inv_freq_len (partial rope). The text is refined once per run (model_base.extra_conds).
    "minimax_h3": Entry(since("MiniMaxH3"), dict(image_model="minimax_h3", hidden_size=64, num_layers=2,
                                                 token_refiner_num_layers=1, num_attention_heads=2,
                                                 attention_head_dim=32, ffn_hidden_size=64, text_dim=32,
                                                 timestep_input_dim=32, time_embed_hidden_size=64,
                                                 time_embed_dim=32, rope_inv_freq_len=4),
                        32, ((1, 24, 1, 4, 4), (1, 32, 2, 2)), buffers=_minimax_rope, init_std=0.2, dit=_blocks(2)),
    # --- ComfyUI 0.33: image (LongCat-Image, Ovis-Image, MageFlow, HiDream-O1, Kandinsky 5, JoyImage, Lens) ---------
    # LongCat-Image: FLUX blocks under model_base.LongCatImage; no guidance, no pooled vector, text rope ids on axes
    # 1 and 2 (as ComfyUI's detection sets them; the real text width is 3584).
    "longcat_image": Entry(since("LongCatImage"), dict(FLUX_BASE, image_model="flux", guidance_embed=False,
                                                       vec_in_dim=None, txt_ids_dims=[1, 2]),
                           32, (1, 16, 16, 16), dit=_blocks(2, 2)),
    # Ovis-Image: loads through FluxSchnell's config (no guidance_in) as model_base.Flux; only the SwiGLU
    # ("yak") MLPs and the RMSNorm on the text input (txt_norm) tell it apart from FLUX.1.
    "ovis_image": Entry(since_field(sm.FluxSchnell, PARAMS_OF["flux"], "yak_mlp"),
                        dict(FLUX_BASE, image_model="flux", guidance_embed=False, vec_in_dim=None, txt_ids_dims=[1, 2],
                             yak_mlp=True, txt_norm=True),
                        32, (1, 16, 16, 16), dit=_blocks(2, 2)),
    # MageFlow: Qwen-Image blocks at patch 1 on the 128-channel FLUX.2 latent; model_base rounds t to bf16.
    "mage_flow": Entry(since("MageFlow"), dict(image_model="mage_flow", in_channels=128, out_channels=128,
                                               num_layers=2, attention_head_dim=32, num_attention_heads=2,
                                               joint_attention_dim=32, axes_dims_rope=(8, 12, 12)),
                       32, (1, 128, 8, 8), dit=_blocks(2)),
    # JoyImage: unet_extra_config forces rope_dim_list [16, 56, 56], so the head dim is 128 (one head at width 128);
    # Wan21 latent format -> 5-D latent.
    "joyimage": Entry(since("JoyImage"), dict(image_model="joyimage", patch_size=[1, 2, 2], in_channels=16,
                                              hidden_size=128, num_attention_heads=1, text_dim=32,
                                              mlp_width_ratio=2.0, num_layers=2),
                      32, (1, 16, 1, 8, 8), dit=_blocks(2)),
    # Lens: 128-channel FLUX.2 latent, tokens are latent pixels; the text is L selected encoder layers side by side
    # (context width = enc_hidden_dim * L = 16 * 2).
    "lens": Entry(since("Lens"), dict(image_model="lens", patch_size=2, in_channels=128, out_channels=32,
                                      num_layers=2, attention_head_dim=32, num_attention_heads=2, enc_hidden_dim=16,
                                      axes_dims_rope=(8, 12, 12), selected_layer_index=(0, 1)),
                  32, (1, 128, 8, 8), dit=_blocks(2)),
    # Kandinsky 5 video: in = 16 noise + 16 image + 1 mask channels (concat_cond fills zeros), times the 1x2x2 patch
    # = visual_embed_dim 132; head dim = sum(axes_dims); pooled_output (in_text_dim2 wide) is required. Its block
    # patches' original_block raises TypeError (see strategies/kandinsky5.py), so dit_replace_keys cannot measure it.
    "kandinsky5": Entry(since("Kandinsky5"), dict(image_model="kandinsky5", in_visual_dim=16, out_visual_dim=16,
                                                  in_text_dim=32, in_text_dim2=24, time_dim=32, model_dim=64,
                                                  ff_dim=128, visual_embed_dim=132, patch_size=(1, 2, 2),
                                                  num_text_blocks=1, num_visual_blocks=2, axes_dims=(8, 12, 12)),
                        32, (1, 16, 1, 8, 8), _pooled(24), dit=_blocks(2)),
    # Kandinsky 5 Image: no concat (16 channels * 4 = 64), FLUX latent format (4-D).
    "kandinsky5_image": Entry(since("Kandinsky5Image"), dict(image_model="kandinsky5", in_visual_dim=16,
                                                             out_visual_dim=16, in_text_dim=32, in_text_dim2=24,
                                                             time_dim=32, model_dim=64, ff_dim=128,
                                                             visual_embed_dim=64, patch_size=(1, 2, 2),
                                                             num_text_blocks=1, num_visual_blocks=2,
                                                             axes_dims=(8, 12, 12)),
                              32, (1, 16, 16, 16), _pooled(24), dit=_blocks(2)),
    # HiDream-O1: pixel space (3 channels, 32x32 patches: a 64x64 image is 4 tokens). The "text encoder" only
    # tokenizes: the cond carries text_input_ids (the chat template around random ids) and a dummy (1, n, 1)
    # context. The Qwen3-VL decoder keeps its full vocabulary (the template's special ids are > 151000), so the
    # embedding table is most of the ~10M parameters; MRoPE sections sum to head_dim / 2. The noise is scaled by 8
    # (sampling_settings noise_scale), so at std 0.1 the velocity barely changes between steps (ratios round to 1).
    "hidream_o1": Entry(since("HiDreamO1"), dict(image_model="hidream_o1",
                                                 text_config_overrides=dict(hidden_size=64, intermediate_size=128,
                                                                            num_hidden_layers=2, num_attention_heads=2,
                                                                            num_key_value_heads=1, head_dim=32,
                                                                            rope_dims=[6, 5, 5]),
                                                 vision_config_overrides=dict(hidden_size=32, num_heads=2,
                                                                              intermediate_size=64, depth=1,
                                                                              num_position_embeddings=64)),
                        1, (1, 3, 64, 64), lambda g, t: {"text_input_ids": _hidream_o1_ids(g, t)}, init_std=0.6,
                        dit=_blocks(2), notes="block patches exist but are not used (strategies/hidream_o1.py)"),
}

ZOO: dict[str, Entry] = {k: e for k, e in _ENTRIES.items() if e.config_cls is not None}
NOT_IN_THIS_COMFYUI = sorted(set(_ENTRIES) - set(ZOO))    # entries whose class this ComfyUI lacks

# Requested entries that are not in ZOO on any version, with the reason.
LEFT_OUT: dict[str, str] = {
    "minimax_music3": "MiniMaxMusic3DiT has fixed full-size layers (36 x 2048 wide, no config to shrink); it has no "
                      "block patches (generic): tests/test_arch_misc.py checks its detection on the meta device",
}


def build(name, seed=0, std=None) -> comfy.model_patcher.ModelPatcher:
    """The tiny model `name` with weights drawn from N(0, std or the entry's init_std) (seeded), in a CPU ModelPatcher."""
    e = ZOO[name]
    torch.manual_seed(seed)
    cfg = e.config_cls(fit_params(e.unet_config, e.params))
    cfg.set_inference_dtype(torch.float32, None)
    model = cfg.get_model(e.weights() if e.weights else {}, device=CPU)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (std or e.init_std))
        if e.buffers is not None:
            e.buffers(model.diffusion_model)
    model.diffusion_model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=CPU, offload_device=CPU)


def conds(name, seed=1, tokens=6):
    """(positive, negative) CONDITIONING for `name`: random text tokens plus the entry's extra cond keys."""
    e = ZOO[name]
    g = torch.Generator().manual_seed(seed)
    pos, neg = ([[torch.randn(1, tokens, e.context_dim, generator=g), e.extra(g, tokens)]] for _ in range(2))
    return pos, neg


def latent(name, batch=1):
    """An empty (all-zero) latent of the entry's shape, as the Empty*Latent nodes make; a shape of shapes (an
    audio-video model's streams) gives a NestedTensor of them."""
    shape = ZOO[name].latent_shape
    if isinstance(shape[0], tuple):
        return importlib.import_module("comfy.nested_tensor").NestedTensor([torch.zeros((batch,) + tuple(s[1:])) for s in shape])
    return torch.zeros((batch,) + tuple(shape[1:]))


def sample(model, name=None, steps=4, cfg=3.0, seed=3, sampler="euler", scheduler="simple", positive=None,
           negative=None, denoise=1.0, callback=None):
    """comfy.sample.sample on the entry's latent and conds. `model`: a ModelPatcher plus its zoo `name`, or a key.
    A nested (several-stream) result comes back packed into one tensor, as the model sees it."""
    if isinstance(model, str):
        name, model = model, build(model)
    lat = latent(name)
    if positive is None:
        positive, negative = conds(name)
    noise = comfy.sample.prepare_noise(lat, seed)
    out = comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative, lat,
                              denoise=denoise, callback=callback, disable_pbar=True, seed=seed)
    if getattr(out, "is_nested", False):       # several streams: packed into one tensor, as the sampler runs them
        out = importlib.import_module("comfy.utils").pack_latents(out.unbind())[0]
    return out


class _ClaimAll(dict):
    """Stands in for patches_replace["dit"]: claims every key, records it (and the keys of the args the patch
    gets), and runs the original block."""

    def __init__(self):
        super().__init__()
        self.seen = []
        self.arg_keys = set()

    def __contains__(self, key):
        return True

    def __bool__(self):                  # claims every key: not empty (HiDream-O1 reads an empty dict as no patches)
        return True

    def get(self, key, default=None):
        return self[key]

    def __getitem__(self, key):
        def patch(args, extra):
            self.seen.append(key)
            self.arg_keys.update(args)
            return extra["original_block"](args)
        return patch


def _claim_all(model, name) -> _ClaimAll:
    """One step (cfg 1) with every patches_replace["dit"] key claimed by a recorder."""
    rec = _ClaimAll()
    m = model.clone()

    def wrapper(apply_model, args):
        c = dict(args["c"])
        to = dict(c.get("transformer_options", {}))
        to["patches_replace"] = {**to.get("patches_replace", {}), "dit": rec}
        c["transformer_options"] = to
        return apply_model(args["input"], args["timestep"], **c)

    m.set_model_unet_function_wrapper(wrapper)
    sample(m, name, steps=1, cfg=1.0)
    return rec


def dit_replace_keys(model, name):
    """{kind: count} of the keys the diffusion model asks patches_replace["dit"] for during one step (cfg 1)."""
    kinds = {}
    for kind, _ in dict.fromkeys(_claim_all(model, name).seen):
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def dit_patch_args(model, name) -> set:
    """The keys of the ``args`` the diffusion model hands its patches_replace["dit"] patches (one step, cfg 1)."""
    return _claim_all(model, name).arg_keys
