"""Checkpoints: weights as safetensors plus the config as JSON. Loading never unpickles.

A checkpoint is a directory holding ``model.safetensors`` and ``config.json`` (and, for a
training checkpoint, whatever else the trainer adds), and ``complete.json``, written last:
the size and sha256 of every other file. :func:`save` also builds the directory under a
temporary name and renames it into place, but a checkpoint is often copied by someone else
(Ray uploads training checkpoints to its storage itself, MLflow downloads artifacts), and a
copy that was cut short looks complete by its name. The marker is what proves it is not:
every loader calls :func:`verify`, which checks each listed file's size and hash.

Checkpoints without the marker (written before it existed, the parity imports of the
official weights, the files a registered MLflow model carries) are accepted when every
safetensors file in them is whole: its header parses and its tensor data ends exactly at the
end of the file, which a truncated copy never does. A damaged or incomplete checkpoint
raises :class:`CheckpointError` saying what is wrong and, for a folder of checkpoints (Ray's
``step-N`` folders), which sibling is the newest complete one.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from iicnet.model import IICNet
from iicnet.model.config import Config, ConfigError, from_dict
from iicnet.storage.atomic import publishing, replacing
from iicnet.storage.objects import read_small_file, sha256

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
MARKER = "complete.json"
MARKER_FORMAT = "iicnet-checkpoint-files"
MAX_JSON_BYTES = 1 << 20
"""config.json, complete.json and the trainer's JSON are a few KiB; larger is refused."""
MAX_HEADER_BYTES = 100 << 20


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing a file, is damaged or incomplete, or does not match
    its config."""


def write_model_files(directory: str | Path, model: IICNet, config: Config) -> None:
    """Write the weights and config into an existing directory (no atomicity of its own;
    call :func:`seal` once every file of the checkpoint is written)."""
    directory = Path(directory)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS), metadata={"format": "iicnet"})
    (directory / CONFIG).write_text(config.to_json())


def save(directory: str | Path, model: IICNet, config: Config) -> Path:
    """Atomically create (or replace) ``directory`` with the model's weights and config."""
    directory = Path(directory)
    with publishing(directory) as tmp:
        write_model_files(tmp, model, config)
        seal(tmp)
    return directory


def seal(directory: str | Path) -> dict[str, Any]:
    """Write ``complete.json`` (size and sha256 of every other file) into ``directory``;
    call it last, after every file of the checkpoint is written. Returns the marker."""
    directory = Path(directory)
    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)}
             for p in sorted(directory.iterdir())
             if p.is_file() and p.name != MARKER and not p.name.startswith(".")}
    marker = {"format": MARKER_FORMAT, "version": 1, "files": files}
    with replacing(directory / MARKER) as tmp:
        tmp.write_text(json.dumps(marker, indent=1))
    return marker


def read_json(path: Path) -> Any:
    """A small JSON file of a checkpoint; CheckpointError naming it when it is not one."""
    try:
        data = read_small_file(path, MAX_JSON_BYTES)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    if len(data) > MAX_JSON_BYTES:
        raise CheckpointError(f"{path}: larger than {MAX_JSON_BYTES // 1024} KiB; damaged")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    except RecursionError:
        raise CheckpointError(f"{path}: not valid JSON (nested too deeply)") from None


