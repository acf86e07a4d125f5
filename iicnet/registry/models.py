"""MLflow: tracking runs, logging and registering models, loading them back. The only module
of :mod:`iicnet` that imports MLflow.

- :func:`check_tracking` fails fast, with a message saying what to do, when the tracking
  server named by ``MLFLOW_TRACKING_URI`` (or given) does not answer.
- :class:`Tracker` logs params, metrics, images and files into one run by id, so the
  process that created the run and a training worker elsewhere can both write to it.
- :func:`log_model` stores a checkpoint directory (``model.safetensors`` + ``config.json``)
  as an MLflow pyfunc whose code is :mod:`iicnet.registry.pyfunc` (logged as code, not pickled);
  :func:`register` makes it a version of ``iicnet-<task>`` with an alias and tags.
- :func:`load_model` turns ``models:/iicnet-video@candidate``, ``runs:/...`` URIs or a local
  directory into ``(IICNet, Config)`` by reading the safetensors weights and the JSON config:
  no pickle, no model code from the artifact store.

Every call names its tracking server explicitly (``MlflowClient(uri)``). One exception:
:func:`load_model` sets MLflow's process-wide tracking URI to the server it loads from,
because ``mlflow.artifacts.download_artifacts`` otherwise unsets ``MLFLOW_TRACKING_URI`` on
its way out in a process that never set one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iicnet.formats import checkpoint
from iicnet.model import IICNet
from iicnet.model.config import Config

DEFAULT_ALIAS = "candidate"
MODEL_NAME = "model"
"""Name of the logged model inside its run."""
CHECKPOINT_ARTIFACT = "checkpoint"
RUN_NAME_TAG = "iicnet.run_name"
RANKED_BY = "val/restored_psnr"
"""The version tag aliases move on: one moves only to a version that scores higher."""
_PACKAGE = Path(__file__).resolve().parents[1]
"""The ``iicnet`` package, shipped with every logged model as its code."""


class TrackingError(RuntimeError):
    """The MLflow tracking server cannot be reached or refused a request."""


def model_name(task: str) -> str:
    """The registered model of a task: ``iicnet-video``, ``iicnet-stereo``, ..."""
    return f"iicnet-{task}"


def redact(uri: str) -> str:
    """``uri`` without a password (``http://user:secret@host`` -> ``http://user:***@host``)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


LOCAL_STORE = ".iicnet"
"""The folder ``make run`` (the embedded default) keeps its MLflow store in:
``<repository>/.iicnet/mlflow.db``, or ``$IICNET_CACHE/mlflow.db``."""


def local_store() -> Path | None:
    """The embedded default's SQLite store as seen from here: ``$IICNET_CACHE/mlflow.db``
    when ``IICNET_CACHE`` is set, else ``.iicnet/mlflow.db`` in the current folder or the
    nearest folder above that has one; None when there is none."""
    import os

    if os.environ.get("IICNET_CACHE"):
        found = Path(os.environ["IICNET_CACHE"]) / "mlflow.db"
        return found.resolve() if found.is_file() else None
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / LOCAL_STORE / "mlflow.db").is_file():
            return folder / LOCAL_STORE / "mlflow.db"
    return None


