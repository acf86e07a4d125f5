"""Tracking: which MLflow store to use, runs and what is logged into them.

- :func:`tracking_uri` finds the store (``MLFLOW_TRACKING_URI``, else the embedded
  default's ``.iicnet/mlflow.db``); :func:`check_tracking` fails fast, with a message saying
  what to do, when it does not answer.
- :func:`start_run` creates a training run (or finds it again to resume) with the full
  config as params; :func:`find_runs` finds runs by tags; :func:`log_datasets` records the
  shard sets a run read; :func:`system_metrics` samples a node's CPU, memory, disk, network
  and GPU into a run.
- :class:`Tracker` logs params, metrics, images and files into one run by id, so the
  process that created the run and a training worker elsewhere can both write to it.

Every call names its tracking server explicitly (:func:`mlflow_client`). Where MLflow itself
resolves a URI through its process-wide tracking URI (a ``models:/m-<id>`` version source on a
database store, an artifact download), :func:`process_tracking_uri` sets it for that call only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from iicnet.model.config import Config

RUN_NAME_TAG = "iicnet.run_name"


class TrackingError(RuntimeError):
    """The MLflow tracking server cannot be reached or refused a request."""


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


def mlflow_client(uri: str):
    """An ``MlflowClient`` of ``uri`` as both tracking and registry server."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


_PROCESS_URI = threading.RLock()


@contextlib.contextmanager
def process_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking URI (and ``MLFLOW_TRACKING_URI``) set to ``uri`` while
    the block runs, and both put back as they were after it, unset ones unset. Threads of
    this process take turns: the setting is global."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    with _PROCESS_URI:
        # MLflow's own helper for this restores only the first of the two (unsetting the
        # variable when nothing was set explicitly), so both are read here.
        explicit, variable = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(explicit)
            if variable is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = variable


def experiment_id(uri: str, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created (with ``artifact_location``) if missing."""
    client = mlflow_client(uri)
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

    client = mlflow_client(uri)
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
    try:
        client.log_text(run_id, config.to_json(), "config.json")
    except Exception:  # an artifact store that takes no files: no run is left RUNNING
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.FAILED))
        raise
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
        self._client = mlflow_client(uri)

    def params(self, values: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self._client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in values.items()])

    def metrics(self, values: dict[str, float], step: int, timestamp: int | None = None) -> None:
        from mlflow.entities import Metric

        now = timestamp or int(time.time() * 1000)
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
    client = mlflow_client(uri)
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
    mlflow_client(uri).log_inputs(run_id, datasets=inputs)
    return digests


def _quoted(value: str) -> str:
    if "'" in value:
        raise ValueError(f"tag value {value!r}: quotes cannot be searched for")
    return value


def quiet_console() -> None:
    """Keep MLflow to real problems on a job's console: no per-run links, database set-up
    notes or artifact progress bars (they stay in the server's and the UI's view)."""
    import logging
    import os

    import mlflow  # noqa: F401 (its import sets the level this then lowers)

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    logging.getLogger("mlflow").setLevel(logging.WARNING)


