"""What the Ray entry points share: where the embedded default keeps its files, the sample
shards, starting or joining Ray, Ray Train storage on a path or ``s3://``, MLflow defaults.

Local versus cluster. Under ``ray job submit`` (``RAY_ADDRESS`` is set) the job joins the
cluster and every node must reach the data, the storage and the tracking server on its own
(instance roles or its own environment). Run directly, the entry points start a private
local Ray whose workers inherit this process's environment, so AWS and MLflow settings
reach them without being copied anywhere.
"""

from __future__ import annotations

import logging
import os
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from pyarrow import fs

REPO = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Files of the embedded default: ``$IICNET_CACHE`` or ``.iicnet/`` in the repository."""
    return Path(os.environ.get("IICNET_CACHE") or REPO / ".iicnet").resolve()


def sample_shards(cache: Path | None = None) -> str:
    """Shards of the DAVIS-layout sample dataset, built (about 10 s) when missing."""
    from data_prep.__main__ import main as prep

    cache = cache or cache_dir()
    shards = cache / "shards" / "davis"
    if (shards / "manifest.json").is_file():
        return str(shards)
    samples = cache / "samples"
    if not (samples / "davis").is_dir():
        print(f"building the sample dataset in {samples} ...", flush=True)
        if prep(["samples", "--out", str(samples)]) != 0:
            raise RuntimeError(f"building the sample dataset in {samples} failed")
    # One clip per shard, so every worker has whole shards of its own to stream.
    if prep(["davis", "--root", str(samples / "davis"), "--out", str(shards),
             "--shard-size", "1"]) != 0:
        raise RuntimeError(f"sharding the sample dataset into {shards} failed")
    return str(shards)


def absolute(location: str) -> str:
    """A local path made absolute; an ``s3://`` URL unchanged."""
    from iicnet import storage as iic_storage

    return location if iic_storage.is_s3(location) else str(Path(location).expanduser().resolve())


def default_tracking(cache: Path | None = None) -> tuple[str, str]:
    """(tracking URI, artifact location) of the embedded default's local SQLite store."""
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{cache / 'mlflow.db'}", (cache / "mlartifacts").as_uri()


def on_cluster() -> bool:
    """True under ``ray job submit`` or when ``RAY_ADDRESS`` names a cluster to join."""
    return bool(os.environ.get("RAY_ADDRESS"))


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster named by ``RAY_ADDRESS``, or start a private local Ray.

    Locally, workers get this repository on their path (``ray_jobs`` is not an installed
    package) and Ray Train's controller polls workers every 0.2 s instead of every 2 s,
    which makes each ``ray.train.report`` return that much sooner.
    """
    import ray

    if ray.is_initialized():
        return
    if on_cluster():
        ray.init(logging_level=logging.WARNING)
        return
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    # The dashboard serves the State API that Ray Train's placement-group cleaner polls.
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=True,
             dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1",
             logging_level=logging.WARNING, runtime_env={"env_vars": {"PYTHONPATH": path}})


def storage(url: str) -> tuple[str, Any]:
    """``RunConfig(storage_path=..., storage_filesystem=...)`` arguments for ``url``.

    A local path is made absolute. ``s3://bucket/prefix`` becomes ``bucket/prefix`` with a
    pyarrow S3 filesystem that takes its credentials from the standard AWS variables and its
    endpoint from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (an S3-compatible server).
    On a cluster, give such a server's settings (endpoint, and
    ``AWS_REQUEST_CHECKSUM_CALCULATION=WHEN_REQUIRED``) to the job's runtime environment.
    """
    from iicnet import storage as iic_storage

    if not iic_storage.is_s3(url):
        return absolute(url), None
    parsed = iic_storage.parse_s3(url)
    options: dict[str, Any] = {}
    endpoint = iic_storage.endpoint_url()
    if endpoint:
        parts = urllib.parse.urlsplit(endpoint)
        options["endpoint_override"] = parts.netloc + parts.path.rstrip("/")
        options["scheme"] = parts.scheme or "https"
        # The AWS SDK inside Arrow now streams uploads with trailing checksums and no
        # Content-Length unless told otherwise; S3-compatible servers answer 411. Set here,
        # before Ray starts, so a local Ray's processes inherit it.
        for name in ("AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION"):
            os.environ.setdefault(name, "WHEN_REQUIRED")
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
    if region:
        options["region"] = region
    filesystem = fs.PyFileSystem(S3WithoutDirMarkers(fs.S3FileSystem(**options)))
    return f"{parsed.bucket}/{parsed.key}".rstrip("/"), filesystem


class S3WithoutDirMarkers(fs.FileSystemHandler):
    """An S3 filesystem that never writes directory marker objects.

    S3 has no directories, but Arrow's S3 filesystem writes an empty ``prefix/`` object when
    asked to create a directory and, after deleting, to keep a parent "directory" in
    existence. Ray Train does both (its run folder; old checkpoints). S3-compatible servers
    that keep objects as files refuse such markers (``rclone serve s3`` answers 500 and its
    listing of that prefix breaks). So creating a directory does nothing and deleting goes
    through :mod:`iicnet.storage` (boto3); reads and writes use Arrow's filesystem.
    """

    def __init__(self, s3: Any):
        self.s3 = s3

    def __eq__(self, other: object) -> bool:
        return isinstance(other, S3WithoutDirMarkers) and self.s3.equals(other.s3)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return "s3-without-dir-markers"

    def normalize_path(self, path: str) -> str:
        return self.s3.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[Any]:
        return self.s3.get_file_info(paths)

    def get_file_info_selector(self, selector: Any) -> list[Any]:
        return self.s3.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        pass

    def delete_dir(self, path: str) -> None:
        self.delete_dir_contents(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        from iicnet import storage as iic_storage

        url = f"s3://{path.strip('/')}"
        for name in iic_storage.list_names(url):
            iic_storage.remove(iic_storage.join(url, name))

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete the contents of every bucket")

    def delete_file(self, path: str) -> None:
        from iicnet import storage as iic_storage

        iic_storage.remove(f"s3://{path}")

    def move(self, src: str, dest: str) -> None:
        self.s3.copy_file(src, dest)
        self.delete_file(src)

    def copy_file(self, src: str, dest: str) -> None:
        self.s3.copy_file(src, dest)

    def open_input_stream(self, path: str) -> Any:
        return self.s3.open_input_stream(path)

    def open_input_file(self, path: str) -> Any:
        return self.s3.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        return self.s3.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path: str, metadata: Any) -> Any:
        return self.s3.open_append_stream(path, metadata=metadata)


def fail(message: str, code: int = 2) -> int:
    """Print a user-facing error (no traceback) and return the exit code."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code