def tracking_uri(default: str | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else ``default``, else the embedded default's store
    (:func:`local_store`). Raises :class:`TrackingError` saying where it looked when there is
    none, rather than letting MLflow create an empty store in the current folder."""
    import os

    found = os.environ.get("MLFLOW_TRACKING_URI") or default
    if found:
        return found
    store = local_store()
    if store is None:
        where = (f"$IICNET_CACHE ({os.environ['IICNET_CACHE']})" if os.environ.get("IICNET_CACHE")
                 else f"{Path.cwd()} or any folder above it")
        raise TrackingError(f"no MLflow store: MLFLOW_TRACKING_URI is not set and there is no "
                            f"{LOCAL_STORE}/mlflow.db (what make run writes) in {where}; run "
                            "from the repository where make run ran, or set "
                            "MLFLOW_TRACKING_URI (e.g. http://127.0.0.1:5000 for a server)")
    return f"sqlite:///{store}"


def check_tracking(uri: str, timeout: float = 5.0) -> None:
    """Raise :class:`TrackingError` now if ``uri`` cannot be used, rather than after training.

    An http(s) server must answer ``/health``; a ``sqlite:///`` store's folder is created.
    """
    scheme = urllib.parse.urlsplit(uri).scheme
    if scheme in ("http", "https"):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            raise TrackingError(
                f"MLflow tracking server {redact(uri)} answered {exc.code} {exc.reason} to "
                f"/health; check MLFLOW_TRACKING_URI (and the server's --allowed-hosts)"
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingError(
                f"MLflow tracking server {redact(uri)} is not reachable ({reason}). Start one "
                "(`mlflow server --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 "
                "--port 5000`) or point MLFLOW_TRACKING_URI at a running server; unset it to "
                "use a local SQLite store"
            ) from exc
    elif scheme == "sqlite":
        path = uri[len("sqlite:///"):]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(uri: str, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created (with ``artifact_location``) if missing."""
    client = _client(uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def start_run(uri: str, experiment: str, run_name: str, config: Config, *,
              artifact_location: str | None = None, tags: dict[str, str] | None = None,
              resume: bool = False) -> str:
    """Create the MLflow run of a training run (or find it again when resuming); log the
    full flat config as params and as ``config.json``. Returns the run id.

    A resumed run is the one tagged ``iicnet.run_name`` = ``run_name``; params it already
    has keep their first value (MLflow params are immutable), new ones are added.
    """
    from mlflow.entities import Param, RunStatus

    client = _client(uri)
    exp = experiment_id(uri, experiment, artifact_location)
    run_id = None
    if resume:
        runs = client.search_runs([exp], filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
                                  max_results=1)
        if runs:
            run_id = runs[0].info.run_id
            client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    if run_id is None:
        run = client.create_run(exp, run_name=run_name,
                                tags={RUN_NAME_TAG: run_name, **(tags or {})})
        run_id = run.info.run_id
    existing = client.get_run(run_id).data.params
    params = [Param(k, json.dumps(v) if isinstance(v, list) else str(v))
              for k, v in config.flat().items() if k not in existing]
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start:start + 100])
    client.log_text(run_id, config.to_json(), "config.json")
    return run_id


@contextlib.contextmanager
def system_metrics(uri: str, run_id: str, node: str, *, resume: bool = False,
                   interval: float = 10.0) -> Iterator[bool]:
    """Log this machine's CPU, memory, disk, network (and, with NVML, GPU) use to run
    ``run_id`` every ``interval`` seconds as ``system/<node>/...`` while the block runs;
    yields whether it does (MLflow's monitor needs psutil; without it nothing is logged).
    ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` overrides ``interval``. ``resume``
    continues the step count of an earlier part of the run."""
    try:
        import psutil  # noqa: F401  (what MLflow's monitor samples with)
    except ImportError:
        yield False
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    logger = logging.getLogger("mlflow.system_metrics")
    level = logger.level
    logger.setLevel(logging.WARNING)  # its start and stop lines are not for the console
    monitor = SystemMetricsMonitor(run_id, sampling_interval=interval, node_id=node,
                                   resume_logging=resume, tracking_uri=uri)
    monitor.start()
    try:
        yield True
    finally:
        monitor.finish()
        logger.setLevel(level)


class Tracker:
    """Logs into one existing MLflow run; safe to build in any process that reaches ``uri``."""

    def __init__(self, uri: str, run_id: str):
        self.uri, self.run_id = uri, run_id
        self._client = _client(uri)

    def params(self, values: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self._client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in values.items()])

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in values.items()]
        self._client.log_batch(self.run_id, metrics=batch)

    def image(self, picture: np.ndarray, key: str, step: int) -> None:
        """A picture in the run's image series ``key`` at ``step`` (the UI's slider walks
        through the steps)."""
        self._client.log_image(self.run_id, picture, key=key, step=step)

    def json(self, data: Any, path: str) -> None:
        self._client.log_dict(self.run_id, data, path)

    def text(self, text: str, path: str) -> None:
        self._client.log_text(self.run_id, text, path)

    def file(self, path: str | Path, folder: str) -> None:
        """Upload a local file as an artifact under ``folder``."""
        self._client.log_artifact(self.run_id, str(path), folder)

    def tags(self, values: dict[str, str]) -> None:
        for key, value in values.items():
            self._client.set_tag(self.run_id, key, value)

    def last_step(self, key: str) -> int:
        """The highest step at which metric ``key`` was logged (0 when never)."""
        history = self._client.get_metric_history(self.run_id, key)
        return max((m.step for m in history), default=0)

    def status(self) -> str:
        """``RUNNING``, ``FINISHED``, ``FAILED`` or ``KILLED``."""
        return self._client.get_run(self.run_id).info.status

    def finish(self, status: str = "FINISHED") -> None:
        self._client.set_terminated(self.run_id, status=status)


