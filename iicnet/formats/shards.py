"""Reading a shard set: its ``manifest.json`` and the samples of its WebDataset tars.

The format is written by :mod:`data_prep` (see its docstring): a directory or ``s3://``
prefix with ``manifest.json`` (written last) and uncompressed ``<split>-NNNNNN.tar`` shards
whose samples hold each source image once plus ``meta.json``. This module reads it in order,
for training (through :mod:`iicnet.data`) and scoring alike; a shard that cannot be read is
reported as a warning naming its URL and skipped.

Shards come from storage, so their members are treated as hostile: a member that is not a
regular file (a link, a device, a FIFO, a folder), whose name is absolute or climbs out with
``..``, or that declares more than :data:`MAX_MEMBER_BYTES` is refused by name (the shard is
skipped from there, as a damaged one is). Members are read into memory, never extracted, so
nothing outside the shard is touched either way.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from iicnet import storage

Sample = dict[str, Any]
log = logging.getLogger("iicnet.data")
MANIFEST = "manifest.json"
MAX_MEMBER_BYTES = 128 << 20
"""The largest tar member read: an encoded frame is at most a few MB (a 4K PNG about 25)."""

storage.register_gopen()


@dataclass(frozen=True)
class Shard:
    url: str
    samples: int


def read_manifest(source: str) -> dict[str, Any]:
    """The ``manifest.json`` of a shard directory or ``s3://`` prefix."""
    url = storage.join(source, MANIFEST)
    try:
        manifest = json.loads(storage.read_bytes(url))
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"{url}: no manifest. Shards are made by `python -m data_prep <layout> --root ... "
            f"--out {source}`, which writes the manifest last: an unfinished run has none"
        ) from exc
    except ValueError as exc:
        raise ValueError(f"{url}: not a JSON manifest ({exc})") from exc
    if manifest.get("format") != "iicnet-shards":
        raise ValueError(f"{url}: not an iicnet shard manifest (format {manifest.get('format')!r})")
    return manifest


def manifest_digest(source: str) -> str:
    """SHA-256 (hex) of the ``manifest.json`` bytes of a shard directory or ``s3://`` prefix.
    The manifest lists every shard with its size and hash, so one digest means one data set."""
    return hashlib.sha256(storage.read_bytes(storage.join(source, MANIFEST))).hexdigest()


def shard_list(source: str, manifest: dict[str, Any], split: str) -> list[Shard]:
    splits = manifest["splits"]
    if split not in splits:
        raise ValueError(f"{storage.join(source, MANIFEST)}: no split {split!r} "
                         f"(splits: {', '.join(splits)})")
    return [Shard(storage.join(source, s["name"]), s["samples"]) for s in splits[split]["shards"]]


def read_split(source: str, split: str) -> Iterator[Sample]:
    """Every sample of ``split``, shard after shard in manifest order."""
    for shard in shard_list(source, read_manifest(source), split):
        yield from read_shard(shard.url)


def _read_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (tarfile.TarError, OSError, ValueError, EOFError)
    try:
        from botocore.exceptions import BotoCoreError
    except ImportError:
        return errors
    return (*errors, BotoCoreError)


class HostileMember(ValueError):
    """A shard member that is not a plain file of a sane name and size."""


def _members(stream, url: str) -> Iterator[dict[str, Any]]:
    """``{"fname", "data"}`` of each member of the tar ``stream``, in order; raises
    :class:`HostileMember` naming the first one that is refused (see the module docstring)."""
    tar = tarfile.open(fileobj=stream, mode="r|")
    for member in tar:
        name = member.name
        parts = name.replace("\\", "/").split("/")
        if not member.isreg():
            kind = ("a symbolic link" if member.issym() else "a hard link" if member.islnk()
                    else "a FIFO" if member.isfifo() else "a device file" if member.isdev()
                    else "a folder" if member.isdir()
                    else "not a regular file")
            raise HostileMember(f"{url}: member {name!r} is {kind}; shards hold regular "
                                "files only")
        if not name or name.startswith("/") or ".." in parts or (parts[0][1:2] == ":"):
            raise HostileMember(f"{url}: member {name!r}: an absolute or climbing name")
        if member.size > MAX_MEMBER_BYTES:
            raise HostileMember(f"{url}: member {name!r} declares {member.size} bytes, more "
                                f"than the {MAX_MEMBER_BYTES >> 20} MiB a member may hold")
        data = tar.extractfile(member).read()
        yield {"fname": name, "data": data}
        tar.members = []  # a stream: keep no index of what was read


def _group_entries(files: Iterable[dict[str, Any]], url: str) -> Iterator[Sample]:
    from webdataset.tariterators import base_plus_ext

    sample: Sample | None = None
    for file in files:
        key, entry = base_plus_ext(file["fname"])
        if key is None:
            continue
        if sample is not None and key != sample["__key__"]:
            yield sample
            sample = None
        if sample is None:
            sample = {"__key__": key, "__url__": url}
        sample[entry] = file["data"]
    if sample is not None:
        yield sample


def read_shard(url: str, start: int = 0, stop: int | None = None) -> Iterator[Sample]:
    """Samples ``start .. stop-1`` of one shard, ``meta.json`` parsed into ``sample["meta"]``.

    A shard that cannot be opened or read is reported (a warning naming the URL) and the rest
    of it is skipped; so is one that ends before ``stop``.
    """
    from webdataset.gopen import gopen

    count = 0
    try:
        with gopen(url, "rb") as stream:
            samples = _group_entries(_members(stream, url), url)
            for sample in itertools.islice(samples, start, stop):
                sample["meta"] = json.loads(sample.pop("meta.json", b"{}"))
                count += 1
                yield sample
    except _read_errors() as exc:
        log.warning("skipping corrupt or unreadable shard %s after %d samples: %s",
                    url, count, exc)
        return
    if stop is not None and count < stop - start:
        log.warning("shard %s ended after %d of the %d samples the manifest lists from %d",
                    url, count, stop - start, start)
