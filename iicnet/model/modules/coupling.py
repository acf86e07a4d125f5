"""Affine coupling blocks (paper eqs. 3-6) and the stack of them."""

from __future__ import annotations

import torch
from torch import nn

from iicnet.model.modules.dense_block import DenseBlock
from iicnet.model.modules.recompute import maybe_recompute


class CouplingBlock(nn.Module):
    """``(B, M, H, W) -> (B, M, H, W)``, split into top ``[0, m)`` and bottom ``[m, M)``.

    forward:  t' = t + F(b);  b' = b * exp(clamp * (2 sigmoid(H(t')) - 1)) + G(t')
    inverse:  b = (b' - G(t')) * exp(-clamp * (2 sigmoid(H(t')) - 1));  t = t' - F(b)
    """

    def __init__(self, channels: int, split: int, growth: int = 32, clamp: float = 1.0):
        super().__init__()
        if not 0 < split < channels:
            raise ValueError(f"split {split} must lie strictly inside the {channels} channels")
        self.channels, self.split, self.clamp = channels, split, clamp
        rest = channels - split
        self.F = DenseBlock(rest, split, growth)
        self.G = DenseBlock(split, rest, growth)
        self.H = DenseBlock(split, rest, growth)

    def _log_scale(self, top: torch.Tensor) -> torch.Tensor:
        return self.clamp * (torch.sigmoid(_wide(self.H(top))) * 2 - 1)

    # Under bf16 autocast the dense blocks' convolutions run in bf16, but the stream between
    # blocks, the scale and the affine update stay float32 (:func:`_wide`; a no-op without
    # autocast): exp of a bf16 scale, multiplied through ten blocks and divided back out in
    # the reverse pass, would cost the flow its invertibility.
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = _wide(x).split((self.split, self.channels - self.split), dim=1)
        top = top + _wide(self.F(bottom))
        bottom = bottom * torch.exp(self._log_scale(top)) + _wide(self.G(top))
        return torch.cat((top, bottom), 1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        top, bottom = _wide(y).split((self.split, self.channels - self.split), dim=1)
        bottom = (bottom - _wide(self.G(top))) * torch.exp(-self._log_scale(top))
        top = top - _wide(self.F(bottom))
        return torch.cat((top, bottom), 1)


def _wide(t: torch.Tensor) -> torch.Tensor:
    """float32 for a reduced-precision tensor; any other tensor as it is."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


class CouplingStack(nn.Module):
    """``blocks`` coupling blocks in sequence; the inverse walks them backwards.

    With ``memory_saving`` each block's activations are recomputed during the backward pass
    from the block's input instead of being stored, so training memory holds one block's
    activations at a time.
    """

    def __init__(self, channels: int, split: int, blocks: int, growth: int = 32,
                 clamp: float = 1.0, memory_saving: bool = False):
        super().__init__()
        self.memory_saving = memory_saving
        self.blocks = nn.ModuleList(
            CouplingBlock(channels, split, growth, clamp) for _ in range(blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = maybe_recompute(block.forward, x, enabled=self.memory_saving)
        return x

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        for block in reversed(self.blocks):
            y = maybe_recompute(block.inverse, y, enabled=self.memory_saving)
        return y