def find_runs(uri: str, experiment: str, tags: dict[str, str], *,
              has_tags: tuple[str, ...] = ()) -> dict[str, dict[str, str]]:
    """``{run_id: tags}`` of the runs of ``experiment`` whose tags equal ``tags`` and that
    carry every tag in ``has_tags``; empty when the experiment does not exist."""
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return {}
    terms = [f"tags.`{k}` = '{_quoted(v)}'" for k, v in tags.items()]
    terms += [f"tags.`{k}` != ''" for k in has_tags]
    runs = client.search_runs([found.experiment_id], filter_string=" and ".join(terms),
                              max_results=10_000)
    return {r.info.run_id: dict(r.data.tags) for r in runs}


def log_datasets(uri: str, run_id: str, sources: dict[str, str]) -> dict[str, str]:
    """Record the shard sets a run read as its MLflow dataset inputs (lineage on the run
    page): ``sources`` maps a context (``training``, ``validation``) to a shard directory or
    ``s3://`` prefix. Each dataset's digest is the SHA-256 of its ``manifest.json`` (the
    manifest lists every shard with its size and hash, so the same digest means the same
    data); its profile, the samples per split. Returns ``{context: digest}``."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    from iicnet import storage
    from iicnet.formats.shards import manifest_digest, read_manifest

    inputs, digests = [], {}
    for context, source in sources.items():
        manifest = read_manifest(source)
        digests[context] = manifest_digest(source)[:16]
        profile = {split: info.get("samples") for split, info in manifest["splits"].items()}
        dataset = Dataset(
            name=f"{manifest.get('source', 'iicnet')}-shards", digest=digests[context],
            source_type="s3" if storage.is_s3(source) else "local",
            source=json.dumps({"uri": source}), profile=json.dumps(profile))
        inputs.append(DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, context)]))
    _client(uri).log_inputs(run_id, datasets=inputs)
    return digests


def _quoted(value: str) -> str:
    if "'" in value:
        raise ValueError(f"tag value {value!r}: quotes cannot be searched for")
    return value


def log_model(uri: str, run_id: str, directory: str | Path, *,
              metrics: dict[str, float] | None = None, step: int | None = None) -> str:
    """Log checkpoint ``directory`` as an MLflow 3 logged model of run ``run_id``; its
    ``models:/m-<id>`` URI. ``metrics`` (the validation scores) are logged to the run
    against the model, so the model's page and ``search_logged_models`` show them.

    The artifact is a pyfunc from code: the safetensors weights and JSON config, the model
    code (:mod:`iicnet.registry.pyfunc`) and a copy of the :mod:`iicnet` package, so
    ``mlflow.pyfunc.load_model`` works where iicnet is not installed. A failure marks the
    logged model FAILED.
    """
    import mlflow
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    directory = Path(directory)
    config = checkpoint.load_config(directory)
    client = _client(uri)
    experiment = client.get_run(run_id).info.experiment_id
    model = client.create_logged_model(
        experiment, name=MODEL_NAME, source_run_id=run_id, model_type="iicnet",
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
            shutil.copytree(_PACKAGE, code,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
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
        for key, value in (metrics or {}).items():
            client.log_metric(run_id, key, float(value), step=step, model_id=model.model_id)
    except BaseException:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    # The run's outputs: what the run page lists under "Logged models".
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=step or 0)])
    return f"models:/{model.model_id}"


def log_checkpoint(uri: str, run_id: str, directory: str | Path, *,
                   metrics: dict[str, float] | None = None, step: int | None = None) -> str:
    """:func:`log_model` of a training checkpoint, verified first
    (:func:`iicnet.formats.checkpoint.verify`): only a complete checkpoint becomes a model
    version. Raises CheckpointError naming what is missing or damaged."""
    checkpoint.verify(directory)
    return log_model(uri, run_id, directory, metrics=metrics, step=step)


def _signature():
    """Parameters only (see :mod:`iicnet.registry.pyfunc`): ``mode``, default ``auto``."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    return ModelSignature(params=ParamSchema([ParamSpec("mode", "string", "auto")]))


