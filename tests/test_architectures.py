"""Every architecture on ComfyUI's real class, tiny and random: detection, exactness at threshold 0,
a forced skip schedule (no block runs on a skipped step; the output is the residual-path math,
checked against an oracle written here from the model's own blocks), TeaCache, and calibration.

The oracle re-runs the unpatched model on the exact inputs the patched run gave it (recorded by
an outer APPLY_MODEL wrapper) with this file's own block patches: at a skipped
step t after computed step c, the last block must leave ``S(t) + O(c) - S(c)`` (S: the image
stream into the first block, O: the image stream out of the last).
"""
import json
import operator

import pytest
import torch

import comfy.patcher_extension
import comfy.sample
from comfyui_magcache.nodes.magcache_nodes import MagCacheApply, MagCacheCalibrate, MagCacheRatios, calibration_store
from comfyui_magcache.nodes.patching import RUN_KEY
from comfyui_magcache.nodes.teacache_nodes import TeaCacheApply
from comfyui_magcache.strategies import detect
import tiny_zoo

WMP = comfy.patcher_extension.WrappersMP
STEPS = 6
# Flat ratios, threshold 1, retention 0, K 2: steps 1, 2 skip, 3 computes, 4, 5 skip.
FORCED_COMPUTED = [0, 3]

# name -> (strategy, MagCache auto preset, TeaCache auto preset, single-block token order:
#          "txt_first" / "img_first" / None when the last block is a double block)
TABLE = {
    "flux": ("flux", "flux", "flux", "txt_first"),
    "flux_schnell": ("flux", None, None, "txt_first"),
    "flux2": ("flux2", None, None, "txt_first"),
    "chroma": ("chroma", "chroma", None, "txt_first"),
    "chroma_radiance": ("chroma_radiance", None, None, "txt_first"),
    "qwen_image": ("qwen_image", "qwen_image", None, None),
    "hunyuan_video": ("hunyuan_video", "hunyuan_video", "hunyuan_video", "img_first"),
    "hunyuan_video_i2v": ("hunyuan_video", None, None, "img_first"),
    "hunyuan_video15": ("hunyuan_video", "hunyuan_video1.5", None, "img_first"),
    "hunyuan_image21": ("hunyuan_video", None, None, "img_first"),
    "wan21_t2v": ("wan", None, None, None),
    "wan21_i2v": ("wan", None, None, None),
    "wan21_vace": ("wan", None, None, None),
    "wan22_ti2v_5b": ("wan", None, None, None),
    "ltxv": ("ltxv", None, "ltxv", None),
    "sd3": ("sd3", None, None, None),
    "mochi": ("mochi", None, None, None),
    "auraflow": ("auraflow", None, None, "txt_first"),
    "hunyuan3d": ("hunyuan3d", None, None, "txt_first"),
    "lumina2": ("lumina2", None, "lumina_2", "model"),
    "zimage": ("lumina2", None, None, "model"),
    "hidream": ("hidream", None, "hidream_i1_full", "model"),
    "cosmos_predict2": ("generic", None, None, "model"),
    "omnigen2": ("generic", None, None, "model"),
    "hunyuan_dit": ("hunyuan_dit", None, None, None),
    "pixart": ("generic", None, None, "model"),
    "sdxl": ("generic", None, None, "model"),
    "sd15": ("generic", None, None, "model"),
    # --- ComfyUI 0.33: video (LTX-2, Wan subclasses) ---
    "ltx2": ("ltx2", None, None, None),
    "wan22_s2v": ("wan", None, None, None),          # 0.3.75 too (its patches find the run through the call)
    "wan_animate2": ("wan", None, None, None),
    "wan22_wandancer": ("wan", None, None, None),
    "wan21_scail": ("wan", None, None, None),
    "wan21_scail2": ("wan", None, None, None),
    "wan21_causal": ("wan", None, None, None),
    "wan21_flowrvs": ("wan", None, None, None),
    "wan21_fun_control": ("wan", None, None, None),
    "wan22_camera": ("wan", None, None, None),
    # --- ComfyUI 0.33: misc ---
    "stable_audio": ("stable_audio", None, None, None),
    "stable_audio3": ("generic", None, None, "model"),
    "stable_audio3_nolocal": ("stable_audio", None, None, None),
    "hunyuan3d_mini": ("hunyuan3d", None, None, "txt_first"),
    "hunyuan3d21": ("hunyuan3d21", None, None, None),
    "seedvr2": ("seedvr2", None, None, None),
    "minimax_h3": ("minimax_h3", None, None, None),
    # --- ComfyUI 0.33: image (LongCat-Image, Ovis-Image, MageFlow, HiDream-O1, Kandinsky 5, JoyImage, Lens) ---
    "longcat_image": ("longcat_image", None, None, "txt_first"),
    "ovis_image": ("ovis_image", None, None, "txt_first"),
    "mage_flow": ("mage_flow", None, None, None),
    "joyimage": ("joyimage", None, None, None),
    "lens": ("lens", None, None, None),
    "kandinsky5": ("kandinsky5", None, None, None),
    "kandinsky5_image": ("kandinsky5", None, None, None),
    "hidream_o1": ("hidream_o1", None, None, "model"),
}
# The image stream's key in block args where it is not "img".
STREAM = {"hunyuan3d21": "x", "seedvr2": "vid", "kandinsky5": "x", "kandinsky5_image": "x"}
NAMES = [n for n in TABLE if n in tiny_zoo.ZOO]
def flat_ratios():
    return MagCacheRatios().parse(json.dumps([1.0] * STEPS))[0]


