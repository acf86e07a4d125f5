"""Training on full disks: the tracking server's artifact store, full at the start and
filling up mid-run (twice), and the run's checkpoint storage, filling up mid-run.

Real parts: ``ray_jobs/train.py`` in a subprocess (its own local Ray), a real MLflow server on
loopback whose ``--artifacts-destination`` is a tmpfs, the run's ``--storage`` on another
tmpfs; the test fills each with a file of zeros when the run's console reaches a given step.
Mounting needs root; the test is skipped where it cannot mount.

What must hold: an artifact store that takes no files at the start is refused before Ray
starts; one that fills mid-run costs the run its files, not its metrics; a checkpoint that
does not fit stops the run at once (no restart that would train up to the same wall), exit 2
with the reason and the resume line, no half-copied checkpoint folder; with room again,
``--resume`` finishes the run, and the sync file registers the model and sends the files.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from iicnet.formats import checkpoint
from tests.fixtures_mlflow import start_mlflow, stop_mlflow
from tests.helpers import job_env, tmpfs
from tests.test_train_ray import REPO, TINY

STEPS = 12


def fill(folder: Path) -> Path:
    """Write zeros into ``folder/filler`` until its disk is full; the filler."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(1 << 16))
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def train(args: list[str], env: dict[str, str], fills: dict[int, Path] | None = None
          ) -> tuple[int, str]:
    """Run ``ray_jobs/train.py`` with ``args``; when its console reaches step N of
    ``fills``, fill that folder's disk. The exit status and the console."""
    job = subprocess.Popen([sys.executable, str(REPO / "ray_jobs" / "train.py"), *args],
                           env=env, cwd=REPO, text=True, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
    lines: list[str] = []

    def read() -> None:
        for line in job.stdout:
            lines.append(line)
            step = re.search(rf"step (\d+)/{STEPS} ", line)
            if step and int(step.group(1)) in (fills or {}):
                fill(fills[int(step.group(1))])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        job.wait(timeout=400)
    finally:
        if job.poll() is None:
            job.kill()
    reader.join(10)
    return job.returncode, "".join(lines)


@pytest.mark.slow
def test_full_checkpoint_and_artifact_disks_stop_or_defer_and_lose_nothing(tmp_path,
                                                                          davis_shards):
    from mlflow import MlflowClient

    with tmpfs(tmp_path / "artifacts", "size=4m") as artifacts, \
            tmpfs(tmp_path / "storage", "size=8m") as storage:
        server, uri = start_mlflow(f"sqlite:///{tmp_path / 'mlflow.db'}", artifacts,
                                   tmp_path / "server.log")
        env = job_env(tmp_path, uri, IICNET_FAULT_STEP_S="0.5")
        run = ["--data", str(davis_shards), "--num-workers", "1", "--steps", str(STEPS),
               "--storage", str(storage), "--force-alias", *TINY, "--set", "train.val_every=4"]
        try:
            fill(artifacts)  # full at the start: refused before Ray starts
            code, refused = train([*run, "--name", "refused"], env)
            assert code == 2, refused[-3000:]
            assert f"the tracking server {uri} cannot store the run's files (the server " \
                   "answers uploads with HTTP 500" in refused, refused[-3000:]
            assert "Traceback" not in refused and "Ray" not in refused, refused[-3000:]
            (artifacts / "filler").unlink()

            code, first = train([*run, "--name", "full"], env, {3: artifacts, 5: storage})
            assert code == 2, first[-6000:]
            assert re.search(r"training stopped: checkpoint step-00000006 does not fit: No "
                             r"space left on device \(\S*/full/step-00000006\)", first), \
                first[-6000:]
            assert "--resume full" in first.rsplit("training stopped", 1)[1]
            # no restart trained up to the same wall again
            assert "Error in training function" not in first, first[-6000:]
            assert "resumed from" not in first
            assert first.count("stores no files since step") == 1, first[-6000:]
            # its files were for the sync file, which is on the full checkpoint disk
            assert re.search(r"cannot write the sync file \S+ \(No space left on device\); "
                             r"lost: validation/step-00000004\.json, picture validation at "
                             r"step 4", first), first[-6000:]
            folders = sorted(p.name for p in (storage / "full").glob("step-*"))
            assert folders and folders[-1] == "step-00000004", folders
            for name in folders:
                assert checkpoint.problem(storage / "full" / name) is None, name

            (storage / "filler").unlink()
            (artifacts / "filler").unlink()  # room at the start, full again after step 8
            code, second = train(["--resume", "full", "--storage", str(storage)], env,
                                 {9: artifacts})
            assert code == 0, second[-6000:]
            assert "resumed from the checkpoint at step 4" in second, second[-6000:]
            assert "cannot store the model's files (the server answers uploads with HTTP " \
                   "500" in second, second[-6000:]
            sync = re.findall(r"python -m ray_jobs\.sync_tracking (\S+)", second)
            assert sync and Path(sync[-1]).parent == storage / "full", second[-6000:]

            client = MlflowClient(uri)
            run_id = client.search_runs(
                [e.experiment_id for e in client.search_experiments()],
                filter_string="tags.`iicnet.run_name` = 'full'")[0].info.run_id
            # metrics went on while no file could be stored
            steps = sorted({m.step for m in client.get_metric_history(run_id, "loss/total")})
            assert steps == list(range(1, STEPS + 1)), steps
            assert not client.search_model_versions("name = 'iicnet-video'")

            (artifacts / "filler").unlink()
            done = subprocess.run([sys.executable, "-m", "ray_jobs.sync_tracking", sync[-1]],
                                  env=job_env(tmp_path, uri), cwd=REPO, capture_output=True,
                                  text=True, timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr
            assert "registered: models:/iicnet-video/" in done.stdout, done.stdout
            version = client.get_model_version_by_alias("iicnet-video", "candidate")
            assert version.tags["run_id"] == run_id and version.tags["step"] == str(STEPS)
            stored = {a.path for a in client.list_artifacts(run_id, "validation")}
            assert {f"validation/step-{s:08d}.json" for s in (8, 12)} <= stored, stored
            assert client.get_run(run_id).info.status == "FINISHED"
        finally:
            stop_mlflow(server)
