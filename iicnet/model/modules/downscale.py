"""Invertible downscaling by 2: Haar wavelet or 2x2 squeeze, then an invertible 1x1 conv."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

_HAAR = torch.tensor([
    [[1.0, 1.0], [1.0, 1.0]],     # average
    [[1.0, -1.0], [1.0, -1.0]],   # horizontal detail
    [[1.0, 1.0], [-1.0, -1.0]],   # vertical detail
    [[1.0, -1.0], [-1.0, 1.0]],   # diagonal detail
])


class InvertibleDownscale(nn.Module):
    """``(B, K*C, H, W) -> (B, 4*K*C, H/2, W/2)`` and back.

    Each input channel becomes four half-resolution sub-bands (Haar: average and three
    details, divided by 4; squeeze: the four pixels of each 2x2 cell). Channel order
    ``ref`` lists image by image (``[img0: band0 C, band1 C, band2 C, band3 C], [img1...]``),
    so the reference's sub-bands come first; ``hl`` lists band by band (all images' band 0
    first), so every low-frequency band comes first. An invertible 1x1 convolution over all
    channels follows, initialised orthogonal; its inverse uses the inverse weight matrix.
    """

    def __init__(self, num_images: int, channels: int, kind: Literal["haar", "squeeze"],
                 order: Literal["ref", "hl"]):
        super().__init__()
        if kind not in ("haar", "squeeze") or order not in ("ref", "hl"):
            raise ValueError(f"unknown downscaling {kind!r} or order {order!r}")
        self.k, self.c, self.kind, self.order = num_images, channels, kind, order
        n = num_images * channels
        q, _ = torch.linalg.qr(torch.randn(4 * n, 4 * n))
        self.mix = nn.Parameter(q)
        self.register_buffer("haar", _HAAR.repeat(n, 1, 1).unsqueeze(1), persistent=False)
        self.frozen_unmix: torch.Tensor | None = None

    def _bands(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, N, H, W) -> (B, N, 4, H/2, W/2)``."""
        b, n, h, w = x.shape
        if self.kind == "haar":
            y = F.conv2d(x, self.haar.to(x.dtype), stride=2, groups=n) / 4
        else:
            y = F.pixel_unshuffle(x, 2)
        return y.reshape(b, n, 4, h // 2, w // 2)

    def _unbands(self, y: torch.Tensor) -> torch.Tensor:
        b, n, _, h, w = y.shape
        y = y.reshape(b, n * 4, h, w)
        if self.kind == "haar":
            return F.conv_transpose2d(y, self.haar.to(y.dtype), stride=2, groups=n)
        return F.pixel_shuffle(y, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, h, w = x.shape
        if h % 2 or w % 2:
            raise ValueError(f"downscaling needs even height and width, got {h}x{w}")
        bands = self._bands(x).reshape(b, self.k, self.c, 4, h // 2, w // 2)
        perm = (0, 1, 3, 2, 4, 5) if self.order == "ref" else (0, 3, 1, 2, 4, 5)
        ordered = bands.permute(perm).reshape(b, 4 * n, h // 2, w // 2)
        return F.conv2d(ordered, self.mix.to(x.dtype)[:, :, None, None])

    def freeze(self) -> None:
        """Compute the inverse mixing matrix once and use that copy from now on, for a graph
        exported for inference (OpenVINO converts no matrix inversion from ``torch.export``);
        changing the weights afterwards leaves the inverse behind."""
        with torch.no_grad():
            self.frozen_unmix = torch.linalg.inv(self.mix)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        b, m, h, w = y.shape
        unmix = (torch.linalg.inv(self.mix.to(y.dtype)) if self.frozen_unmix is None
                 else self.frozen_unmix.to(y.dtype))
        ordered = F.conv2d(y, unmix[:, :, None, None])
        if self.order == "ref":
            bands = ordered.reshape(b, self.k, 4, self.c, h, w).permute(0, 1, 3, 2, 4, 5)
        else:
            bands = ordered.reshape(b, 4, self.k, self.c, h, w).permute(0, 2, 3, 1, 4, 5)
        return self._unbands(bands.reshape(b, m // 4, 4, h, w))