def forced(model):
    """Skips on a fixed schedule, each skipped step adding its cond's last residual as it is ("reuse": the
    residual path the oracle below follows; extrapolation has its own tests in test_variants.py)."""
    return MagCacheApply().apply(model, "auto", 0.5, 0.0, 2, ratios=flat_ratios(), skipped_steps="reuse")[0]


def transformer_options(args, kwargs):
    """BaseModel.apply_model passes it positionally."""
    if "transformer_options" in kwargs:
        return kwargs["transformer_options"]
    return next(a for a in args if isinstance(a, dict) and "cond_or_uncond" in a)


class Recorder:
    """An outer APPLY_MODEL wrapper: every model call's inputs and output, by step and conds."""

    def __init__(self):
        self.calls = []

    def __call__(self, executor, x, t, *args, **kwargs):
        to = transformer_options(args, kwargs)
        step = to["sample_sigmas"].tolist().index(float(to["sigmas"][0]))
        out = executor(x, t, *args, **kwargs)
        self.calls.append((step, tuple(to["cond_or_uncond"]), (x, t) + args, dict(kwargs), out.detach().clone()))
        return out

    def attach(self, model):
        m = model.clone()
        m.add_wrapper_with_key(WMP.APPLY_MODEL, "test-recorder", self)
        return m

    def at(self, step):
        return {c[1]: c for c in self.calls if c[0] == step}


def block_modules(model, strategy):
    dm = model.model.diffusion_model
    lists = {strategy.block_kind: strategy.double_blocks, "single_block": strategy.single_blocks}
    return [operator.attrgetter(lists[kind])(dm)[i] for kind, i in strategy.block_keys]


class ModuleCalls:
    def __init__(self, modules):
        self.count = [0] * len(modules)
        self.handles = [m.register_forward_pre_hook(self._hook(i)) for i, m in enumerate(modules)]

    def _hook(self, i):
        def hook(module, args):
            self.count[i] += 1
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


class BlockComputes:
    """Block-replace patches that run the original block and count it, set before the pack's (which then
    calls them instead of the original block)."""

    def __init__(self, keys):
        self.keys, self.count = list(keys), [0] * len(keys)

    def _patch(self, i):
        def patch(args, extra):
            self.count[i] += 1
            return extra["original_block"](args)
        return patch

    def attach(self, model):
        m = model.clone()
        for i, (kind, index) in enumerate(self.keys):
            m.set_model_patch_replace(self._patch(i), "dit", kind, index)
        return m


def run_unpatched(model, call, patches):
    """The model on a recorded call's inputs, with this test's block patches only (no wrappers)."""
    _, _, args, kwargs, _ = call
    old = transformer_options(args, kwargs)
    to = {k: v for k, v in old.items() if k not in (RUN_KEY, "wrappers")}
    to["patches_replace"] = {"dit": patches}
    if "transformer_options" in kwargs:
        kwargs = dict(kwargs, transformer_options=to)
    else:
        args = tuple(to if a is old else a for a in args)
    with torch.no_grad():
        return model.model.apply_model(*args, **kwargs)


