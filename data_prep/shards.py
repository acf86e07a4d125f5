"""The shard writer shared by every source layout.

A layout module turns its source folder into *items* (one clip, one stereo pair, one image,
...) grouped by split, and packs an item into zero or more *samples* (zero when its files are
bad, several when a bad frame cuts a clip in two). This module does everything else:

- items of a split are cut into consecutive runs of ``shard_size``; run ``i`` becomes
  ``<split>-<i:06d>.tar``, so a shard's contents depend only on the plan, and a re-run knows
  which items belong in which shard without looking at a single pixel;
- each shard is written under a temporary name and renamed (or uploaded, an S3 object only
  appears once complete), then a small record ``.progress/<shard>.json`` notes its items,
  sample count, size, sha256 and the bad files skipped in it;
- a re-run reuses every shard whose record matches the plan (same items) and whose file is
  there, rewrites the others and deletes temporary files a crashed run left: that is the
  resume after a crash;
- ``manifest.json`` is written last. If any shard has to be (re)written, an old manifest is
  deleted first, so a reader never sees a manifest that points at shards being replaced.

Tar entries are ``<key>.<entry>`` with ``mtime`` 0, so the same sources give byte-identical
shards (and equal sha256) on every run and every destination.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from data_prep.images import BadImage, SourceImage, read_image
from iicnet import storage

MANIFEST = "manifest.json"
PROGRESS = ".progress"
FORMAT = "iicnet-shards"
VERSION = 1
_ORDER = {"train": 0, "val": 1, "test": 2}
_KEY_LENGTH = 72  # "<key>.<entry>" then fits a plain ustar header, and logs stay readable
_STALE = re.compile(r"(^|/)\.[^/]+\.\d+\.[0-9a-f]{8}\.tmp$")


class PrepError(Exception):
    """Data preparation cannot go on (bad root, or a bad file under --strict)."""


@dataclass
class Item:
    """One unit of a source layout, before its files are read."""

    id: str
    """Stable and unique within the dataset (e.g. ``DAVIS-2017-trainval/bear``)."""
    files: dict[str, Path | None]
    """Role -> source path; None marks a file the layout expected but did not find."""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sample:
    """What one tar sample holds: each source image's bytes once, plus ``meta.json``."""

    key: str
    entries: dict[str, bytes]
    meta: dict[str, Any]


@dataclass(frozen=True)
class BadFile:
    path: str
    reason: str


