"""The reference model's world: coloured shapes on dark backgrounds, prompts like "a red circle".

Everything the training script, the demo nodes, the benchmark and the tests share lives here:

* ``render``: procedural 32x32 RGB images (anti-aliased signed-distance shapes), batched in torch,
  so training data costs nothing and needs no download.
* ``context``: a prompt -> Wan cross-attention tokens [B, 2, 4096] (one fixed pseudo-random vector
  per colour word and per shape word; a missing word is a zero token, so "" is the unconditional).
* ``pack`` / ``unpack``: image <-> the model's 16-channel latent (2x2 pixel-unshuffle of the RGB in
  [-1, 1]: 12 channels, plus 4 that stay 0), in the *model* space of ComfyUI's Wan 2.1 latent format
  (what the diffusion model sees after ``process_in``).

The model is ComfyUI's own ``comfy.ldm.wan.model.WanModel`` at ``CONFIG``; ComfyUI's stock "Load
Diffusion Model" node loads the weights as a Wan 2.1 T2V model.
"""
from __future__ import annotations

import hashlib
import math
import re

import torch

SIZE = 32                      # image side in pixels; the latent is SIZE/2 x SIZE/2 (x1 frame)
LATENT_CHANNELS = 16
TEXT_WIDTH = 4096              # Wan 2.1's text width (fixed by ComfyUI's detection)
COLORS = {
    "red": (0.92, 0.16, 0.14), "green": (0.20, 0.78, 0.22), "blue": (0.18, 0.35, 0.95),
    "yellow": (0.97, 0.87, 0.15), "magenta": (0.88, 0.22, 0.85), "cyan": (0.15, 0.85, 0.90),
    "white": (0.96, 0.96, 0.96), "orange": (0.98, 0.55, 0.10),
}
SHAPES = ("circle", "square", "triangle", "ring", "cross")
MAX_ANGLE = math.radians(15)
STOP_WORDS = {"a", "an", "the", "one", "on", "dark", "background", "of", "with", "shape"}
CONFIG = dict(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=LATENT_CHANNELS, dim=256, ffn_dim=512,
              freq_dim=256, text_dim=TEXT_WIDTH, out_dim=LATENT_CHANNELS, num_heads=2, num_layers=4,
              window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6)
MODEL_FILE = "magcache_shapes_wan.safetensors"
FEW_STEP_FILE = "magcache_shapes_wan_fewstep.safetensors"       # demo/distill_few_step.py: 4-8 steps, CFG 1
LORA_FILE = "magcache_shapes_wan_palette_lora.safetensors"      # demo/distill_few_step.py: a LoRA of MODEL_FILE


# -- prompts ---------------------------------------------------------------------------------
def word_vector(word: str) -> torch.Tensor:
    """[TEXT_WIDTH] float32, fixed for ``word`` on every machine (seeded by its SHA-256)."""
    seed = int.from_bytes(hashlib.sha256(("magcache-shapes:" + word).encode()).digest()[:8], "little")
    return torch.randn(TEXT_WIDTH, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)


def _singular(word: str) -> str:
    for plural in ("es", "s"):
        if word.endswith(plural) and word[:-len(plural)] in SHAPES:
            return word[:-len(plural)]
    return word


def parse_prompt(text: str) -> tuple[str | None, str | None]:
    """(colour, shape) named in ``text``; either may be None. Raises ValueError on an unknown word."""
    if not isinstance(text, str):
        raise ValueError(f"prompt must be text, got {type(text).__name__}")
    color = shape = None
    for word in re.findall(r"[a-z]+", text.lower()):
        singular = _singular(word)
        if word in COLORS and color is None:
            color = word
        elif singular in SHAPES and shape is None:
            shape = singular
        elif word not in STOP_WORDS and word not in COLORS and singular not in SHAPES:
            raise ValueError(f"unknown word {word!r} in prompt {text!r}: the reference model knows the colours "
                             f"{', '.join(COLORS)} and the shapes {', '.join(SHAPES)} (empty = unconditional)")
    return color, shape


def context(color: str | None, shape: str | None) -> torch.Tensor:
    """[1, 2, TEXT_WIDTH]: the colour token and the shape token (zeros where not given)."""
    zero = torch.zeros(TEXT_WIDTH)
    return torch.stack([word_vector(color) if color else zero, word_vector(shape) if shape else zero])[None]


def prompt_context(text: str) -> torch.Tensor:
    return context(*parse_prompt(text))


def vocabulary_table() -> torch.Tensor:
    """[len(COLORS) + len(SHAPES), TEXT_WIDTH] word vectors, colours first (for batched training)."""
    return torch.stack([word_vector(w) for w in list(COLORS) + list(SHAPES)])


