"""Activation recomputation: the memory-saving switch."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint


def maybe_recompute(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                    enabled: bool) -> torch.Tensor:
    """``fn(x)``; when enabled and autograd is recording, keep only ``x`` and recompute the
    activations of ``fn`` during the backward pass (one extra forward, far less memory)."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, x, use_reentrant=False)
    return fn(x)