def check_safetensors(path: Path) -> None:
    """Raise CheckpointError unless ``path`` is a whole safetensors file: a parsable header
    whose tensors' data ends exactly at the end of the file."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: {size} bytes; truncated (no safetensors header)")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise CheckpointError(f"{path}: {size} bytes, shorter than its own header says "
                                  f"({8 + length}); truncated or not a safetensors file")
        try:
            header = json.loads(f.read(length).decode("utf-8"))
            end = max((int(v["data_offsets"][1]) for k, v in header.items()
                       if k != "__metadata__"), default=0)
        except (ValueError, UnicodeDecodeError, TypeError, KeyError, IndexError,
                AttributeError, RecursionError) as exc:
            raise CheckpointError(f"{path}: damaged safetensors header ({exc})") from None
    if 8 + length + end != size:
        raise CheckpointError(f"{path}: {size} bytes where its header describes "
                              f"{8 + length + end}; truncated or damaged")


def _marker_problem(directory: Path) -> str | None:
    """What is wrong with the files ``complete.json`` lists; None when they all match."""
    marker = read_json(directory / MARKER)
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
        return f"{MARKER} is not an IICNet completeness marker"
    files = marker.get("files")
    if not isinstance(files, dict):
        return f"{MARKER} is not an IICNet completeness marker"
    for name, expected in files.items():
        path = directory / name
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            return f"{MARKER} lists {name!r}, which is not a file name"
        if not isinstance(expected, dict):
            return f"{MARKER}: the entry of {name} is damaged"
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected.get("bytes"):
            return f"{name} is {size} of {expected.get('bytes')} bytes"
        if sha256(path) != expected.get("sha256"):
            return f"{name} does not match its sha256 in {MARKER}"
    return None


def problem(directory: str | Path) -> str | None:
    """Why ``directory`` is not a complete checkpoint, or None when it is (see the module
    docstring: the marker's sizes and hashes, else whole safetensors files)."""
    directory = Path(directory)
    if not directory.is_dir():
        return "not a folder"
    try:
        if (directory / MARKER).is_file():
            return _marker_problem(directory)
        if not (directory / WEIGHTS).is_file():
            return f"no {WEIGHTS}"
        for path in sorted(directory.glob("*.safetensors")):
            check_safetensors(path)
    except CheckpointError as exc:
        return str(exc).removeprefix(f"{directory}/").removeprefix(f"{directory}: ")
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    return None


def last_complete(directory: str | Path) -> Path | None:
    """The newest complete sibling of ``directory`` (by name, as ``step-00000040`` sorts),
    skipping ``directory`` itself; None when there is none."""
    directory = Path(directory)
    try:
        siblings = sorted((p for p in directory.parent.iterdir()
                           if p.is_dir() and p != directory and not p.name.startswith(".")),
                          reverse=True)
    except OSError:
        return None
    for sibling in siblings:
        if (sibling / CONFIG).is_file() and problem(sibling) is None:
            return sibling
    return None


def verify(directory: str | Path) -> None:
    """Raise CheckpointError naming what is wrong (and the newest complete sibling, if any)
    unless ``directory`` is a complete checkpoint."""
    why = problem(directory)
    if why is None:
        return
    message = f"{directory}: incomplete or damaged checkpoint: {why}"
    fallback = last_complete(directory)
    if fallback is not None:
        message += f"; the last complete checkpoint beside it is {fallback}"
    raise CheckpointError(message)


def load_config(directory: str | Path) -> Config:
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {CONFIG}; not an IICNet checkpoint directory")
    try:
        return from_dict(read_json(path), source=str(path))
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; CheckpointError (never SafetensorError) when it is
    damaged, and when a tensor holds NaN or infinity."""
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read the tensors ({exc})") from None
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: tensor {name} holds NaN or infinite values")
    return tensors


def load(directory: str | Path, device: str | torch.device = "cpu") -> tuple[IICNet, Config]:
    """Build the model its config describes and load its safetensors weights (strictly).

    The checkpoint is verified first, and the config checked (sizes bounded, the model's
    parameter count estimated) before the model is built."""
    config = load_config(directory)
    path = Path(directory) / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {WEIGHTS}")
    verify(directory)
    state = load_tensors(path, device)
    model = IICNet(config)
    expected = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
             for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: weights do not match {CONFIG} "
            f"(missing: {missing[:3]}, unexpected: {unexpected[:3]}, wrong shape: {wrong[:3]})"
        )
    model.load_state_dict(state)
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

