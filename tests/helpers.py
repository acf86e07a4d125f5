"""Shared test helpers: perturbing a network, the environment of a job subprocess, a small
or read-only filesystem to write into."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
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


@contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """Mount a tmpfs on ``folder`` (created) with mount ``options`` (``size=2m``,
    ``ro,size=1m``) for the block: a full or read-only disk for real. Mounting needs root;
    the test is skipped where it cannot."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}) here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def resize_tmpfs(folder: Path, size: str) -> None:
    """Give a mounted :func:`tmpfs` a new size (e.g. room for a rerun)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True)
