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

``write_dataset`` runs the steps in one process: ``plan_shards``, ``prepare_output``,
``finished_record`` per shard, ``write_shard`` for the others (items packed by a thread
pool), ``write_manifest``. Shards are independent, so a fan-out can run ``write_shard`` in
separate processes (each with its own :class:`Report`) and ``write_manifest`` after all.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from data_prep.images import BadImage, SourceImage, read_image
from iicnet import storage
from iicnet.storage.atomic import replacing

MANIFEST = "manifest.json"
PROGRESS = ".progress"
FORMAT = "iicnet-shards"
VERSION = 1
_ORDER = {"train": 0, "val": 1, "test": 2}
_KEY_LENGTH = 72  # "<key>.<entry>" then fits a plain ustar header, and logs stay readable
_STALE = re.compile(r"(^|/)\.[^/]+\.\d+\.[0-9a-f]{8}\.tmp$")


class PrepError(Exception):
    """Data preparation cannot go on (bad root, or a bad file under --strict)."""


class OutputError(PrepError):
    """The output cannot be written (a full disk, a quota, a read-only place): the command
    stops with exit 2; finished shards stay and are reused by a rerun."""


@contextlib.contextmanager
def _writing(target: str) -> Iterator[None]:
    """Turn an OSError while writing ``target`` into an OutputError naming it."""
    try:
        yield
    except OutputError:
        raise
    except OSError as exc:
        raise OutputError(f"{target}: cannot write it ({exc.strerror or exc}); the shards "
                          f"finished so far are kept, and a rerun with space reuses them"
                          ) from exc


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


@dataclass
class ShardPlan:
    """One shard to write: ``<split>-<index:06d>.tar`` holding these items' samples."""

    split: str
    name: str
    items: list[Item]

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(item.id for item in self.items).encode()).hexdigest()


def plan_shards(splits: dict[str, list[Item]], shard_size: int) -> list[ShardPlan]:
    """Cut each split (train, val, test first) into runs of ``shard_size`` items."""
    if shard_size < 1:
        raise PrepError(f"--shard-size must be at least 1, got {shard_size}")
    plans = []
    for split, items in sorted(splits.items(), key=lambda kv: (_ORDER.get(kv[0], 3), kv[0])):
        for index, start in enumerate(range(0, len(items), shard_size)):
            plans.append(ShardPlan(split, f"{split}-{index:06d}.tar",
                                   items[start:start + shard_size]))
    return plans


def _write_tar(path: Path, samples: list[Sample]) -> tuple[int, str]:
    """WebDataset layout with the standard library's tarfile: entries ``<key>.<ext>`` in key
    order, then extension order; fixed owner, mode and mtime so equal inputs give equal bytes.
    (webdataset's own writer would import torch, seconds per Ray prep task.)"""
    with open(path, "wb") as stream, tarfile.open(fileobj=stream, mode="w|") as tar:
        for sample in samples:
            entries = {**sample.entries,
                       "meta.json": json.dumps(sample.meta, sort_keys=True).encode()}
            for ext in sorted(entries):
                data = entries[ext]
                info = tarfile.TarInfo(f"{sample.key}.{ext}")
                info.size, info.mtime, info.mode = len(data), 0, 0o444
                info.uname = info.gname = "iicnet"
                tar.addfile(info, io.BytesIO(data))
    return path.stat().st_size, storage.sha256(path)


def _record_url(out: str, name: str) -> str:
    return storage.join(out, PROGRESS, f"{name}.json")


LOCK = ".prep.lock"
"""The lock file a data prep holds in a local ``--out`` while it writes there."""


@contextlib.contextmanager
def exclusive(out: str) -> Iterator[None]:
    """Hold ``out``'s lock for the block: a second data prep into the same local folder is
    refused (OutputError) instead of mixing its shards with this one's, or deleting this
    one's temporary files as a crashed run's. Not for ``s3://`` (no locks there: one
    writer per prefix)."""
    import fcntl

    if storage.is_s3(out):
        yield
        return
    with _writing(out):
        Path(out).mkdir(parents=True, exist_ok=True)
        lock = open(Path(out) / LOCK, "a+")  # noqa: SIM115 (held for the block)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise OutputError(f"{out}: another data prep is writing there ({holder}); wait "
                              "for it to finish, or give another --out") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        lock.flush()
        yield
    finally:
        lock.close()


