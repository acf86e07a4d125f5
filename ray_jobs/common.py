"""What the Ray entry points share: where the embedded default keeps its files, the sample
shards, starting or joining Ray, Ray Train storage on a path or ``s3://``, MLflow defaults.

Local versus cluster. Under ``ray job submit`` (``RAY_ADDRESS`` is set) the job joins the
cluster and every node must reach the data, the storage and the tracking server on its own
(instance roles or its own environment). Run directly, the entry points start a private
local Ray whose workers inherit this process's environment, so AWS and MLflow settings
reach them without being copied anywhere.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Files of the embedded default: ``$IICNET_CACHE`` or ``.iicnet/`` in the repository
    (where ``iicnet`` looks for the store when ``MLFLOW_TRACKING_URI`` is unset)."""
    from iicnet.registry import LOCAL_STORE

    return Path(os.environ.get("IICNET_CACHE") or REPO / LOCAL_STORE).resolve()


def command(name: str) -> str:
    """How to type the installed ``name`` (``iicnet``, ``mlflow``) in a fresh shell: its path
    beside this Python (the venv's ``bin/``), relative to the current folder when inside it."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        return name
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def sample_shards(cache: Path | None = None) -> str:
    """Shards of the DAVIS-layout sample dataset, built (about 10 s) when missing, and built
    again when they come from an older version of the sample datasets."""
    import shutil

    from data_prep.cli import main as prep
    from data_prep.samples import VERSION

    cache = cache or cache_dir()
    shards = cache / "shards" / "davis"
    samples = cache / "samples"
    stamp = cache / "shards" / "samples-version"
    current = stamp.read_text().strip() if stamp.is_file() else None
    built = (shards / "manifest.json").is_file()
    if built and current == VERSION:
        return str(shards)
    if current != VERSION and (built or (samples / "davis").is_dir()):
        print(f"the sample datasets changed (version {VERSION}): rebuilding {samples} "
              f"and {shards}", flush=True)
        shutil.rmtree(samples, ignore_errors=True)
        shutil.rmtree(shards, ignore_errors=True)
    if not (samples / "davis").is_dir():
        print(f"building the sample dataset in {samples} ...", flush=True)
        if prep(["samples", "--out", str(samples)]) != 0:
            raise RuntimeError(f"building the sample dataset in {samples} failed")
    # One clip per shard, so every worker has whole shards of its own to stream.
    if prep(["davis", "--root", str(samples / "davis"), "--out", str(shards),
             "--shard-size", "1"]) != 0:
        raise RuntimeError(f"sharding the sample dataset into {shards} failed")
    stamp.write_text(VERSION + "\n")
    return str(shards)


def default_tracking(cache: Path | None = None) -> tuple[str, str]:
    """(tracking URI, artifact location) of the embedded default's local SQLite store."""
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{cache / 'mlflow.db'}", (cache / "mlartifacts").as_uri()


def on_cluster() -> bool:
    """True under ``ray job submit`` or when ``RAY_ADDRESS`` names a cluster to join."""
    return bool(os.environ.get("RAY_ADDRESS"))


