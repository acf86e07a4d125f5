"""Local paths and ``s3://bucket/prefix`` URLs behind one small interface.

Every reader and writer of datasets goes through these functions, so a directory and a
bucket behave the same way:

- ``read_bytes`` / ``open_read`` / ``exists`` / ``list_names`` read;
- ``write_bytes`` / ``put_file`` write *atomically*: a local file is written under a
  temporary name and renamed; an S3 object only becomes visible when its upload completes
  (a single PUT, or a multipart upload that is completed last), so a reader never sees half
  an object;
- ``register_gopen`` teaches ``webdataset.gopen`` the ``s3://`` scheme, streaming the body of
  ``get_object`` (webdataset 1.0.2 has no handler of its own).

The S3 client is configured only from the standard AWS environment variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``,
``AWS_DEFAULT_REGION``) plus ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` for an
S3-compatible server that is not AWS. Addressing is path-style (``endpoint/bucket/key``),
which every S3-compatible server accepts. One client is kept per process and environment,
so DataLoader workers started by ``fork`` build their own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from iicnet.storage.atomic import replacing

S3_SCHEME = "s3://"
_ENV_KEYS = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
    "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
)


class StorageError(OSError):
    """A storage location is malformed, unreachable or refused the request."""


@dataclass(frozen=True)
class S3Url:
    bucket: str
    key: str
    """Object key or prefix, without a leading slash; may be empty (the bucket root)."""

    def __str__(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.key}" if self.key else f"{S3_SCHEME}{self.bucket}"


def is_s3(url: str | Path) -> bool:
    return str(url).startswith(S3_SCHEME)


def parse_s3(url: str) -> S3Url:
    """``s3://bucket/some/prefix/`` -> ``S3Url("bucket", "some/prefix")``."""
    if not is_s3(url):
        raise StorageError(f"{url}: not an s3:// URL")
    bucket, _, key = url[len(S3_SCHEME):].partition("/")
    if not bucket:
        raise StorageError(f"{url}: no bucket name (expected s3://bucket/prefix)")
    return S3Url(bucket, key.strip("/"))


def absolute(location: str | Path) -> str:
    """A local path made absolute; an ``s3://`` URL unchanged."""
    if is_s3(location):
        return str(location)
    return str(Path(location).expanduser().resolve())


def join(base: str | Path, *names: str) -> str:
    """Append path components to a directory or an ``s3://`` prefix."""
    if is_s3(base):
        parsed = parse_s3(str(base))
        key = "/".join(p.strip("/") for p in (parsed.key, *names) if p.strip("/"))
        return str(S3Url(parsed.bucket, key))
    return str(Path(base, *names))


def endpoint_url() -> str | None:
    """The S3 endpoint named by the environment, or None for AWS itself."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


_clients: dict[tuple, Any] = {}


def client() -> Any:
    """A boto3 S3 client built from the environment (one per process and environment)."""
    import boto3
    from botocore.config import Config

    ident = (os.getpid(), tuple(os.environ.get(k) for k in _ENV_KEYS))
    if ident not in _clients:
        session = boto3.session.Session()
        _clients[ident] = session.client(
            "s3",
            endpoint_url=endpoint_url(),
            region_name=session.region_name or "us-east-1",
            config=Config(
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                retries={"max_attempts": 4, "mode": "standard"},
                connect_timeout=10,
                read_timeout=60,
            ),
        )
    return _clients[ident]


@contextlib.contextmanager
def _s3_errors(url: str) -> Iterator[None]:
    """Turn botocore's errors into FileNotFoundError / StorageError that name the URL."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    where = f" at {endpoint_url()}" if endpoint_url() else ""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound"):
            raise FileNotFoundError(f"{url}: no such object{where}") from exc
        if code == "NoSuchBucket":
            raise StorageError(f"{url}: bucket does not exist{where}") from exc
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            raise StorageError(
                f"{url}: access refused{where} ({code}); check AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL"
            ) from exc
        raise StorageError(f"{url}: {code or 'error'}: {error.get('Message', exc)}") from exc
    except NoCredentialsError as exc:
        raise StorageError(
            f"{url}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        ) from exc
    except BotoCoreError as exc:
        raise StorageError(f"{url}: {exc}") from exc


NO_SPACE = {"No space left on device", "Disk quota exceeded"}
"""The system's words for a full disk and a used-up quota (what strerror says on Linux)."""


def out_of_space(exc: BaseException | None) -> str | None:
    """The reason, when ``exc`` (or what caused it) is a full disk or a used-up quota, as
    the system says it (``No space left on device``); else None. Also where a library gave
    only the words (pyarrow's file writers do)."""
    import errno

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return os.strerror(exc.errno)
        words = next((w for w in NO_SPACE if w in str(exc)), None)
        if words:
            return words
        exc = exc.__cause__ or exc.__context__ or getattr(exc, "cause", None)
    return None


def sha256(source: str | Path | IO[bytes]) -> str:
    """The hex sha256 of a local file (by path) or of what is left in a readable binary
    stream, read 1 MiB at a time (checkpoints and shards are large)."""
    import hashlib

    if isinstance(source, str | Path):
        with open(source, "rb") as stream:
            return sha256(stream)
    digest = hashlib.sha256()
    while chunk := source.read(1 << 20):
        digest.update(chunk)
    return digest.hexdigest()


def read_small_file(path: str | Path, limit: int) -> bytes:
    """At most ``limit + 1`` bytes of the local file ``path`` (a caller that gets more knows
    the file is too large). A FIFO, a device or a socket is refused (OSError, ``strerror``
    saying what it is) without blocking: it is opened non-blocking and checked first."""
    import errno
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode)
                    else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                    else "not a regular file")
            raise OSError(errno.EINVAL, f"{kind}, not a regular file", str(path))
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as stream:
            fd = -1
            return stream.read(limit + 1)
    finally:
        if fd >= 0:
            os.close(fd)