# -- images ----------------------------------------------------------------------------------
def _box(q: torch.Tensor, bx: float, by: float) -> torch.Tensor:
    dx, dy = q[..., 0].abs() - bx, q[..., 1].abs() - by
    outside = torch.sqrt(dx.clamp_min(0) ** 2 + dy.clamp_min(0) ** 2)
    return outside + torch.maximum(dx, dy).clamp_max(0)


def _triangle(q: torch.Tensor) -> torch.Tensor:
    """Equilateral triangle of circumradius ~1 (Inigo Quilez's exact SDF, written out)."""
    k = math.sqrt(3.0)
    x, y = q[..., 0].abs(), -q[..., 1] + 0.25
    r = 0.9
    x = x - r
    y = y + r / k
    flip = (x + k * y) > 0
    x2 = torch.where(flip, (x - k * y) / 2, x)
    y2 = torch.where(flip, (-k * x - y) / 2, y)
    x2 = x2 - x2.clamp(-2 * r, 0)
    return -torch.sqrt(x2 ** 2 + y2 ** 2) * torch.sign(y2)


def _sdf(shape_ids: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Distances (in shape units) for each sample's shape; q: [B, H, W, 2]."""
    r = q.norm(dim=-1)
    all_sdf = torch.stack([
        r - 0.95,                                                  # circle
        _box(q, 0.78, 0.78),                                       # square
        _triangle(q),                                              # triangle
        (r - 0.72).abs() - 0.25,                                   # ring
        torch.minimum(_box(q, 0.95, 0.3), _box(q, 0.3, 0.95)),     # cross
    ], dim=1)
    return all_sdf.gather(1, shape_ids.view(-1, 1, 1, 1).expand(-1, 1, *all_sdf.shape[2:]))[:, 0]


def render(color_ids: torch.Tensor, shape_ids: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, 3, SIZE, SIZE] images in [0, 1]: one shape of the given colour at a random place and size,
    tilted by at most MAX_ANGLE (a square stays a square, a cross a "+"), on a dark random background
    with a soft gradient."""
    b, dev = color_ids.shape[0], color_ids.device

    def u(*shape, lo=0.0, hi=1.0):
        return torch.rand(*shape, generator=generator, device=dev) * (hi - lo) + lo

    lin = (torch.arange(SIZE, device=dev) + 0.5) / SIZE * 2 - 1
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    p = torch.stack([xx, yy], -1)[None]                                        # [1, H, W, 2]
    scale = u(b, lo=0.38, hi=0.62)
    center = u(b, 2, lo=-1.0, hi=1.0) * (0.92 - scale)[:, None]
    angle = u(b, lo=-MAX_ANGLE, hi=MAX_ANGLE)
    c, s = torch.cos(angle), torch.sin(angle)
    d = (p - center[:, None, None, :]) / scale[:, None, None, None]
    q = torch.stack([c[:, None, None] * d[..., 0] + s[:, None, None] * d[..., 1],
                     -s[:, None, None] * d[..., 0] + c[:, None, None] * d[..., 1]], -1)
    dist = _sdf(shape_ids, q) * scale[:, None, None]                           # in image units
    alpha = (0.5 - dist / (2.0 / SIZE)).clamp(0, 1)[:, None]                   # ~1 px anti-aliasing
    palette = torch.tensor(list(COLORS.values()), device=dev)
    color = palette[color_ids] * u(b, 1, lo=0.85, hi=1.0)
    bg = u(b, 3, hi=0.28)
    direction = u(b, hi=2 * math.pi)
    ramp = (torch.cos(direction)[:, None, None] * xx + torch.sin(direction)[:, None, None] * yy)
    background = (bg[:, :, None, None] * (1 + 0.35 * ramp[:, None])).clamp(0, 1)
    return background * (1 - alpha) + color[:, :, None, None] * alpha


# -- image <-> latent (model space) ----------------------------------------------------------
def pack(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, SIZE, SIZE] in [0, 1] -> [B, 16, 1, SIZE/2, SIZE/2] model-space latent."""
    x = torch.nn.functional.pixel_unshuffle(images * 2 - 1, 2)
    pad = torch.zeros(x.shape[0], LATENT_CHANNELS - x.shape[1], *x.shape[2:], dtype=x.dtype, device=x.device)
    return torch.cat([x, pad], 1)[:, :, None]


def unpack(latent: torch.Tensor) -> torch.Tensor:
    """Model-space latent [B, 16, T, h, w] -> [B*T, 3, 2h, 2w] images clamped to [0, 1]."""
    x = latent.movedim(2, 1).reshape(-1, *latent.shape[1:2], *latent.shape[3:])[:, :12]
    return ((torch.nn.functional.pixel_shuffle(x.float(), 2) + 1) / 2).clamp(0, 1)