def image_tokens(x, n, order):
    if x.shape[1] == n or order is None:
        return x
    return x[:, -n:] if order == "txt_first" else x[:, :n]


def with_image_tokens(x, stream, order):
    if x.shape[1] == stream.shape[1] or order is None:
        return stream
    n = stream.shape[1]
    return torch.cat((x[:, :-n], stream), 1) if order == "txt_first" else torch.cat((stream, x[:, n:]), 1)


def streams(img):
    """A block's stream as a tuple: one tensor, or several (LTX-2: video, audio), each with its own residual."""
    return tuple(img) if isinstance(img, (tuple, list)) else (img,)


def like(img, parts):
    return type(img)(parts) if isinstance(img, (tuple, list)) else parts[0]


def oracle(model, strategy, call_c, call_t, order, stream="img"):
    """``stream``: the image stream's key in a block's args (and output, when the block returns a dict;
    a block that returns a tensor returns the stream alone); the stream may be a tuple of tensors."""
    keys = strategy.block_keys
    dm = model.model.diffusion_model
    seen = {}

    def observe(key):
        # The block as the model's own original_block runs it, or as the strategy runs it where the model's
        # cannot (Kandinsky 5); which of the two is right is checked by the bit-identical test.
        run_block = strategy.original_block(dm, key)

        def patch(args, extra):
            if key == keys[0]:                            # before the block: FLUX updates it in place
                seen["S"] = [x.clone() for x in streams(args[stream])]
            out = (run_block or extra["original_block"])(args)
            seen[key] = list(out) if isinstance(out, dict) else None     # what the block hands on
            if key == keys[-1]:
                o = out[stream] if isinstance(out, dict) else out
                seen["O"] = [image_tokens(x, s.shape[1], order).clone() for x, s in zip(streams(o), seen["S"])]
            return out
        return patch
    run_unpatched(model, call_c, {k: observe(k) for k in keys})
    residual = [o - s for o, s in zip(seen["O"], seen["S"])]

    def replay(key):
        def patch(args, extra):
            x = args[stream]
            if key == keys[0]:
                seen["St"] = [p.clone() for p in streams(x)]
                x = like(x, [p.clone() for p in streams(x)])    # as a block would: new tensors, not the embedding
            if key == keys[-1]:
                x = like(x, [with_image_tokens(p, st + r, order) for p, st, r in zip(streams(x), seen["St"], residual)])
            return x if seen[key] is None else {k: args[k] for k in seen[key]} | {stream: x}
        return patch
    return run_unpatched(model, call_t, {k: replay(k) for k in keys})


@pytest.fixture(scope="module", params=NAMES)
def arch(request):
    return request.param, tiny_zoo.build(request.param)


def test_detection(arch):
    name, model = arch
    strategy_name, mag, tea, _ = TABLE[name]
    s = detect(model)
    assert s.name == strategy_name
    assert s.auto_preset(model, "magcache")[0] == mag
    assert s.auto_preset(model, "teacache")[0] == tea


def test_threshold_zero_and_calibration_are_bit_identical(arch):
    name, model = arch
    tiny_zoo.sample(model, name, steps=4)    # the reference is a second run: a model may keep state across runs
    ref = tiny_zoo.sample(model, name, steps=4)   # (HiDream-O1's prompt K/V cache: its first step differs by ulps)
    zero = MagCacheApply().apply(model, "auto", 0.0, 0.0, 4, ratios=flat_ratios())[0]
    assert torch.equal(tiny_zoo.sample(zero, name, steps=4), ref)
    cal = MagCacheCalibrate().calibrate(model, f"exact {name}")[0]
    assert torch.equal(tiny_zoo.sample(cal, name, steps=4), ref)
    s = detect(model)
    if s.supports_teacache:
        preset = TABLE[name][2] or next(iter(s.tea_presets), None)
        if preset is not None:
            tea = TeaCacheApply().apply(model, preset, 0.0)[0]
            assert torch.equal(tiny_zoo.sample(tea, name, steps=4), ref)


