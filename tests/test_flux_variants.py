"""Models that load as FLUX's class (``comfy.ldm.flux.model.Flux``) but are not FLUX.1 must not get a FLUX.1
preset. Detection is checked the way ComfyUI loads a checkpoint: the state dict's keys and shapes go through
``comfy.model_detection`` (which picks the config class), the model is built from that config (on the meta
device, at the real sizes) and the pack detects it."""
import dataclasses

import pytest
import torch

import comfy.ldm.flux.model
import comfy.model_detection
import comfy.model_patcher
import comfy.supported_models as sm
from comfyui_magcache.strategies import detect
from tiny_zoo import fitted

META = torch.device("meta")
FIELDS = {f.name for f in dataclasses.fields(comfy.ldm.flux.model.FluxParams)}
needs_ovis = pytest.mark.skipif("yak_mlp" not in FIELDS, reason="this ComfyUI has no Ovis-Image (FluxParams.yak_mlp)")

# FLUX.1 dev and Ovis-Image 7B at their published sizes (Ovis: 6 double + 27 single blocks, Qwen3 2048-wide text,
# no pooled vector, SwiGLU MLPs, RMSNorm on the text input).
FLUX_DEV = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=19, depth_single_blocks=38,
                axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True, txt_ids_dims=[])
OVIS = dict(FLUX_DEV, vec_in_dim=None, context_in_dim=2048, depth=6, depth_single_blocks=27, guidance_embed=False,
            txt_ids_dims=[1, 2], yak_mlp=True, txt_norm=True)


def state_dict_of(config_cls, unet_config):
    """The diffusion model's state dict (meta tensors: keys and shapes only), as a checkpoint would hold it."""
    return config_cls(fitted(unet_config)).get_model({}, device=META).diffusion_model.state_dict()


def load_like_comfy(sd):
    """ComfyUI's own detection on the weights, then the model built from the config it picked."""
    config = comfy.model_detection.model_config_from_unet(sd, "")
    assert config is not None, "ComfyUI detected no model"
    model = config.get_model(sd, "", device=META)
    return type(config).__name__, comfy.model_patcher.ModelPatcher(model, load_device=META, offload_device=META)


def test_flux_dev_weights_still_get_the_flux_preset():
    config, model = load_like_comfy(state_dict_of(sm.Flux, FLUX_DEV))
    s = detect(model)
    assert (config, s.name, s.auto_preset(model)[0], s.auto_preset(model, "teacache")[0]) == \
        ("Flux", "flux", "flux", "flux")


@needs_ovis
@pytest.mark.parametrize("guidance", [False, True], ids=["as_released", "with_guidance_in"])
def test_ovis_image_weights_are_detected_as_ovis_with_no_preset(guidance):
    sd = state_dict_of(sm.Flux if guidance else sm.FluxSchnell, dict(OVIS, guidance_embed=guidance))
    config, model = load_like_comfy(sd)
    assert config == ("Flux" if guidance else "FluxSchnell")        # ComfyUI's view: a FLUX.1 model
    assert type(model.model) is comfy.model_base.Flux
    s = detect(model)
    assert (s.name, s.title) == ("ovis_image", "Ovis-Image")
    for method in ("magcache", "teacache"):
        name, why = s.auto_preset(model, method)
        assert name is None and why.startswith("Ovis-Image, calibrate"), why


@needs_ovis
@pytest.mark.parametrize("change", [dict(vec_in_dim=None), dict(yak_mlp=True), dict(txt_norm=True)],
                         ids=["no_pooled_vector", "swiglu_mlp_only", "text_rmsnorm_only"])
def test_other_flux_class_layouts_get_no_flux1_preset(change):
    """Not FLUX.1 and not Ovis-Image either: FLUX.1's strategy, but calibrate (no FLUX.1 curve)."""
    config, model = load_like_comfy(state_dict_of(sm.Flux, dict(FLUX_DEV, **change)))
    s = detect(model)
    assert s.name == "flux"
    for method in ("magcache", "teacache"):
        name, why = s.auto_preset(model, method)
        assert name is None and "not FLUX.1" in why, why


def test_longcat_image_weights_get_the_longcat_strategy():
    if not hasattr(sm, "LongCatImage"):
        pytest.skip("this ComfyUI has no LongCat-Image")
    sd = state_dict_of(sm.LongCatImage, dict(FLUX_DEV, vec_in_dim=None, context_in_dim=3584, guidance_embed=False,
                                             txt_ids_dims=[1, 2]))
    config, model = load_like_comfy(sd)
    s = detect(model)
    assert (config, s.name, s.level, s.auto_preset(model)[0]) == ("LongCatImage", "longcat_image", "blocks", None)
    assert s.block_keys[0] == ("double_block", 0) and s.block_keys[-1] == ("single_block", 37)
