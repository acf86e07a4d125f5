"""Reading a shard set: its ``manifest.json`` and the samples of its WebDataset tars.

The format is written by :mod:`data_prep` (see its docstring): a directory or ``s3://``
prefix with ``manifest.json`` (written last) and uncompressed ``<split>-NNNNNN.tar`` shards
whose samples hold each source image once plus ``meta.json``. This module reads it in order,
for training (through :mod:`iicnet.data`) and scoring alike; a shard that cannot be read is
reported as a warning naming its URL and skipped.
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
    from webdataset.tariterators import tar_file_iterator

    count = 0
    try:
        with gopen(url, "rb") as stream:
            samples = _group_entries(tar_file_iterator(stream), url)
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
