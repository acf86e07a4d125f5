"""Shared test helpers for the model tests."""

from __future__ import annotations

import torch
from torch import nn


def perturb(module: nn.Module, scale: float = 0.05, seed: int = 0) -> nn.Module:
    """Add random noise to every parameter, so zero-initialised layers are not trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    return module
