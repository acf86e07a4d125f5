"""Ray Train's storage (``RunConfig(storage_path=..., storage_filesystem=...)``) on a local
path or ``s3://``, through the same endpoint and credentials as :mod:`iicnet.storage.objects`.

pyarrow is imported here and nowhere else in :mod:`iicnet`; nothing in this module imports
Ray, it only builds the arguments Ray takes.
"""

from __future__ import annotations

import os
import urllib.parse
from typing import Any

import pyarrow.fs

from iicnet.storage.objects import (
    absolute,
    endpoint_url,
    is_s3,
    join,
    list_names,
    parse_s3,
    remove,
)


def ray_storage(url: str) -> tuple[str, Any]:
    """``RunConfig(storage_path=..., storage_filesystem=...)`` arguments for ``url``.

    A local path is made absolute. ``s3://bucket/prefix`` becomes ``bucket/prefix`` with a
    pyarrow S3 filesystem that takes its credentials from the standard AWS variables and its
    endpoint from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (an S3-compatible server).
    On a cluster, give such a server's settings (endpoint, and
    ``AWS_REQUEST_CHECKSUM_CALCULATION=WHEN_REQUIRED``) to the job's runtime environment.
    """
    if not is_s3(url):
        return absolute(url), None
    parsed = parse_s3(url)
    options: dict[str, Any] = {}
    endpoint = endpoint_url()
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
    filesystem = pyarrow.fs.PyFileSystem(S3WithoutDirMarkers(pyarrow.fs.S3FileSystem(**options)))
    return f"{parsed.bucket}/{parsed.key}".rstrip("/"), filesystem


class S3WithoutDirMarkers(pyarrow.fs.FileSystemHandler):
    """An S3 filesystem that never writes directory marker objects.

    S3 has no directories, but Arrow's S3 filesystem writes an empty ``prefix/`` object when
    asked to create a directory and, after deleting, to keep a parent "directory" in
    existence. Ray Train does both (its run folder; old checkpoints). S3-compatible servers
    that keep objects as files refuse such markers (``rclone serve s3`` answers 500 and its
    listing of that prefix breaks). So creating a directory does nothing and deleting goes
    through :mod:`iicnet.storage.objects` (boto3); reads and writes use Arrow's filesystem.
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
        url = f"s3://{path.strip('/')}"
        for name in list_names(url):
            remove(join(url, name))

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete the contents of every bucket")

    def delete_file(self, path: str) -> None:
        remove(f"s3://{path}")

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
