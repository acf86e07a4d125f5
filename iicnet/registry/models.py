"""Models: a checkpoint logged as an MLflow model, and a logged or registered model loaded
back.

- :func:`log_model` stores a checkpoint directory (``model.safetensors`` + ``config.json``)
  as an MLflow pyfunc whose code is :mod:`iicnet.registry.pyfunc` (logged as code, not
  pickled), named for what it is (:func:`logged_model_name`), its metrics linked to the
  dataset its run trained on; :func:`log_checkpoint` does so for a training checkpoint,
  verified complete first; :func:`model_card` writes a version's description.
- :func:`load_model` turns ``models:/iicnet-video@candidate``, ``runs:/...`` URIs into
  ``(IICNet, Config)`` by reading the safetensors weights and the JSON config: no pickle, no
  model code from the artifact store. MLflow's artifact download goes through the
  process-wide tracking URI, which is set for that download only
  (:func:`~iicnet.registry.tracking.process_tracking_uri`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from iicnet.formats import checkpoint
from iicnet.model import IICNet
from iicnet.model.config import Config
from iicnet.registry.tracking import (
    TrackingError,
    check_tracking,
    mlflow_client,
    process_tracking_uri,
    redact,
    tracking_uri,
)

MODEL_NAME = "model"
"""The folder a pyfunc is saved in before its upload; where earlier versions logged it
into the run (``runs:/<run_id>/model``)."""


CHECKPOINT_ARTIFACT = "checkpoint"


_PACKAGE = Path(__file__).resolve().parents[1]
"""The ``iicnet`` package, shipped with every logged model as its code."""


def model_name(task: str) -> str:
    """The registered model of a task: ``iicnet-video``, ``iicnet-stereo``, ..."""
    return f"iicnet-{task}"


def logged_model_name(config: Config, config_file: str | Path | None = None) -> str:
    """What a logged model is, as its name: the name of the config file it was trained
    from, with the task in front where the name lacks it (``video-k3-small``,
    ``video-mine``); without one, the task and the architecture (``video-k3-b2-nf8``,
    ``dualview-k2-x2-b8-nf64``, ``x2`` for half resolution)."""
    task = config.data.task
    if config_file is not None:
        stem = Path(config_file).stem
        return stem if stem == task or stem.startswith(f"{task}-") else f"{task}-{stem}"
    m = config.model
    half = "" if m.downscale == "none" else "-x2"
    return f"{task}-k{m.num_images}{half}-b{m.blocks}-nf{m.nf}"


def log_model(uri: str, run_id: str, directory: str | Path, *, name: str | None = None,
              metrics: dict[str, float] | None = None, step: int | None = None) -> str:
    """Log checkpoint ``directory`` as an MLflow 3 logged model of run ``run_id``, named
    ``name`` (default: :func:`logged_model_name` of its config); its ``models:/m-<id>`` URI.
    ``metrics`` (the validation scores) are logged to the run against the model and against
    the dataset the run recorded (:func:`~iicnet.registry.tracking.log_datasets`; scores
    ``val/...`` against its validation set where it has a separate one), so the model's page
    and ``search_logged_models`` show them, and the page lists the dataset.

    The artifact is a pyfunc from code: the safetensors weights and JSON config, the model
    code (:mod:`iicnet.registry.pyfunc`) and a copy of the :mod:`iicnet` package, so
    ``mlflow.pyfunc.load_model`` works where iicnet is not installed. A failure marks the
    logged model FAILED.
    """
    import mlflow
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    directory = Path(directory)
    config = checkpoint.load_config(directory)
    client = mlflow_client(uri)
    run = client.get_run(run_id)
    model = client.create_logged_model(
        run.info.experiment_id, name=name or logged_model_name(config), source_run_id=run_id,
        model_type="iicnet",
        params={k: json.dumps(v) if isinstance(v, list) else str(v)
                for k, v in config.flat().items()},
        tags={"task": config.data.task, "num_images": str(config.model.num_images)})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            files = Path(tmp, CHECKPOINT_ARTIFACT)
            files.mkdir()
            for name in (checkpoint.WEIGHTS, checkpoint.CONFIG):
                shutil.copy2(directory / name, files / name)
            code = Path(tmp, "iicnet")
            shutil.copytree(_PACKAGE, code, ignore=_code_only)
            saved = Path(tmp, MODEL_NAME)
            # Saved locally and uploaded by id: MLflow's fluent API would need global state.
            mlflow.pyfunc.save_model(
                path=str(saved),
                python_model=str(Path(__file__).resolve().with_name("pyfunc.py")),
                artifacts={CHECKPOINT_ARTIFACT: str(files)},
                signature=_signature(), input_example=_input_example(config),
                code_paths=[str(code)],
                pip_requirements=[f"torch>={torch.__version__.split('+')[0]}", "numpy",
                                  "safetensors", "pyyaml", "pillow"],
            )
            client.log_model_artifacts(model.model_id, str(saved))
        datasets = _run_datasets(run)
        for key, value in (metrics or {}).items():
            dataset = datasets.get("validation" if key.startswith("val/") else "training",
                                   datasets.get("training"))
            client.log_metric(run_id, key, float(value), step=step, model_id=model.model_id,
                              dataset_name=dataset and dataset.name,
                              dataset_digest=dataset and dataset.digest)
    except BaseException:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    # The run's outputs: what the run page lists under "Logged models".
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=step or 0)])
    return f"models:/{model.model_id}"


def _run_datasets(run) -> dict[str, Any]:
    """``{context: Dataset}`` of the dataset inputs a run recorded (``training``,
    ``validation``)."""
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    found = {}
    for entry in (run.inputs.dataset_inputs if run.inputs else []):
        context = {t.key: t.value for t in entry.tags}.get(MLFLOW_DATASET_CONTEXT)
        if context:
            found[context] = entry.dataset
    return found


def log_checkpoint(uri: str, run_id: str, directory: str | Path, *, name: str | None = None,
                   metrics: dict[str, float] | None = None, step: int | None = None) -> str:
    """:func:`log_model` of a training checkpoint, verified first
    (:func:`iicnet.formats.checkpoint.verify`): only a complete checkpoint becomes a model
    version. Raises CheckpointError naming what is missing or damaged."""
    checkpoint.verify(directory)
    return log_model(uri, run_id, directory, name=name, metrics=metrics, step=step)


def _signature():
    """The records :mod:`iicnet.registry.pyfunc` answers, as MLflow's version page shows them:
    ``images`` (K base64 image files) in, ``embedding`` (a base64 PNG) out, or the other way
    round with the images' ``names``; each column optional, as each record has one side."""
    from mlflow.models import ModelSignature
    from mlflow.types import DataType
    from mlflow.types.schema import Array, ColSpec, Schema

    files = Array(DataType.string)
    return ModelSignature(
        inputs=Schema([ColSpec(files, "images", required=False),
                       ColSpec(DataType.string, "embedding", required=False)]),
        outputs=Schema([ColSpec(DataType.string, "embedding", required=False),
                        ColSpec(files, "images", required=False),
                        ColSpec(files, "names", required=False)]))


