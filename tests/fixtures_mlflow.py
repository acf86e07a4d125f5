"""A real MLflow tracking server on loopback: SQLite backend, local artifact store.

``mlflow_server`` (session) runs ``mlflow server`` in its lean form (one worker, job
execution off; about 0.4 GB and 10 s to start, see shared/STACK.md) on 127.0.0.1 at a free
port, and yields its URL. Import the fixture into a test module to use it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import start_on_free_port


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("mlflow")
    log_path = base / "server.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    mlflow = Path(sys.executable).with_name("mlflow")
    process, port = start_on_free_port(
        "mlflow server",
        lambda port: [str(mlflow), "server", "--backend-store-uri",
                      f"sqlite:///{base / 'mlflow.db'}", "--artifacts-destination",
                      str(base / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
                      "--workers", "1"],
        _healthy, log_path, timeout=90, interval=0.2, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        yield url
    finally:
        # The server runs uvicorn workers in its own process group: end the group we made.
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
