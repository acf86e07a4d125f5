"""Dense block: five 3x3 convolutions with dense concatenation (the paper's Fig. 3 sub-network)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LEAKY_SLOPE = 0.2


class DenseBlock(nn.Module):
    """``(B, c_in, H, W) -> (B, c_out, H, W)``.

    Conv i sees the block input concatenated with every earlier conv's output. LeakyReLU(0.2)
    follows the first four. The first four are Xavier-initialised and scaled by 0.1; the
    fifth starts at zero, so a freshly built block outputs zeros and every residual or
    coupling path around it starts as the identity.
    """

    def __init__(self, c_in: int, c_out: int, growth: int = 32):
        super().__init__()
        self.c_in, self.c_out, self.growth = c_in, c_out, growth
        widths = [c_in + i * growth for i in range(5)]
        outs = [growth] * 4 + [c_out]
        self.convs = nn.ModuleList(nn.Conv2d(w, o, 3, padding=1) for w, o in zip(widths, outs))
        for conv in self.convs[:4]:
            nn.init.xavier_normal_(conv.weight)
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.convs[4].weight)
        nn.init.zeros_(self.convs[4].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = x
        for conv in self.convs[:4]:
            feats = torch.cat((feats, F.leaky_relu(conv(feats), LEAKY_SLOPE)), 1)
        return self.convs[4](feats)


class GroupedDenseBlocks(nn.Module):
    """G independent dense blocks of the same shape over G channel groups.

    ``(B, G*c_in, H, W) -> (B, G*c_out, H, W)``: group g of the input goes through block g.
    Parameters are stored per block (so the state dict is that of G ``DenseBlock``s) and the
    two formulations below compute the same function:

    * ``fused=False``: a loop over the G blocks (the straightforward formulation);
    * ``fused=True``: each of the five layers as one grouped convolution over all groups,
      with the per-block weights concatenated on the fly.
    """

    def __init__(self, groups: int, c_in: int, c_out: int, growth: int = 32, fused: bool = True):
        super().__init__()
        self.groups, self.c_in, self.c_out, self.fused = groups, c_in, c_out, fused
        self.blocks = nn.ModuleList(DenseBlock(c_in, c_out, growth) for _ in range(groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.groups
        if not self.fused or g == 1:
            parts = x.split(self.c_in, dim=1)
            return torch.cat([blk(p) for blk, p in zip(self.blocks, parts)], 1)
        b, _, h, w = x.shape
        feats = x.reshape(b, g, self.c_in, h, w)
        for i in range(4):
            out = F.leaky_relu(self._grouped_conv(i, feats.reshape(b, -1, h, w)), LEAKY_SLOPE)
            feats = torch.cat((feats, out.reshape(b, g, -1, h, w)), 2)
        return self._grouped_conv(4, feats.reshape(b, -1, h, w))

    def _grouped_conv(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        convs = [blk.convs[layer] for blk in self.blocks]
        weight = torch.cat([c.weight for c in convs], 0)
        bias = torch.cat([c.bias for c in convs], 0)
        return F.conv2d(x, weight, bias, padding=1, groups=self.groups)