class Report:
    """Collects bad source files; prints each one as it is found, or fails under --strict."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.bad: list[BadFile] = []
        self._lock = threading.Lock()

    def add(self, path: Path | str, reason: str) -> None:
        if self.strict:
            raise PrepError(f"{path}: {reason} (--strict)")
        with self._lock:
            self.bad.append(BadFile(str(path), reason))
        tqdm.write(f"skipped {path}: {reason}", file=sys.stderr)

    def image(self, path: Path | None, role: str = "file") -> SourceImage | None:
        """Read and decode one source image; report and return None when it is bad."""
        if path is None:
            return None
        try:
            return read_image(path)
        except BadImage as exc:
            self.add(path, f"{role} {exc}")
            return None


Packer = Callable[[Item, Report], list[Sample]]


def sample_key(item_id: str) -> str:
    """A tar-safe key: webdataset splits entry names at the first dot and on slashes."""
    nested = item_id.replace("/", "__")
    key = re.sub(r"[^A-Za-z0-9_-]+", "_", nested)
    if key != nested or not key or len(key) > _KEY_LENGTH:
        key = f"{key[:_KEY_LENGTH - 9]}-{hashlib.sha1(item_id.encode()).hexdigest()[:8]}"
    return key


def _fingerprint(items: list[Item]) -> str:
    return hashlib.sha256("\n".join(item.id for item in items).encode()).hexdigest()


def _write_tar(path: Path, samples: list[Sample]) -> tuple[int, str]:
    from webdataset import TarWriter

    with open(path, "wb") as stream:
        writer = TarWriter(stream, encoder=False, mtime=0, user="iicnet", group="iicnet")
        for sample in samples:
            record: dict[str, Any] = {"__key__": sample.key, **sample.entries}
            record["meta.json"] = json.dumps(sample.meta, sort_keys=True).encode()
            writer.write(record)
        writer.close()
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return path.stat().st_size, digest.hexdigest()


def _store_shard(out: str, name: str, samples: list[Sample], staging: Path) -> tuple[int, str]:
    tmp = storage.local_temp(staging / name)
    try:
        size, sha = _write_tar(tmp, samples)
        if storage.is_s3(out):
            storage.put_file(tmp, storage.join(out, name))
        else:
            os.replace(tmp, Path(out, name))
    finally:
        tmp.unlink(missing_ok=True)
    return size, sha


def _load_record(out: str, name: str, names: set[str]) -> dict[str, Any] | None:
    record_name = f"{PROGRESS}/{name}.json"
    if name not in names or record_name not in names:
        return None
    try:
        return json.loads(storage.read_bytes(storage.join(out, record_name)))
    except (OSError, ValueError):
        return None


def write_dataset(
    source: str,
    splits: dict[str, list[Item]],
    pack: Packer,
    out: str,
    *,
    shard_size: int,
    strict: bool = False,
    workers: int = 2,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Pack every item into shards under ``out`` (a directory or s3:// prefix).

    Returns the manifest, which is also written to ``out/manifest.json`` after all shards.
    """
    if shard_size < 1:
        raise PrepError(f"--shard-size must be at least 1, got {shard_size}")
    if not storage.is_s3(out):
        Path(out).mkdir(parents=True, exist_ok=True)
    names = storage.list_names(out)
    for name in [n for n in names if _STALE.search(n)]:  # left by a crashed run
        storage.remove(storage.join(out, name))
    report = Report(strict)
    plans = {
        split: [items[i:i + shard_size] for i in range(0, len(items), shard_size)]
        for split, items in sorted(splits.items(), key=lambda kv: (_ORDER.get(kv[0], 3), kv[0]))
    }
    manifest_removed = False
    reused = written = 0
    manifest_splits: dict[str, Any] = {}
    staging = Path(out) if not storage.is_s3(out) else Path(tempfile.mkdtemp(prefix="shards-"))
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        for split, chunks in plans.items():
            shards = []
            total = sum(len(c) for c in chunks)
            with tqdm(total=total, desc=f"{source}/{split}", unit="item", disable=None,
                      file=sys.stderr) as bar:
                for index, chunk in enumerate(chunks):
                    name = f"{split}-{index:06d}.tar"
                    record = _load_record(out, name, names)
                    if record is None or record.get("items") != _fingerprint(chunk):
                        if not manifest_removed and MANIFEST in names:
                            storage.remove(storage.join(out, MANIFEST))
                        manifest_removed = True
                        bad_before = len(report.bad)
                        samples = []
                        for packed in pool.map(lambda item: pack(item, report), chunk):
                            samples.extend(packed)
                            bar.update(1)
                        size, sha = _store_shard(out, name, samples, staging)
                        record = {
                            "items": _fingerprint(chunk), "samples": len(samples),
                            "bytes": size, "sha256": sha,
                            "skipped": [vars(b) for b in report.bad[bad_before:]],
                        }
                        storage.write_bytes(
                            storage.join(out, PROGRESS, f"{name}.json"),
                            json.dumps(record, indent=1).encode(),
                        )
                        written += 1
                    else:
                        bar.update(len(chunk))
                        reused += 1
                    shards.append({"name": name, **{k: record[k] for k in
                                                    ("samples", "bytes", "sha256", "skipped")}})
            manifest_splits[split] = shards
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if storage.is_s3(out):
            shutil.rmtree(staging, ignore_errors=True)

    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "source": source,
        "shard_size": shard_size,
        "options": options or {},
        "splits": {
            split: {
                "samples": sum(s["samples"] for s in shards),
                "bytes": sum(s["bytes"] for s in shards),
                "shards": [{k: s[k] for k in ("name", "samples", "bytes", "sha256")}
                           for s in shards],
            }
            for split, shards in manifest_splits.items()
        },
        "skipped": [bad for shards in manifest_splits.values() for s in shards
                    for bad in s["skipped"]],
    }
    storage.write_bytes(storage.join(out, MANIFEST), json.dumps(manifest, indent=1).encode())
    _summarise(manifest, out, reused, written)
    return manifest


def _summarise(manifest: dict[str, Any], out: str, reused: int, written: int) -> None:
    splits = ", ".join(f"{split} {info['samples']} samples / {len(info['shards'])} shards"
                       for split, info in manifest["splits"].items())
    print(f"{manifest['source']}: {splits} -> {out} "
          f"({written} shards written, {reused} finished shards reused)", file=sys.stderr)
    skipped = manifest["skipped"]
    if skipped:
        print(f"{manifest['source']}: skipped {len(skipped)} bad source files "
              f"(listed under 'skipped' in {MANIFEST})", file=sys.stderr)
