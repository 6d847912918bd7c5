"""Image quality against a reference: PSNR, SSIM and mean absolute error, for images in [0, 1].

Images are ComfyUI IMAGE tensors [H, W, C] (or [B, H, W, C]: one value per image). Written here,
in torch, so that the benchmark and the tests need nothing beyond what ComfyUI already has.
"""
from __future__ import annotations

import math

import torch

PSNR_CAP = 100.0          # dB reported for identical images (instead of infinity)


def _batched(x: torch.Tensor) -> torch.Tensor:
    x = x.detach().double().cpu()
    return x[None] if x.dim() == 3 else x


def mae(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    a, b = _batched(a), _batched(b)
    return (a - b).abs().flatten(1).mean(1).tolist()


def psnr(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    a, b = _batched(a), _batched(b)
    mse = (a - b).pow(2).flatten(1).mean(1)
    return [PSNR_CAP if m <= 1e-20 else min(PSNR_CAP, 10 * math.log10(1.0 / m)) for m in mse.tolist()]


def _gaussian(size: int, sigma: float) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7, sigma: float = 1.5) -> list[float]:
    """Mean SSIM (Wang et al. 2004: Gaussian window, K1 0.01, K2 0.03, data range 1) over the
    valid window positions and the channels. A 7-pixel window, as the images are small (32 px)."""
    a, b = _batched(a).movedim(-1, 1), _batched(b).movedim(-1, 1)            # [B, C, H, W]
    c = a.shape[1]
    w = _gaussian(window, sigma).expand(c, 1, window, window)

    def filt(x):
        return torch.nn.functional.conv2d(x, w, groups=c)

    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a ** 2
    var_b = filt(b * b) - mu_b ** 2
    cov = filt(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1).tolist()
