"""Shared test helpers: perturbing a network, the environment of a job subprocess."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn


def perturb(module: nn.Module, scale: float = 0.05, seed: int = 0) -> nn.Module:
    """Add random noise to every parameter, so zero-initialised layers are not trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    return module


def job_env(base: Path, tracking: str, **extra: str) -> dict[str, str]:
    """Environment of a training or sweep job run as a subprocess: the MLflow server, a cache
    under ``base``, no Ray token auth or usage stats, no inherited ``RAY_ADDRESS``."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "RAY_AUTH_MODE": "disabled",
           "IICNET_CACHE": str(base / "cache"), "MLFLOW_DISABLE_TELEMETRY": "true",
           "RAY_USAGE_STATS_ENABLED": "0", **extra}
    env.pop("RAY_ADDRESS", None)
    return env