def _input_example(config: Config):
    """A serving request as the model page shows it: one record of K 32x32 RGB PNGs
    (gradients, one hue each), base64."""
    import base64
    import io

    import numpy as np
    import pandas as pd
    from PIL import Image

    ramp = np.linspace(0, 255, 32, dtype=np.float64)
    images = []
    for k in range(config.model.num_images):
        pixels = np.stack([np.add.outer(ramp, ramp) / 2,
                           np.full((32, 32), 255.0 * k / max(1, config.model.num_images - 1)),
                           np.add.outer(ramp[::-1], ramp) / 2], axis=-1)
        buffer = io.BytesIO()
        Image.fromarray(pixels.round().astype(np.uint8)).save(buffer, format="PNG")
        images.append(base64.b64encode(buffer.getvalue()).decode())
    return pd.DataFrame([{"images": images}])


def model_card(config: Config, scores: dict[str, float], *, data: str, step: int | None,
               run_id: str) -> str:
    """A model version's description: what it embeds, what it was trained on and how long,
    its validation scores, and how to use it."""
    m, name = config.model, model_name(config.data.task)
    rows = "\n".join(f"| {key.removeprefix('val/')} | {value:.4f} |"
                     for key, value in sorted(scores.items()))
    return (f"IICNet, task {config.data.task}: {m.num_images} images into one "
            f"{m.embed_channels}-channel PNG "
            f"({'full resolution' if m.downscale == 'none' else 'half resolution'}); "
            f"{m.blocks} coupling blocks, nf {m.nf}, growth {m.growth}.\n\n"
            f"Trained {step} steps on `{data}` (crops {config.data.crop}, batch "
            f"{config.data.batch_size} per worker); MLflow run `{run_id}`.\n\n"
            f"| validation (RGB, {config.train.val_measure} of the held-out split) | value "
            f"|\n|---|---|\n{rows}\n\n"
            f"Use it: `iicnet embed --model models:/{name}/<version> IMAGES... -o out.png`, "
            f"then `iicnet restore --model models:/{name}/<version> out.png -o DIR`.")


