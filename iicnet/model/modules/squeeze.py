"""Channel squeeze (eq. 8): average M channels down to the C_e embedding channels."""

from __future__ import annotations

import torch
from torch import nn


class ChannelSqueeze(nn.Module):
    """forward ``(B, M, H, W) -> (B, C_e, H, W)``: mean of the M/C_e groups of C_e channels.
    inverse ``(B, C_e, H, W) -> (B, M, H, W)``: the embedding repeated M/C_e times.

    Not a bijection on its own: it is exact on inputs whose groups are equal, which training
    pushes the coupling stack towards (the paper's "implicit guidance")."""

    def __init__(self, channels: int, embed_channels: int):
        super().__init__()
        if channels % embed_channels:
            raise ValueError(f"{embed_channels} does not divide {channels} channels")
        self.groups, self.embed_channels = channels // embed_channels, embed_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return x.reshape(b, self.groups, self.embed_channels, h, w).mean(1)

    def inverse(self, e: torch.Tensor) -> torch.Tensor:
        return e.repeat(1, self.groups, 1, 1)
