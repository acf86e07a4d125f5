"""PSNR and SSIM the way the paper's tables were computed, and :func:`score`, the one place
that turns an encode/decode round trip into those numbers (``iicnet eval`` and training
validation both call it, so CLI tables and training curves are the same measurement).

Inputs are uint8 images ``(..., C, H, W)``; scores are float64 per image, on all colour
channels (what the paper reports) unless ``y_channel=True`` asks for the BT.601 luma channel
(what many super-resolution papers report). Always say which one you quote.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


def _as_float64(images: torch.Tensor) -> torch.Tensor:
    if images.dtype != torch.uint8:
        raise TypeError(
            f"metrics take uint8 images (rounded, as the tables were), got {images.dtype}"
        )
    return images.to(torch.float64)


def luma(images: torch.Tensor) -> torch.Tensor:
    """BT.601 Y in [16, 235] from RGB in [0, 255]: ``(..., 3, H, W) -> (..., 1, H, W)``."""
    r, g, b = images.unbind(-3)
    return (16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255).unsqueeze(-3)


def psnr(a: torch.Tensor, b: torch.Tensor, y_channel: bool = False) -> torch.Tensor:
    """Per-image PSNR in dB over ``(C, H, W)``; ``inf`` for identical images."""
    x, y = _as_float64(a), _as_float64(b)
    if y_channel:
        x, y = luma(x), luma(y)
    mse = (x - y).pow(2).flatten(-3).mean(-1)
    return 10 * torch.log10(255.0**2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, y_channel: bool = False) -> torch.Tensor:
    """Per-image SSIM: 11x11 Gaussian window (sigma 1.5) on the [0, 255] scale, valid region
    only, averaged over the pixels and then over the channels."""
    x, y = _as_float64(a), _as_float64(b)
    if y_channel:
        x, y = luma(x), luma(y)
    h, w = x.shape[-2:]
    # The 11x11 window is the outer product of a 1-D Gaussian with itself, so each blur is a
    # row pass then a column pass, each a weighted sum of shifted views: 22 multiplications a
    # pixel instead of 121, the same sums (float64 convolutions are slow on a CPU).
    taps = _gaussian_window().tolist()
    k = len(taps)

    def blur(t: torch.Tensor) -> torch.Tensor:
        rows = sum(weight * t[..., :, i:w - k + 1 + i] for i, weight in enumerate(taps))
        return sum(weight * rows[..., i:h - k + 1 + i, :] for i, weight in enumerate(taps))

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return (num / den).flatten(-2).mean(-1).mean(-1)



class Scores(NamedTuple):
    """Per-image scores of one round trip: ``embedding_*`` have the batch shape ``(...)``,
    ``restored_*`` one more axis, the K images in stack order ``(..., K)``."""

    embedding_psnr: torch.Tensor
    embedding_ssim: torch.Tensor
    restored_psnr: torch.Tensor
    restored_ssim: torch.Tensor


def score(images: torch.Tensor, reference: torch.Tensor, embedding: torch.Tensor,
          restored: torch.Tensor) -> Scores:
    """The tables' scores of one encode/decode round trip, all uint8 on one device.

    ``images`` ``(..., K, C, H, W)`` and ``restored`` (the same shape, decoded from the
    *rounded* embedding); ``embedding`` ``(..., C_e, h, w)`` against ``reference``, the
    task's target for it rounded to uint8. "Restored" covers all K images, the reference
    one included.
    """
    return Scores(psnr(embedding, reference), ssim(embedding, reference),
                  psnr(restored, images), ssim(restored, images))