def _code_only(folder: str, names: list[str]) -> set[str]:
    """What a logged model's copy of the package leaves out (a ``copytree`` ignore): byte
    code, and the zoo's weights, megabytes that the served model never reads."""
    skipped = {n for n in names if n == "__pycache__" or n.endswith(".pyc")}
    if Path(folder) == _PACKAGE / "zoo":
        skipped.add("models")
    return skipped


def logged_model_id(model_uri: str) -> str:
    model_id = model_uri.removeprefix("models:/")
    if not model_uri.startswith("models:/m-") or "/" in model_id or "@" in model_id:
        raise ValueError(f"{model_uri}: expected models:/m-<id> (what log_model returns)")
    return model_id


def load_model(source: str | Path, uri: str | None = None,
               device: str | torch.device = "cpu") -> tuple[IICNet, Config]:
    """``(IICNet, Config)`` from a registered or logged model, or a local directory.

    ``source``: ``models:/iicnet-video@candidate``, ``models:/iicnet-video/3``, a logged
    model ``models:/m-<id>``, or ``runs:/<run_id>/model`` (models logged as run artifacts
    by earlier versions). ``uri`` is the tracking server (default: :func:`tracking_uri`).
    """
    text = str(source)
    if not text.startswith(("models:/", "runs:/")):
        raise checkpoint.CheckpointError(f"{source}: not a models:/ or runs:/ URI (local "
                                         "folders: iicnet.formats.checkpoint.load)")
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = uri or tracking_uri()
    check_tracking(uri)
    client = mlflow_client(uri)
    with tempfile.TemporaryDirectory() as tmp, process_tracking_uri(uri):
        try:
            if text.startswith("runs:/"):
                run_id, path = _parse_runs_uri(text)
                local = client.download_artifacts(run_id, path, tmp)
            else:
                # Only the weights and config, not the code the pyfunc carries.
                location = _version_source(client, text).rstrip("/")
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{location}/artifacts/{CHECKPOINT_ARTIFACT}", dst_path=tmp,
                    tracking_uri=uri)
        except MlflowException as exc:
            raise TrackingError(f"{source}: cannot fetch the model from {redact(uri)} "
                                f"({exc.message})") from exc
        return checkpoint.load(checkpoint.find(Path(local)), device=device)


def _parse_runs_uri(model_uri: str) -> tuple[str, str]:
    run_id, _, path = model_uri.removeprefix("runs:/").partition("/")
    if not model_uri.startswith("runs:/") or not run_id or not path:
        raise ValueError(f"{model_uri}: expected runs:/<run_id>/<path>")
    return run_id, path


def _version_source(client, model_uri: str) -> str:
    """Where the files of ``models:/m-<id>``, ``models:/name@alias`` or
    ``models:/name/version`` are stored (a version's source is its logged model's
    artifact location; see :func:`register`)."""
    if model_uri.startswith("models:/m-"):
        return client.get_logged_model(logged_model_id(model_uri)).artifact_location
    name, at, alias = model_uri.removeprefix("models:/").partition("@")
    if at:
        version = client.get_model_version_by_alias(name, alias).version
    else:
        name, _, version = name.partition("/")
        if not version.isdigit():
            raise ValueError(f"{model_uri}: expected models:/<name>@<alias>, "
                             "models:/<name>/<version> or models:/m-<id>")
    return client.get_model_version_download_uri(name, version)


