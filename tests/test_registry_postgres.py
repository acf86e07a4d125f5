"""The registry a cluster uses: MLflow on PostgreSQL, on loopback.

Concurrent writers (what a sweep's trials are) log through one server at once without an
error, and a registered model outlives its tracking server: a new server process on the same
database and artifact store resolves ``models:/NAME@ALIAS`` to the same weights.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import torch

from iicnet import registry
from iicnet.convert import weights_fingerprint
from iicnet.formats import checkpoint
from iicnet.model.config import Config
from tests.fixtures_mlflow import start_mlflow, stop_mlflow
from tests.fixtures_postgres import Postgres
from tests.test_convert import tiny_model

pytestmark = pytest.mark.slow

WRITERS = 6
STEPS = 40


def _log_steps(uri: str, run_id: str, writer: int) -> None:
    tracker = registry.Tracker(uri, run_id)
    tracker.params({"writer": writer})
    for step in range(STEPS):
        tracker.metrics({"loss": writer + step / STEPS, "lr": 1e-4}, step=step)
    tracker.finish()


def test_concurrent_writers_and_a_registry_that_outlives_its_server(
        postgres_server: Postgres, tmp_path: Path):
    backend = postgres_server.create_database("durable")
    artifacts = tmp_path / "artifacts"
    process, uri = start_mlflow(backend, artifacts, tmp_path / "first.log")
    try:
        model, cfg = tiny_model()
        assert isinstance(cfg, Config)
        runs = [registry.start_run(uri, "concurrency", f"writer-{i}", cfg)
                for i in range(WRITERS)]
        context = multiprocessing.get_context("spawn")
        writers = [context.Process(target=_log_steps, args=(uri, run_id, i))
                   for i, run_id in enumerate(runs)]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(timeout=240)
        assert [w.exitcode for w in writers] == [0] * WRITERS
        from mlflow import MlflowClient

        client = MlflowClient(uri)
        for i, run_id in enumerate(runs):
            history = client.get_metric_history(run_id, "loss")
            assert sorted(m.step for m in history) == list(range(STEPS)), f"writer {i}"
            assert client.get_run(run_id).info.status == "FINISHED"

        saved = checkpoint.save(tmp_path / "model", model, cfg)
        model_uri = registry.log_model(uri, runs[0], saved)
        version = registry.register(uri, model_uri, "iicnet-durable", alias="candidate")
    finally:
        stop_mlflow(process)

    # A new server process, as after `ray down` / `ray up` with the store outside the head.
    process, uri = start_mlflow(backend, artifacts, tmp_path / "second.log")
    try:
        restored, _ = registry.load_model("models:/iicnet-durable@candidate", uri)
        name, found = registry.registered_version("models:/iicnet-durable@candidate", uri)
    finally:
        stop_mlflow(process)
    assert (name, found) == ("iicnet-durable", version)
    assert weights_fingerprint(restored) == weights_fingerprint(model)
    assert all(torch.equal(a, b) for a, b in zip(restored.state_dict().values(),
                                                 model.state_dict().values()))