def cluster_problem(uri: str, default_uri: str, *, data: str | None, storage: str | None,
                    val_data: str | None = None) -> str | None:
    """On a cluster (:func:`on_cluster`), why the job cannot run there, before anything
    starts; None when it can (and always off a cluster).

    The single-machine defaults fail late on a cluster: an SQLite store is a file in the
    job's temporary folder, gone with it; local checkpoint storage is refused by Ray only at
    the first checkpoint (thousands of steps in) once workers sit on other nodes; the sample
    shards would be built on the head only. Each line says what to pass instead."""
    from iicnet import storage as objects

    if not on_cluster():
        return None
    problems = []
    if uri == default_uri:
        problems.append("MLFLOW_TRACKING_URI is not set: on a cluster, MLflow must be a "
                        "tracking server every node reaches (set it in the job's runtime env, "
                        "e.g. --runtime-env-json '{\"env_vars\": {\"MLFLOW_TRACKING_URI\": "
                        "\"http://HEAD:5000\"}}'; see docs/cluster.md)")
    elif uri.startswith(("sqlite:", "file:")) or "://" not in uri:
        problems.append(f"MLFLOW_TRACKING_URI is {uri.split(':', 1)[0]}: a store on one "
                        "node's disk; on a cluster point it at the tracking server "
                        "(http://HEAD:5000, docs/cluster.md)")
    if not data:
        problems.append("--data is missing: the sample shards would be built on one node "
                        "only; on a cluster pass --data s3://BUCKET/PREFIX (shards made by "
                        "python -m data_prep)")
    for flag, value in (("--data", data), ("--val-data", val_data)):
        if value and not objects.is_s3(value):
            problems.append(f"{flag} {value}: a local path, which the other nodes cannot "
                            f"read; pass {flag} s3://BUCKET/PREFIX")
    if not storage:
        problems.append("--storage is missing: checkpoints would go to one node's disk; on "
                        "a cluster pass --storage s3://BUCKET/PREFIX")
    elif not objects.is_s3(storage):
        problems.append(f"--storage {storage}: a local path; on a cluster checkpoints go where "
                        "every node reaches them: pass --storage s3://BUCKET/PREFIX")
    if not problems:
        return None
    return ("this job runs on the Ray cluster at RAY_ADDRESS, which it cannot use as given:\n  "
            + "\n  ".join(problems))


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster named by ``RAY_ADDRESS``, or start a private local Ray.

    Locally, Ray Train's controller polls workers every 0.2 s instead of every 2 s, which
    makes each ``ray.train.report`` return that much sooner.
    """
    import ray

    if ray.is_initialized():
        return
    if on_cluster():
        ray.init(logging_level=logging.WARNING)
        return
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    # Ray turns on token authentication for the private cluster it starts and says so at
    # WARNING each time; nothing for the user to do, so not on their console.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
        logging.ERROR)
    # The dashboard serves the State API that Ray Train's placement-group cleaner polls.
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=True,
             dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1",
             logging_level=logging.WARNING)


def fail(message: str, code: int = 2) -> int:
    """Print a user-facing error (no traceback) and return the exit code."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def watch_run(uri: str, run_id: str) -> None:
    """Mark the MLflow run KILLED if this process dies while it is still RUNNING.

    A driver killed with SIGKILL (or by the OOM killer, or a lost terminal) runs no cleanup,
    so a small watcher process does it: it holds the read end of a pipe whose write end only
    this process has; the end of this process, however it ends, closes the pipe. A driver
    that ends normally has closed its run (FINISHED, FAILED or KILLED) before then, and the
    watcher leaves it alone. The tracking URI goes through the pipe, not the command line,
    where other users could read credentials in it.
    """
    import subprocess

    read_end, write_end = os.pipe()
    os.write(write_end, json.dumps({"uri": uri, "run_id": run_id}).encode() + b"\n")
    # Its stdout and stderr are not the driver's: whoever reads the driver's output to its end
    # (a pipe, ``subprocess.run``, ``ray job submit``) would otherwise wait for the watcher
    # too, which takes its imports' time (seconds) after the driver is gone. It prints nothing.
    subprocess.Popen([sys.executable, "-c", "from ray_jobs.common import watcher; watcher()"],
                     stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     cwd=REPO, start_new_session=True,
                     env={**os.environ, "PYTHONPATH": os.pathsep.join(
                         [str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)})
    os.close(read_end)
    # The write end stays open, uninherited, until this process ends.
    os.set_inheritable(write_end, False)


def watcher() -> None:
    """The process :func:`watch_run` starts: wait for the end of the pipe, then close the run
    as KILLED if nobody else closed it."""
    job = json.loads(sys.stdin.buffer.readline())
    sys.stdin.buffer.read()  # returns once every write end is closed: the driver is gone
    from iicnet import registry

    try:
        tracker = registry.Tracker(job["uri"], job["run_id"])
        if tracker.status() == "RUNNING":
            tracker.finish("KILLED")
    except Exception:  # noqa: BLE001  the store went with its owner (a temporary one): nothing
        pass           # left to mark, and no console to report to