def test_forced_skips_run_no_block_and_follow_the_residual_path(arch):
    name, model = arch
    s = detect(model)
    rec = Recorder()
    base = rec.attach(model)                     # the recorder outside ours: it sees skipped calls too
    computes = None
    if s.level == "blocks":                      # a block patch under ours: it runs whenever ours computes
        computes = BlockComputes(s.block_keys)
        base = computes.attach(base)
    patched = forced(base)
    if s.level == "blocks":
        counter = ModuleCalls(block_modules(model, s))
    else:
        counter = ModuleCalls([model.model.diffusion_model])   # (its first layer may run twice a call: S2V)
    try:
        out = tiny_zoo.sample(patched, name, steps=STEPS)
    finally:
        counter.close()
    assert torch.isfinite(out).all()
    assert sorted({c[0] for c in rec.calls}) == list(range(STEPS))
    calls_per_step = len(rec.at(0))                       # 1 with cond and uncond batched, 2 when split
    # Each block (or, cached as a whole model, the model) ran on the computed steps only. Module hooks see
    # blocks that run as modules; a model that calls another method of its blocks (Wan Animate 2's
    # forward_gen) shows none, and the block computations its patches asked for tell instead.
    expected_runs = [len(FORCED_COMPUTED) * calls_per_step] * len(counter.count)
    if computes is not None:
        assert computes.count == expected_runs
        assert counter.count in (expected_runs, [0] * len(counter.count))
    else:
        assert counter.count == expected_runs
    order = TABLE[name][3]
    for c, t in ((0, 1), (0, 2), (3, 5)):
        for conds_key, call_t in rec.at(t).items():
            call_c = rec.at(c)[conds_key]
            got = call_t[4]
            if order == "model":                          # x_t + sigma_t / sigma_c * (denoised_c - x_c)
                (x_t, s_t), (x_c, s_c) = call_t[2][:2], call_c[2][:2]
                shape = (-1,) + (1,) * (x_t.dim() - 1)
                expected = x_t + s_t.reshape(shape) / s_c.reshape(shape) * (call_c[4] - x_c)
            else:
                expected = oracle(model, s, call_c, call_t, order, STREAM.get(name, "img"))
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_calibration_has_one_ratio_per_step_per_cond(arch):
    name, model = arch
    tiny_zoo.sample(MagCacheCalibrate().calibrate(model, f"zoo {name}")[0], name, steps=5)
    doc = json.load(open(calibration_store().path(f"zoo {name}")))
    assert doc["steps"] == 5 and doc["model"] == TABLE[name][0]
    assert sorted(doc["mag_ratios"]) == ["cond", "uncond"]
    assert all(len(v) == 5 and v[0] == 1.0 for v in doc["mag_ratios"].values())
    assert any(r != 1.0 for v in doc["mag_ratios"].values() for r in v[1:])


def test_first_blocks_and_extrapolation_run_on_every_block_architecture(arch):
    """The shared first_blocks mechanism on each block layout (double/single blocks, token order, tuple streams,
    blocks that return a tensor): the first block runs on every call, the others only where the step computes (K 1
    on a flat curve: steps 1, 3 and 5 may skip, where the content lets them), and at content threshold 0
    the output is the model's own. Extrapolated skipped steps run on it too."""
    name, model = arch
    s = detect(model)
    if s.level != "blocks" or len(s.block_keys) < 2:
        pytest.skip(f"{name}: {s.level}-level, {len(getattr(s, 'block_keys', []))} blocks")
    tiny_zoo.sample(model, name, steps=STEPS)
    ref = tiny_zoo.sample(model, name, steps=STEPS)
    never = MagCacheApply().apply(model, "auto", 0.5, 0.0, 1, ratios=flat_ratios(), first_blocks=1,
                                  first_blocks_threshold=0.0)[0]
    assert torch.equal(tiny_zoo.sample(never, name, steps=STEPS), ref)
    computes = BlockComputes(s.block_keys)
    patched = MagCacheApply().apply(computes.attach(model), "auto", 0.5, 0.0, 1, ratios=flat_ratios(), first_blocks=1,
                                    first_blocks_threshold=2.0, skipped_steps="extrapolate")[0]
    out = tiny_zoo.sample(patched, name, steps=STEPS)
    assert torch.isfinite(out).all()
    first, rest = computes.count[0], computes.count[1:]
    assert first % STEPS == 0 and set(rest) == {rest[0]}, computes.count
    calls_per_step = first // STEPS
    # steps 0, 2, 4 compute; 1, 3 and 5 skip, unless the content vetoes (random weights change a lot: Hunyuan3D)
    assert 3 * calls_per_step <= rest[0] < first, computes.count