def prepare_output(out: str) -> set[str]:
    """Create ``out`` if local, delete temporary files a crashed run left; list its files."""
    if not storage.is_s3(out):
        with _writing(out):
            Path(out).mkdir(parents=True, exist_ok=True)
    names = storage.list_names(out)
    for name in [n for n in names if _STALE.search(n)]:
        storage.remove(storage.join(out, name))
    return names


def finished_record(out: str, plan: ShardPlan, names: set[str]) -> dict[str, Any] | None:
    """The record of an earlier run's shard when it is there and holds the planned items."""
    if plan.name not in names or f"{PROGRESS}/{plan.name}.json" not in names:
        return None
    try:
        record = json.loads(storage.read_bytes(_record_url(out, plan.name)))
    except (OSError, ValueError):
        return None
    return record if record.get("items") == plan.fingerprint else None


def write_shard(plan: ShardPlan, pack: Packer, out: str, report: Report,
                pool: ThreadPoolExecutor | None = None,
                progress: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """Pack, store and record one shard; returns its record. Independent of every other
    shard, so shards can be written by separate processes (e.g. Ray tasks)."""
    bad_before = len(report.bad)
    mapper = pool.map if pool is not None else map
    samples: list[Sample] = []
    for packed in mapper(lambda item: pack(item, report), plan.items):
        samples.extend(packed)
        if progress is not None:
            progress(1)
    target = storage.join(out, plan.name)
    with _writing(target), contextlib.ExitStack() as stack:
        if storage.is_s3(out):
            staging = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="shard-")))
        else:
            staging = Path(out)
        with replacing(staging / plan.name) as tmp:
            size, sha = _write_tar(tmp, samples)
            if storage.is_s3(out):
                storage.put_file(tmp, target)
    record = {"items": plan.fingerprint, "samples": len(samples), "bytes": size, "sha256": sha,
              "skipped": [vars(b) for b in report.bad[bad_before:]]}
    with _writing(_record_url(out, plan.name)):
        storage.write_bytes(_record_url(out, plan.name), json.dumps(record, indent=1).encode())
    return record


def write_manifest(source: str, plans: list[ShardPlan], records: dict[str, dict[str, Any]],
                   out: str, *, shard_size: int, options: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """Write ``manifest.json`` from every shard's record: the last step of a dataset."""
    splits: dict[str, Any] = {}
    for plan in plans:
        record = records[plan.name]
        split = splits.setdefault(plan.split, {"samples": 0, "bytes": 0, "shards": []})
        split["samples"] += record["samples"]
        split["bytes"] += record["bytes"]
        split["shards"].append({"name": plan.name, **{k: record[k] for k in
                                                      ("samples", "bytes", "sha256")}})
    manifest = {
        "format": FORMAT, "version": VERSION, "source": source, "shard_size": shard_size,
        "options": options or {}, "splits": splits,
        "skipped": [bad for plan in plans for bad in records[plan.name]["skipped"]],
    }
    with _writing(storage.join(out, MANIFEST)):
        storage.write_bytes(storage.join(out, MANIFEST),
                            json.dumps(manifest, indent=1).encode())
    return manifest


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
    """Pack every item into shards under ``out`` (a directory or s3:// prefix), reusing
    finished shards; returns the manifest, written to ``out/manifest.json`` last."""
    with exclusive(out):
        return _write_dataset(source, splits, pack, out, shard_size=shard_size,
                              strict=strict, workers=workers, options=options)


def _write_dataset(source: str, splits: dict[str, list[Item]], pack: Packer, out: str, *,
                   shard_size: int, strict: bool, workers: int,
                   options: dict[str, Any] | None) -> dict[str, Any]:
    plans = plan_shards(splits, shard_size)
    names = prepare_output(out)
    records = {}
    for plan in plans:
        record = finished_record(out, plan, names)
        if record is not None:
            records[plan.name] = record
    reused = len(records)
    if reused < len(plans) and MANIFEST in names:
        storage.remove(storage.join(out, MANIFEST))
    report = Report(strict)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for split in dict.fromkeys(plan.split for plan in plans):
            mine = [plan for plan in plans if plan.split == split]
            with tqdm(total=sum(len(p.items) for p in mine), desc=f"{source}/{split}",
                      unit="item", disable=None, file=sys.stderr) as bar:
                for plan in mine:
                    if plan.name in records:
                        bar.update(len(plan.items))
                    else:
                        records[plan.name] = write_shard(plan, pack, out, report, pool,
                                                         bar.update)
    manifest = write_manifest(source, plans, records, out, shard_size=shard_size,
                              options=options)
    _summarise(manifest, out, reused=reused, written=len(plans) - reused)
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
