"""Detection: each model (built on the meta device at its real width) -> strategy and preset."""
import pytest
import torch

import comfy.model_patcher
import comfy.supported_models
from comfyui_magcache.magcache_core import MagCacheInputError
from comfyui_magcache.strategies import detect
from tiny_models import FLUX_CONFIG, WAN_CONFIG
from tiny_zoo import fitted

META = torch.device("meta")


def on_meta(config_cls, unet_config):
    model = config_cls(fitted(unet_config)).get_model({}, device=META)
    return comfy.model_patcher.ModelPatcher(model, load_device=META, offload_device=META)


WAN_14B = dict(WAN_CONFIG, dim=5120, num_heads=40, ffn_dim=13824, num_layers=1)
SINCE_033 = pytest.mark.skipif(not hasattr(comfy.supported_models, "WAN21_FlowRVS"), reason="ComfyUI 0.33 model")


@pytest.mark.parametrize("config_cls, unet, strategy, preset", [
    (comfy.supported_models.Flux, FLUX_CONFIG, "flux", "flux"),
    (comfy.supported_models.FluxSchnell, dict(FLUX_CONFIG, guidance_embed=False), "flux", None),
    (comfy.supported_models.WAN21_T2V, dict(WAN_CONFIG, dim=1536, num_heads=12, ffn_dim=8960, num_layers=1), "wan", "wan2.1_t2v_1.3B"),
    (comfy.supported_models.WAN21_T2V, WAN_14B, "wan", "wan2.1_t2v_14B"),
    (comfy.supported_models.WAN21_I2V, dict(WAN_14B, model_type="i2v", in_dim=36), "wan", "wan2.1_i2v_480p_14B"),
    (comfy.supported_models.WAN21_T2V, WAN_CONFIG, "wan", None),
    # Wan models of another training at a published layout's width get no published curve.
    (comfy.supported_models.WAN21_FunControl2V, dict(WAN_14B, model_type="i2v", in_dim=48), "wan", None),
    (comfy.supported_models.WAN21_I2V, dict(WAN_14B, model_type="i2v", in_dim=36, flf_pos_embed_token_number=514),
     "wan", None),
    (comfy.supported_models.WAN21_T2V, dict(WAN_14B, in_dim_ref_conv=16), "wan", None),
    pytest.param(getattr(comfy.supported_models, "WAN21_FlowRVS", None), dict(WAN_14B, model_type="flow_rvs"),
                 "wan", None, marks=SINCE_033),
    pytest.param(getattr(comfy.supported_models, "WAN21_FlowRVS", None),
                 dict(WAN_CONFIG, dim=1536, num_heads=12, ffn_dim=8960, num_layers=1, model_type="flow_rvs"),
                 "wan", None, marks=SINCE_033),
])
def test_detection_table(config_cls, unet, strategy, preset):
    model = on_meta(config_cls, unet)
    s = detect(model)
    assert s.name == strategy
    name, why = s.auto_preset(model)
    assert name == preset, why
    assert s.block_keys[0] in (("double_block", 0),) and len(s.block_keys) >= 1


def test_flux_block_order_double_then_single():
    s = detect(on_meta(comfy.supported_models.Flux, dict(FLUX_CONFIG, depth=3, depth_single_blocks=2)))
    assert s.block_keys == [("double_block", 0), ("double_block", 1), ("double_block", 2),
                            ("single_block", 0), ("single_block", 1)]


def test_not_a_model():
    with pytest.raises(MagCacheInputError, match=r"^model: expected a ComfyUI MODEL, got str"):
        detect("flux")


def test_readme_support_table_is_generated_from_the_registry():
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "docs" / "support_table.py"
    spec = importlib.util.spec_from_file_location("support_table", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--check"]) == 0, "run: python docs/support_table.py"
    from comfyui_magcache.strategies import STRATEGIES
    for s in STRATEGIES:                                  # every strategy has a row
        assert f"| {s.title} |" in mod.table()
