"""A real MLflow tracking server on loopback, on the backend a cluster uses: PostgreSQL.

``mlflow_server`` (session) runs ``mlflow server`` in its lean form (one worker, job
execution off; about 0.4 GB and 10 s to start, see shared/STACK.md) on 127.0.0.1 at a free
port, with its backend store in a database of the loopback ``postgres_server`` (concurrent
trials of a sweep write to it at once, which SQLite answers with "database is locked") and
a local artifact store, and yields its URL. :func:`start_mlflow` starts more (a restart on
the same store, a SQLite one). Import the fixtures into a test module to use them.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import start_on_free_port
from tests.fixtures_postgres import Postgres


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def start_mlflow(backend: str, artifacts: Path, log_path: Path
                 ) -> tuple[subprocess.Popen, str]:
    """``mlflow server`` on ``backend`` (a database URL) at a free loopback port: the process
    (in its own process group) and the server's URL."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    mlflow = Path(sys.executable).with_name("mlflow")
    process, port = start_on_free_port(
        "mlflow server",
        lambda port: [str(mlflow), "server", "--backend-store-uri", backend,
                      "--artifacts-destination", str(artifacts), "--host", "127.0.0.1",
                      "--port", str(port), "--workers", "1"],
        _healthy, log_path, timeout=120, interval=0.2, env=env, start_new_session=True)
    return process, f"http://127.0.0.1:{port}"


def stop_mlflow(process: subprocess.Popen) -> None:
    # The server runs uvicorn workers in its own process group: end the group we made.
    os.killpg(process.pid, 15)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory,
                  postgres_server: Postgres):
    base = tmp_path_factory.mktemp("mlflow")
    # A fresh database per instance: each test module that imports this fixture gets one.
    backend = postgres_server.create_database(f"mlflow_{secrets.token_hex(4)}")
    process, url = start_mlflow(backend, base / "artifacts", base / "server.log")
    try:
        yield url
    finally:
        stop_mlflow(process)
