"""Checkpoints: weights as safetensors plus the config as JSON. Loading never unpickles.

A checkpoint is a directory holding ``model.safetensors`` and ``config.json`` (and, for a
training checkpoint, whatever else the trainer adds). Writes go to a temporary sibling
directory that is renamed into place, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from iicnet.model import IICNet
from iicnet.model.config import Config, ConfigError, from_dict
from iicnet.storage.atomic import publishing

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing a file or does not match its config."""


def write_model_files(directory: str | Path, model: IICNet, config: Config) -> None:
    """Write the weights and config into an existing directory (no atomicity of its own)."""
    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS), metadata={"format": "iicnet"})
    (directory / CONFIG).write_text(config.to_json())


def save(directory: str | Path, model: IICNet, config: Config) -> Path:
    """Atomically create (or replace) ``directory`` with the model's weights and config."""
    directory = Path(directory)
    with publishing(directory) as tmp:
        write_model_files(tmp, model, config)
    return directory


def load_config(directory: str | Path) -> Config:
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG}; not an IICNet checkpoint directory")
    try:
        return from_dict(json.loads(path.read_text()), source=str(path))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc


def load(directory: str | Path, device: str | torch.device = "cpu") -> tuple[IICNet, Config]:
    """Build the model its config describes and load its safetensors weights (strictly)."""
    config = load_config(directory)
    path = Path(directory) / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS}")
    model = IICNet(config)
    state = load_file(str(path), device=str(device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match {CONFIG} "
            f"(missing: {missing[:3]}, unexpected: {unexpected[:3]})"
        )
    return model.to(device).eval(), config


def find(path: str | Path) -> Path:
    """The folder at or under ``path`` holding ``model.safetensors`` and ``config.json``: a
    checkpoint directory itself, or a downloaded MLflow model (``artifacts/checkpoint``)."""
    path = Path(path)
    if (path / CONFIG).is_file():
        return path  # load() then names what else is missing
    for candidate in (path, path / "artifacts" / "checkpoint"):
        if (candidate / WEIGHTS).is_file() and (candidate / CONFIG).is_file():
            return candidate
    found = sorted(p.parent for p in path.rglob(WEIGHTS) if (p.parent / CONFIG).is_file())
    if not found:
        raise CheckpointError(f"{path}: no {WEIGHTS} with {CONFIG}; not an IICNet model")
    return found[0]
