"""The Python API: ``iicnet.load(MODEL)`` -> :class:`~iicnet.convert.Converter`.

This is where a model name becomes a model: a checkpoint directory is read with
:mod:`iicnet.formats.checkpoint`, ``zoo:NAME`` from the models shipped in the package
(:mod:`iicnet.zoo`), a ``models:/`` or ``runs:/`` URI through :mod:`iicnet.registry`. What
the converter then does is documented in :mod:`iicnet.convert.converter`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from iicnet import zoo
from iicnet.convert import DEFAULT_HALO, DEFAULT_TILE, Converter, ModelSource
from iicnet.formats.imagefiles import InputError
from iicnet.model import IICNet
from iicnet.model.config import Config

MODEL_SCHEMES = ("models:/", "runs:/")


class ModelError(RuntimeError):
    """A model URI or checkpoint cannot be resolved or loaded; the message says why."""


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; an unavailable ``cuda`` is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError(f"--device {device}: expected cpu, cuda or auto")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA GPU is available here; use cpu or auto")
    return torch.device(device)


def load_model(uri: str, device: torch.device | str = "cpu"
               ) -> tuple[IICNet, Config, ModelSource]:
    """Resolve a checkpoint directory or an MLflow model URI into an evaluating model.

    Raises :class:`ModelError` for an unknown URI, a missing or damaged checkpoint, an
    unreachable registry, or a name, alias or version it does not have.
    """
    from iicnet.formats import checkpoint
    from iicnet.formats.checkpoint import CheckpointError

    uri = str(uri)
    if uri.startswith(zoo.SCHEME):
        try:
            model, config = checkpoint.load(zoo.folder(uri))
        except (zoo.ZooError, CheckpointError) as exc:
            raise ModelError(str(exc)) from exc
        return model.to(device).eval(), config, ModelSource(uri, uri)
    if not uri.startswith(MODEL_SCHEMES):
        path = Path(uri)
        if "://" in uri or (":/" in uri and not path.exists()):
            raise ModelError(f"{uri}: unknown model URI; expected zoo:<name>, "
                             "models:/<name>@<alias>, models:/<name>/<version>, "
                             "runs:/<run_id>/<path> or a checkpoint directory")
        if not path.exists():
            raise ModelError(f"{uri}: no such checkpoint directory (or give a model URI: "
                             "models:/<name>@<alias>, models:/<name>/<version>, runs:/...)")
        if not path.is_dir():
            raise ModelError(f"{uri}: a file, not a checkpoint directory (model.safetensors "
                             "+ config.json) or model URI")
        try:
            model, config = checkpoint.load(checkpoint.find(path))
        except CheckpointError as exc:
            raise ModelError(str(exc)) from exc
        return model.to(device).eval(), config, ModelSource(uri, uri)
    try:
        from iicnet import registry

        # resolved once: MLflow's download_artifacts can unset MLFLOW_TRACKING_URI on its way
        # out (in a process that never set a tracking URI itself)
        server = registry.tracking_uri()
        model, config = registry.load_model(uri, server)
        name, version = registry.registered_version(uri, server)
    except ImportError as exc:
        raise ModelError(f"{uri}: loading registered models needs MLflow: pip install "
                         f"'iicnet[registry]' ({exc})") from exc
    except (registry.TrackingError, CheckpointError) as exc:
        raise ModelError(str(exc)) from exc
    return model.to(device).eval(), config, ModelSource(uri, name or uri, version)


def load(model: str | Path, *, device: str = "auto", tile: int = DEFAULT_TILE,
         progress: bool = False, engine: str = "auto", halo: int = DEFAULT_HALO) -> Converter:
    """A :class:`Converter` for a shipped model (``zoo:video-k3-m``), a registered one
    (``models:/iicnet-video@champion``,
    ``models:/iicnet-video/3``, ``runs:/<run_id>/model``; tracking server from
    ``MLFLOW_TRACKING_URI``) or a local checkpoint directory.

    ``device``: cpu, cuda or auto. ``tile``: largest tile side in pixels (0: no tiling).
    ``engine``: torch, openvino (CPU; torch with a note when it is not installed) or auto
    (openvino on the CPU when installed). ``halo``: pixels of context around each tile.
    """
    torch_device = resolve_device(device)
    net, config, source = load_model(str(model))
    return Converter(net, config, source, device=torch_device, tile=tile, progress=progress,
                     engine=engine, halo=halo)
