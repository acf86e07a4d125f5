"""Differentiable JPEG: what a re-encoding by a chat app or a website does to the embedding.

:func:`differentiable_jpeg` follows the baseline codec as libjpeg(-turbo) runs it under
Pillow's defaults, step by step, on floats, so that a gradient reaches the encoder through it:

* JFIF RGB -> YCbCr (ITU-R BT.601 full range, chroma offset 128);
* 4:2:0 chroma subsampling (Pillow uses it at every quality, 100 included), as libjpeg's
  2x2 box average after edge replication to whole MCUs;
* 8x8 DCT of each level-shifted block (orthonormal, which is JPEG's scaling);
* quantisation by the IJG luminance and chrominance tables (Annex K of the standard) scaled
  to the quality by the IJG formula and limited to 1..255 (baseline), rounding with a
  straight-through estimator or the cubic approximation of Shin & Song (2017);
* dequantisation and inverse DCT, samples limited to 0..255;
* libjpeg-turbo's default "fancy" chroma upsampling: a triangle filter, 3/4 of the nearer
  and 1/4 of the farther sample, edges replicated, which is bilinear interpolation by 2
  with half-pixel centres;
* YCbCr -> RGB, clamped.

One channel is coded as Pillow codes a mode ``L`` image: luminance alone, luminance table.
Like libjpeg, the samples are integers between the steps (YCbCr, subsampled chroma, inverse
DCT, upsampled chroma, output): rounded there with a straight-through gradient, which brings
the PSNR within a few hundredths of a dB of Pillow's below quality 95 (without them it is
0.1 to 0.9 dB off). ``tests/test_jpeg.py`` measures the agreement on photographs.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Rounding = Literal["ste", "cubic"]

LUMA_TABLE = (
    16, 11, 10, 16, 24, 40, 51, 61,
    12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77,
    24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101,
    72, 92, 95, 98, 112, 100, 103, 99,
)
"""Annex K.1 luminance quantisation table, natural (row-major) order, quality 50."""
CHROMA_TABLE = (
    17, 18, 24, 47, 99, 99, 99, 99,
    18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99,
    47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99,
)
"""Annex K.2 chrominance quantisation table, natural order, quality 50."""

_TO_YCBCR = ((0.299, 0.587, 0.114),
             (-0.168735892, -0.331264108, 0.5),
             (0.5, -0.418687589, -0.081312411))
_TO_RGB = ((1.0, 0.0, 1.402),
           (1.0, -0.344136286, -0.714136286),
           (1.0, 1.772, 0.0))


def quant_tables(quality: torch.Tensor) -> torch.Tensor:
    """Integer qualities ``(B,)`` in 1..100 -> ``(B, 2, 8, 8)`` float tables (luma, chroma),
    scaled as libjpeg's ``jpeg_set_quality(quality, force_baseline=TRUE)`` scales them."""
    q = quality.to(torch.int64)
    if q.dim() != 1 or bool(((q < 1) | (q > 100)).any()):
        raise ValueError(f"quality must be a 1-D tensor of integers in 1..100, got {quality}")
    scale = torch.where(q < 50, 5000 // q, 200 - 2 * q)
    base = torch.tensor([LUMA_TABLE, CHROMA_TABLE], dtype=torch.int64, device=q.device)
    tables = (base[None] * scale[:, None, None] + 50) // 100
    return tables.clamp(1, 255).reshape(-1, 2, 8, 8).to(torch.float32)


def dct_matrix(device: torch.device | None = None) -> torch.Tensor:
    """The orthonormal 8x8 DCT-II as a (64, 64) matrix acting on row-major flattened blocks:
    ``kron(D, D)`` for the 8-point matrix ``D``, so ``D @ X @ D.T`` is one matrix product
    (measured 2 to 4 times faster on CPU than two batched 8x8 products). Orthonormal, so its
    transpose is the inverse DCT."""
    n = torch.arange(8, dtype=torch.float64, device=device)
    d = torch.cos((2 * n[None, :] + 1) * n[:, None] * torch.pi / 16) * 0.5
    d[0] /= 2**0.5
    return torch.kron(d, d).to(torch.float32)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Rounds in the forward pass; the gradient passes straight through (identity)."""
    return x + (torch.round(x) - x).detach()


def round_cubic(x: torch.Tensor) -> torch.Tensor:
    """``round(x) + (x - round(x))^3``: near rounding, with a gradient that vanishes only at
    the integers (Shin & Song 2017)."""
    r = torch.round(x).detach()
    return r + (x - r) ** 3


_ROUNDERS = {"ste": round_ste, "cubic": round_cubic}


def differentiable_jpeg(x: torch.Tensor, quality: torch.Tensor, rounding: Rounding = "ste"
                        ) -> torch.Tensor:
    """JPEG-compress and decompress ``x``: ``(B, C, H, W)`` in [0, 1], C 3 (RGB) or 1
    (grayscale), at ``quality`` ``(B,)`` integers in 1..100, one per sample. Any H and W.

    Returns ``(B, C, H, W)`` in [0, 1] in ``x``'s dtype; the computation itself runs in
    float32 with autocast off (a bf16 DCT would lose more than the codec does).
    """
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"jpeg expects (B, 1 or 3, H, W) images, got shape {tuple(x.shape)}")
    if rounding not in _ROUNDERS:
        raise ValueError(f"rounding must be one of {', '.join(_ROUNDERS)}, got {rounding!r}")
    b, c, h, w = x.shape
    if quality.shape != (b,):
        raise ValueError(f"quality must have shape ({b},), one per image, got "
                         f"{tuple(quality.shape)}")
    tables = quant_tables(quality.to(x.device))
    d = dct_matrix(x.device)
    rnd = _ROUNDERS[rounding]
    with torch.autocast(x.device.type, enabled=False):
        levels = x.float() * 255
        if c == 1:
            out = _code(_pad(round_ste(levels), 8), tables[:, 0], d, rnd)[..., :h, :w]
        else:
            ycc = _pad(round_ste(_convert(levels, _TO_YCBCR, (0.0, 128.0, 128.0))), 16)
            luma = _code(ycc[:, :1], tables[:, 0], d, rnd)[..., :h, :w]
            chroma = _code(round_ste(F.avg_pool2d(ycc[:, 1:], 2)), tables[:, 1], d, rnd)
            chroma = chroma[..., :(h + 1) // 2, :(w + 1) // 2]
            chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear",
                                   align_corners=False)[..., :h, :w]
            chroma = round_ste(chroma)
            out = _convert(torch.cat([luma, chroma - 128], 1), _TO_RGB, (0.0, 0.0, 0.0))
        return (round_ste(out).clamp(0, 255) / 255).to(x.dtype)


class JpegDistortion(nn.Module):
    """The training stage: :func:`differentiable_jpeg` at a quality drawn per sample,
    uniformly among the integers ``low..high``. No parameters, so it adds nothing to a
    checkpoint."""

    def __init__(self, low: int, high: int, rounding: Rounding = "ste"):
        super().__init__()
        if not 1 <= low <= high <= 100:
            raise ValueError(f"quality range must satisfy 1 <= low <= high <= 100, got "
                             f"[{low}, {high}]")
        if rounding not in _ROUNDERS:
            raise ValueError(f"rounding must be one of {', '.join(_ROUNDERS)}, got {rounding!r}")
        self.low, self.high, self.rounding = low, high, rounding

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``; ``generator`` (on ``x``'s device) draws the
        qualities."""
        quality = torch.randint(self.low, self.high + 1, (x.shape[0],), generator=generator,
                                device=x.device)
        return differentiable_jpeg(x, quality, self.rounding)

    def extra_repr(self) -> str:
        return f"quality=[{self.low}, {self.high}], rounding={self.rounding!r}"


def _convert(x: torch.Tensor, matrix: tuple[tuple[float, ...], ...],
             offset: tuple[float, float, float]) -> torch.Tensor:
    """A 3x3 colour matrix plus offsets on ``(B, 3, H, W)``."""
    m = torch.tensor(matrix, dtype=x.dtype, device=x.device)
    o = torch.tensor(offset, dtype=x.dtype, device=x.device)
    return torch.einsum("ij,bjhw->bihw", m, x) + o[:, None, None]


def _pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate the last row and column up to a multiple of ``multiple``, as libjpeg fills
    a partial MCU."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % multiple, 0, -h % multiple), mode="replicate")


def _code(plane: torch.Tensor, table: torch.Tensor, d: torch.Tensor, rnd) -> torch.Tensor:
    """Samples ``(B, n, H, W)`` (H, W multiples of 8, levels 0..255) through DCT,
    quantisation by ``table`` ``(B, 8, 8)``, dequantisation and inverse DCT (``d`` from
    :func:`dct_matrix`)."""
    b, n, h, w = plane.shape
    blocks = (plane - 128).reshape(b, n, h // 8, 8, w // 8, 8).transpose(3, 4)
    blocks = blocks.reshape(b, n, h // 8, w // 8, 64)
    q = table.reshape(b, 1, 1, 1, 64)
    coef = rnd(blocks @ d.T / q) * q
    pixels = (coef @ d).reshape(b, n, h // 8, w // 8, 8, 8).transpose(3, 4)
    return round_ste(pixels.reshape(b, n, h, w) + 128).clamp(0, 255)