def read_bytes(url: str | Path) -> bytes:
    if not is_s3(url):
        return Path(url).read_bytes()
    parsed = parse_s3(str(url))
    with _s3_errors(str(url)):
        return client().get_object(Bucket=parsed.bucket, Key=parsed.key)["Body"].read()


def open_read(url: str | Path) -> IO[bytes]:
    """A binary stream; for S3 the body of ``get_object``, read as it arrives."""
    if not is_s3(url):
        return open(url, "rb")
    parsed = parse_s3(str(url))
    with _s3_errors(str(url)):
        return client().get_object(Bucket=parsed.bucket, Key=parsed.key)["Body"]


def exists(url: str | Path) -> bool:
    if not is_s3(url):
        return Path(url).exists()
    parsed = parse_s3(str(url))
    try:
        with _s3_errors(str(url)):
            client().head_object(Bucket=parsed.bucket, Key=parsed.key)
    except FileNotFoundError:
        return False
    return True


def list_names(url: str | Path) -> set[str]:
    """Names of all files below a directory or prefix, relative to it, '/'-separated."""
    if not is_s3(url):
        root = Path(url)
        if not root.is_dir():
            return set()
        return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    parsed = parse_s3(str(url))
    prefix = f"{parsed.key}/" if parsed.key else ""
    names = set()
    with _s3_errors(str(url)):
        pages = client().get_paginator("list_objects_v2").paginate(
            Bucket=parsed.bucket, Prefix=prefix
        )
        for page in pages:
            names.update(obj["Key"][len(prefix):] for obj in page.get("Contents", []))
    return names


def write_bytes(url: str | Path, data: bytes) -> None:
    """Write a whole file or object so that readers see either nothing or all of it."""
    if is_s3(url):
        parsed = parse_s3(str(url))
        with _s3_errors(str(url)):
            client().put_object(Bucket=parsed.bucket, Key=parsed.key, Body=data)
        return
    with replacing(url) as tmp, open(tmp, "xb") as stream:
        stream.write(data)


def put_file(local: Path, url: str | Path) -> None:
    """Copy a finished local file to ``url`` atomically (multipart for large S3 objects)."""
    if is_s3(url):
        parsed = parse_s3(str(url))
        with _s3_errors(str(url)):
            client().upload_file(str(local), parsed.bucket, parsed.key)
        return
    if Path(local).resolve() == Path(url).resolve():
        return
    with replacing(url) as tmp:
        shutil.copyfile(local, tmp)


def remove(url: str | Path) -> None:
    """Delete a file or object; a missing one is not an error."""
    if not is_s3(url):
        Path(url).unlink(missing_ok=True)
        return
    parsed = parse_s3(str(url))
    with _s3_errors(str(url)):
        client().delete_object(Bucket=parsed.bucket, Key=parsed.key)


def gopen_s3(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any) -> IO[bytes]:
    """``webdataset.gopen`` handler for ``s3://`` URLs (reading only)."""
    if mode != "rb":
        raise StorageError(f"{url}: the s3 scheme of gopen only reads; use storage.put_file")
    return open_read(url)


def register_gopen() -> None:
    """Make ``webdataset.gopen`` (and so ``wds.WebDataset("s3://...")``) read s3:// URLs."""
    from webdataset.gopen import gopen_schemes

    gopen_schemes["s3"] = gopen_s3