def _input_example(config: Config):
    """A serving request as the model page shows it: one record of K 32x32 RGB PNGs
    (gradients, one hue each), base64; with its parameters."""
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
    return pd.DataFrame([{"images": images}]), {"mode": "auto"}


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
            f"| validation (RGB) | value |\n|---|---|\n{rows}\n\n"
            f"Use it: `iicnet embed --model models:/{name}/<version> IMAGES... -o out.png`, "
            f"then `iicnet restore --model models:/{name}/<version> out.png -o DIR`.")


def _logged_model_id(model_uri: str) -> str:
    model_id = model_uri.removeprefix("models:/")
    if not model_uri.startswith("models:/m-") or "/" in model_id or "@" in model_id:
        raise ValueError(f"{model_uri}: expected models:/m-<id> (what log_model returns)")
    return model_id


def quiet_console() -> None:
    """Keep MLflow to real problems on a job's console: no per-run links, database set-up
    notes or artifact progress bars (they stay in the server's and the UI's view)."""
    import logging
    import os

    import mlflow  # noqa: F401 (its import sets the level this then lowers)

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    logging.getLogger("mlflow").setLevel(logging.WARNING)


def register(uri: str, model_uri: str, name: str, *, alias: str | None = DEFAULT_ALIAS,
             tags: dict[str, Any] | None = None, description: str | None = None) -> str:
    """Register the logged model ``model_uri`` (``models:/m-<id>``) as a new version of
    ``name`` with ``tags`` and ``description`` (the version page's model card), and point
    ``alias`` at it (None: leave the aliases; see :func:`claim_alias`); returns the version."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    client = _client(uri)
    model_id = _logged_model_id(model_uri)
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    logged = client.get_logged_model(model_id)
    # The files' location, not models:/m-<id>: a registry on a database resolves that URI
    # through MLflow's process-wide tracking URI, which this module never sets.
    version = client.create_model_version(name, logged.artifact_location,
                                          run_id=logged.source_run_id, model_id=model_id,
                                          tags={k: str(v) for k, v in (tags or {}).items()},
                                          description=description)
    # The logged model's page lists its versions from this tag (what mlflow.register_model
    # writes); the registry on a database keeps no model id on the version itself.
    listed = json.loads(logged.tags.get(MLFLOW_MODEL_VERSIONS, "[]"))
    client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(
        [*listed, {"name": name, "version": str(version.version)}])})
    if alias is not None:
        client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


@dataclass(frozen=True)
class AliasClaim:
    """What :func:`claim_alias` did: ``moved`` to ``version``, or left on ``holder``."""

    name: str
    alias: str
    version: str
    moved: bool
    score: float | None
    holder: str | None = None
    holder_score: float | None = None

    def describe(self, metric: str, force: str = "--force-alias") -> str:
        """One line for the console; ``force`` names the option that overrides."""
        def shown(value: float | None) -> str:
            return "no score" if value is None else f"{metric} {value:.2f}"

        if self.holder is None:
            return f"@{self.alias} -> version {self.version} (the first)"
        if self.moved:
            return (f"@{self.alias} moved to version {self.version} ({shown(self.score)}; "
                    f"version {self.holder} had {shown(self.holder_score)})")
        return (f"@{self.alias} stays on version {self.holder} ({shown(self.holder_score)}; "
                f"this version {self.version} has {shown(self.score)}): point it here with "
                f"{force}, or models:/{self.name}/{self.version} names this one")


def promote(uri: str, source: str, alias: str, *, force: bool = False) -> AliasClaim:
    """Point ``alias`` at the version ``source`` (``models:/name@alias`` or
    ``models:/name/version``) names, only if it scores higher on :data:`RANKED_BY` than the
    alias's holder (or ``force``): ``@candidate`` -> ``@champion``."""
    from mlflow.exceptions import MlflowException

    name, version = registered_version(source, uri)
    if not name:
        raise TrackingError(f"{source}: promote a registered version: models:/<name>@<alias> "
                            "or models:/<name>/<version>")
    try:
        return claim_alias(uri, name, alias, version, RANKED_BY, force=force)
    except MlflowException as exc:
        raise TrackingError(f"{source}: cannot move @{alias} at {redact(uri)} "
                            f"({exc.message})") from exc


