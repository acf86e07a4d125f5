"""A tracking server that is down: at the start of a run, in the middle, at the end.

Real parts: ``ray_jobs/train.py`` in a subprocess (its own local Ray), a real MLflow server on
loopback (SQLite- or PostgreSQL-backed) that the test kills at a random step and starts again
on the same port and store. The seed of the step (and of the outage's length) is printed;
``IICNET_OUTAGE_SEED=N`` repeats it.
"""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import _free_port
from tests.fixtures_mlflow import start_mlflow, stop_mlflow
from tests.helpers import job_env
from tests.test_train_ray import REPO, TINY

STEPS = 40


def test_unreachable_server_is_refused_before_ray_starts(tmp_path, davis_shards):
    silent = socket.socket()  # accepts connections (the kernel's backlog), never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        for uri in (f"http://127.0.0.1:{_free_port()}",
                    f"http://127.0.0.1:{silent.getsockname()[1]}"):
            began = time.monotonic()
            done = subprocess.run(
                [sys.executable, str(REPO / "ray_jobs" / "train.py"), "--data",
                 str(davis_shards), "--steps", "2", *TINY], env=job_env(tmp_path, uri),
                cwd=REPO, capture_output=True, text=True, timeout=120)
            took = time.monotonic() - began
            assert done.returncode == 2, done.stderr[-3000:]
            assert uri in done.stderr and "not reachable" in done.stderr, done.stderr[-3000:]
            assert "Ray" not in done.stdout + done.stderr.replace(uri, "")
            assert took < 30, took
    finally:
        silent.close()


def _restart(backend: str, base: Path, port: int) -> subprocess.Popen:
    """``mlflow server`` again on ``backend`` at the same ``port``."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    mlflow = Path(sys.executable).with_name("mlflow")
    with open(base / "server-again.log", "ab") as log:
        process = subprocess.Popen(
            [str(mlflow), "server", "--backend-store-uri", backend, "--artifacts-destination",
             str(base / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"], env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return process
        except OSError:
            time.sleep(0.3)
    stop_mlflow(process)
    raise AssertionError("mlflow server did not come back on its port")


@pytest.mark.slow
@pytest.mark.parametrize("backend,comes_back", [("sqlite", "mid-run"),
                                                ("postgres", "after the run")])
def test_server_killed_mid_run(backend, comes_back, tmp_path, davis_shards, request):
    from mlflow import MlflowClient

    seed = int(os.environ.get("IICNET_OUTAGE_SEED") or random.randrange(10**6))
    rng = random.Random(seed)
    kill_at, outage_s = rng.randint(5, 20), rng.uniform(4, 10)
    print(f"outage seed {seed} (IICNET_OUTAGE_SEED={seed} repeats it): server killed at "
          f"step {kill_at}, back {comes_back}")
    if backend == "sqlite":
        store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    else:
        store = request.getfixturevalue("postgres_server").create_database(
            f"outage_{seed}")
    server, uri = start_mlflow(store, tmp_path / "artifacts", tmp_path / "server.log")
    port = int(uri.rsplit(":", 1)[1])
    storage = tmp_path / "results"
    # Back mid-run means back before the last step: at least 20 s of paced steps remain
    # after a kill at step 20 or before, against an outage of at most 10 s and the server's
    # restart (with 0.5 s steps, a loaded CI run once lost steps 11-40, most likely because
    # the run ended first; the assertion below now says when that happens).
    pace = "1.0" if comes_back == "mid-run" else "0.5"
    job = subprocess.Popen(
        [sys.executable, str(REPO / "ray_jobs" / "train.py"), "--data", str(davis_shards),
         "--num-workers", "1", "--steps", str(STEPS), "--storage", str(storage),
         "--name", "outage", "--force-alias", *TINY, "--set", "train.val_every=10",
         "--set", "train.checkpoint_every=10"],
        env=job_env(tmp_path, uri, IICNET_FAULT_STEP_S=pace), cwd=REPO, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    killed = threading.Event()
    last_step: list[float] = []

    def read() -> None:
        for line in job.stdout:
            lines.append(line)
            found = re.search(rf"step (\d+)/{STEPS}", line)
            if found and int(found.group(1)) >= kill_at and not killed.is_set():
                stop_mlflow(server)
                killed.set()
            if found and int(found.group(1)) == STEPS:
                last_step.append(time.monotonic())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    again = None
    try:
        if comes_back == "mid-run":
            assert killed.wait(300), "".join(lines)[-4000:]
            time.sleep(outage_s)
            again = _restart(store, tmp_path, port)
            back_at = time.monotonic()
        job.wait(timeout=400)
        reader.join(10)
        output = "".join(lines)
        assert job.returncode == 0, output[-6000:]
        assert killed.is_set()
        if comes_back == "mid-run":
            assert last_step and back_at < last_step[0], \
                "the server came back only after the run's last step: not this scenario"
        assert output.count(f"tracking unreachable at {uri} since step") == 1, output[-6000:]
        sync = re.findall(r"python -m ray_jobs\.sync_tracking (\S+)", output)
        if again is None:
            again = _restart(store, tmp_path, port)
            assert sync and "not registered" in output, output[-6000:]
            assert Path(sync[-1]).parent == storage / "outage"
            done = subprocess.run([sys.executable, "-m", "ray_jobs.sync_tracking", sync[-1]],
                                  env=job_env(tmp_path, uri), cwd=REPO, capture_output=True,
                                  text=True, timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr
            assert "registered: models:/iicnet-video/" in done.stdout
            assert not Path(sync[-1]).exists()
        client = MlflowClient(uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  filter_string="tags.`iicnet.run_name` = 'outage'")
        assert len(runs) == 1
        run_id = runs[0].info.run_id
        steps = sorted({m.step for m in client.get_metric_history(run_id, "loss/total")})
        assert steps == list(range(1, STEPS + 1)), steps
        assert client.get_run(run_id).info.status == "FINISHED"
        version = client.get_model_version_by_alias("iicnet-video", "candidate")
        assert version.tags["run_id"] == run_id and version.tags["step"] == str(STEPS)
    finally:
        if job.poll() is None:
            job.kill()
        if not killed.is_set():
            stop_mlflow(server)
        if again is not None:
            stop_mlflow(again)
