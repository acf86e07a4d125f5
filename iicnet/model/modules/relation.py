"""Relation module: K heads, a shared view of all K features, K residual tails (eq. 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from iicnet.model.modules.dense_block import GroupedDenseBlocks


class RelationModule(nn.Module):
    """``(B, K*C, H, W) -> (B, K*C, H, W)``, image k at channels ``[kC, (k+1)C)``.

    Per image k: head = DB(C, nf) then 1x1 conv(nf, nf); the K head outputs are concatenated
    (K*nf); tail_k = DB(nf, C)(1x1(nf, nf)(3x3 conv(K*nf, nf)(heads))); r_k = x_k + s*tail_k.
    The inverse direction of IICNet uses a second module of this shape with its own weights;
    it is not an analytic inverse.

    ``fused`` changes only how the same weights are applied: the K tail 3x3 convolutions all
    read the same K*nf features, so they run as one convolution with K*nf outputs, and the
    per-image 1x1 convolutions run as one grouped convolution. The K dense blocks run one by
    one in both modes: a grouped convolution was measured slower than K plain ones on CPU.
    """

    def __init__(self, num_images: int, channels: int, nf: int = 64, growth: int = 32,
                 residual_scale: float = 0.2, fused: bool = True):
        super().__init__()
        k = num_images
        self.k, self.residual_scale, self.fused = k, residual_scale, fused
        self.head_dense = GroupedDenseBlocks(k, channels, nf, growth, fused=False)
        self.head_proj = nn.ModuleList(nn.Conv2d(nf, nf, 1) for _ in range(k))
        self.tail_mix = nn.ModuleList(nn.Conv2d(k * nf, nf, 3, padding=1) for _ in range(k))
        self.tail_proj = nn.ModuleList(nn.Conv2d(nf, nf, 1) for _ in range(k))
        self.tail_dense = GroupedDenseBlocks(k, nf, channels, growth, fused=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        heads = self._per_image(self.head_proj, self.head_dense(x))
        if self.fused:
            mixed = _as_one_conv(self.tail_mix, heads, groups=1)
        else:
            mixed = torch.cat([conv(heads) for conv in self.tail_mix], 1)
        tails = self.tail_dense(self._per_image(self.tail_proj, mixed))
        return x + self.residual_scale * tails

    def _per_image(self, convs: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        """Apply conv k to channel group k of x."""
        if self.fused:
            return _as_one_conv(convs, x, groups=self.k)
        parts = x.split(x.shape[1] // self.k, dim=1)
        return torch.cat([conv(p) for conv, p in zip(convs, parts)], 1)


def _as_one_conv(convs: nn.ModuleList, x: torch.Tensor, groups: int) -> torch.Tensor:
    """Run several same-shaped convolutions as one (their outputs concatenated)."""
    weight = torch.cat([c.weight for c in convs], 0)
    bias = torch.cat([c.bias for c in convs], 0)
    first = convs[0]
    return F.conv2d(x, weight, bias, padding=first.padding, groups=groups)