def claim_alias(uri: str, name: str, alias: str, version: str, metric: str, *,
                force: bool = False) -> AliasClaim:
    """Point ``alias`` of ``name`` at ``version`` only if that version's tag ``metric`` is
    higher than the current holder's (or nothing holds the alias, or ``force``). A version
    without the score never takes an alias from one unless forced."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)

    def score(v: str) -> float | None:
        try:
            value = float(client.get_model_version(name, v).tags.get(metric, "nan"))
        except ValueError:
            return None
        return None if value != value else value

    try:
        holder = str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        holder = None
    mine = score(version)
    if holder is None or holder == version:
        client.set_registered_model_alias(name, alias, version)
        return AliasClaim(name, alias, version, True, mine)
    theirs = score(holder)
    moved = force or (mine is not None and (theirs is None or mine > theirs))
    if moved:
        client.set_registered_model_alias(name, alias, version)
    return AliasClaim(name, alias, version, moved, mine, holder, theirs)


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
    # download_artifacts(tracking_uri=...) restores the previous global URI on its way out,
    # unsetting MLFLOW_TRACKING_URI when there was none: set it for good instead.
    mlflow.set_tracking_uri(uri)
    client = _client(uri)
    with tempfile.TemporaryDirectory() as tmp:
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
        return client.get_logged_model(_logged_model_id(model_uri)).artifact_location
    name, at, alias = model_uri.removeprefix("models:/").partition("@")
    if at:
        version = client.get_model_version_by_alias(name, alias).version
    else:
        name, _, version = name.partition("/")
        if not version.isdigit():
            raise ValueError(f"{model_uri}: expected models:/<name>@<alias>, "
                             "models:/<name>/<version> or models:/m-<id>")
    return client.get_model_version_download_uri(name, version)


def registered_version(source: str, uri: str | None = None) -> tuple[str, str]:
    """``(name, version)`` that ``models:/<name>@<alias>`` or ``models:/<name>/<version>``
    names now (an alias resolved to its version); ``("", "")`` for any other source. The
    provenance ``iicnet embed`` writes into an embedding."""
    text = str(source)
    if not text.startswith("models:/") or text.startswith("models:/m-"):
        return "", ""
    name, at, alias = text.removeprefix("models:/").partition("@")
    if not at:
        name, _, version = name.partition("/")
        return name, version
    from mlflow.exceptions import MlflowException

    uri = uri or tracking_uri()
    check_tracking(uri)
    try:
        return name, str(_client(uri).get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        raise TrackingError(f"{source}: cannot resolve the alias at {redact(uri)} "
                            f"({exc.message})") from exc


def register_import(uri: str, directory: str | Path, config: Config, name: str, *,
                    alias: str = DEFAULT_ALIAS, run_name: str,
                    tags: dict[str, str]) -> tuple[str, str]:
    """Log an imported checkpoint ``directory`` (weights made elsewhere, e.g. the authors'
    released models) as an MLflow run of its own, with ``config`` as params and ``tags`` as
    provenance on the run and on the new version of ``name`` that ``alias`` then names.
    Returns ``(run_id, version)``; a failure marks the run FAILED."""
    check_tracking(uri)
    run_id = start_run(uri, model_name(config.data.task), run_name, config, tags=tags)
    tracker = Tracker(uri, run_id)
    try:
        version = register(uri, log_model(uri, run_id, directory), name, alias=alias,
                           tags=tags)
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    return run_id, version
