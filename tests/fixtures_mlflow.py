"""A real MLflow tracking server on loopback: SQLite backend, local artifact store.

``mlflow_server`` (session) runs ``mlflow server`` in its lean form (one worker, job
execution off; about 0.4 GB and 10 s to start, see shared/STACK.md) on 127.0.0.1 at a free
port, and yields its URL. Import the fixture into a test module to use it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import _free_port


def _healthy(url: str, process: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(0.2)
    return False


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("mlflow")
    log_path = base / "server.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    mlflow = Path(sys.executable).with_name("mlflow")
    for _ in range(3):  # another process may take the free port first
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{base / 'mlflow.db'}",
                 "--artifacts-destination", str(base / "artifacts"), "--host", "127.0.0.1",
                 "--port", str(port), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )
        if _healthy(url, process, timeout=90):
            break
        process.kill()
        process.wait()
    else:
        raise RuntimeError(f"mlflow server did not start:\n{log_path.read_text()[-3000:]}")
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
