"""Quantisation to 8 bits, as a PNG stores the embedding."""

from __future__ import annotations

import torch


def quantize(x: torch.Tensor, training: bool, generator: torch.Generator | None = None
             ) -> torch.Tensor:
    """``x`` in [0, 1] -> values on the 1/255 grid (evaluation) or near it (training).

    Evaluation rounds ``x*255``; training adds uniform noise in [-0.5, 0.5] instead, which
    keeps a gradient. Both clamp to [0, 255] before dividing by 255 again.
    """
    scaled = x * 255
    if training:
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 0.5
        scaled = scaled + noise
    else:
        scaled = torch.round(scaled)
    return scaled.clamp(0, 255) / 255
