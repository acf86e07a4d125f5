"""Tracking that outlives its server: a training loop never waits on MLflow for long.

:func:`bound_requests` caps every MLflow HTTP call of this process to seconds (MLflow's own
default retries for minutes). :class:`BufferedTracker` is the :class:`Tracker` a training
loop uses: a metric batch that cannot be sent stays in memory and goes out with the next
one once the server answers again (retried at most every ``retry_s`` seconds, so an outage
costs training one bounded wait per retry, not one per step). The first failure is logged
once, naming the server, the step and the sync file; :meth:`BufferedTracker.close` writes
what is still unsent to that file (JSON lines, no credentials), which
``python -m ray_jobs.sync_tracking FILE`` sends later.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iicnet.registry.tracking import Tracker, redact

log = logging.getLogger("iicnet.train")

SYNC_FILE = "tracking-sync.jsonl"
"""The name of the sync file in a run's checkpoint folder."""

BOUNDS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
          "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
"""At most 3 tries of 10 s each, 1 s and 2 s apart: a dead server costs a call about 3 s
(refused connections) and at worst about 35 s (a server that accepts and never answers)."""


def bound_requests() -> None:
    """Cap MLflow's HTTP retries and timeouts in this process (and the processes it starts)
    to :data:`BOUNDS`, unless the user set them. MLflow reads them at every call."""
    for name, value in BOUNDS.items():
        os.environ.setdefault(name, value)


def refused_files(exc: BaseException) -> str | None:
    """Why the run's artifact store does not take files, when ``exc`` says it: a full disk
    or a used-up quota (an artifact folder of this machine), or HTTP 500s from a server's
    artifact upload (its own disk: the server's log says why); else None. The server
    answers the other calls then: metrics and tags go on."""
    from iicnet import storage

    why = storage.out_of_space(exc)
    if why is not None:
        return why
    text = str(exc)
    if "mlflow-artifacts" in text and "500" in text:
        return "the server answers uploads with HTTP 500; its log says why (often a full disk)"
    return None


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means the server did not answer (rather than refusing the request)."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(exc, (requests.exceptions.RequestException, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, MlflowException):
        text = str(exc)
        return any(word in text for word in ("Max retries", "Connection", "timed out",
                                             "API request to", "503", "502", "504"))
    return False


class BufferedTracker(Tracker):
    """A :class:`Tracker` whose metrics, tags and small files survive an outage of the server.

    ``sync_file`` is where :meth:`close` writes what could not be sent."""

    def __init__(self, uri: str, run_id: str, sync_file: str, retry_s: float = 10.0):
        super().__init__(uri, run_id)
        self.sync_file, self.retry_s = sync_file, retry_s
        self.pending: list[dict[str, Any]] = []
        self.down_since: int | None = None
        self.sent_steps: set[int] = set()
        self.dropped: list[str] = []
        self.parked: list[dict[str, Any]] = []
        """Files the artifact store refused (:func:`refused_files`), for the sync file."""
        self.files_refused: str | None = None
        self._next_try = 0.0
        self._step = 0

    def _send(self, entry: dict[str, Any]) -> None:
        kind = entry["kind"]
        if kind == "metrics":
            Tracker.metrics(self, entry["values"], entry["step"], timestamp=entry["time"])
            self.sent_steps.add(entry["step"])
        elif kind == "tags":
            Tracker.tags(self, entry["values"])
        elif kind == "json":
            Tracker.json(self, entry["data"], entry["path"])
        elif kind == "finish":
            Tracker.finish(self, entry["status"])

    def _flush(self) -> bool:
        """Send what is pending, oldest first; whether everything went."""
        if self.pending and self.down_since is not None and time.monotonic() < self._next_try:
            return False
        while self.pending:
            try:
                self._send(self.pending[0])
            except Exception as exc:  # noqa: BLE001  sorted by unreachable() below
                if self.pending[0]["kind"] == "json" and self._refused(exc):
                    self.parked.append(self.pending.pop(0))
                    continue
                if not unreachable(exc):
                    raise
                self._next_try = time.monotonic() + self.retry_s
                if self.down_since is None:
                    self.down_since = self._step
                    log.warning("tracking unreachable at %s since step %d; buffering to %s",
                                redact(self.uri), self._step, self.sync_file)
                return False
            self.pending.pop(0)
        if self.down_since is not None:
            log.warning("tracking at %s is back: buffered metrics since step %d sent",
                        redact(self.uri), self.down_since)
            self.down_since = None
        return True

    def _refused(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the artifact store refusing files; said once."""
        why = refused_files(exc)
        if why is not None and self.files_refused is None:
            self.files_refused = why
            log.warning("tracking at %s stores no files since step %d (%s): validation "
                        "files are kept for %s, pictures are not; metrics go on",
                        redact(self.uri), self._step, why, self.sync_file)
        return why is not None

    def _queue(self, entry: dict[str, Any]) -> None:
        self.pending.append(entry)
        self._flush()

    def metrics(self, values: dict[str, float], step: int, timestamp: int | None = None) -> None:
        self._step = step
        self._queue({"kind": "metrics", "step": step, "time": timestamp or int(time.time() * 1000),
                     "values": {k: float(v) for k, v in values.items()}})

    def tags(self, values: dict[str, str]) -> None:
        self._queue({"kind": "tags", "values": dict(values)})

    def json(self, data: Any, path: str) -> None:
        self._queue({"kind": "json", "data": data, "path": path})

    def image(self, picture, key: str, step: int) -> None:
        if self._flush():
            try:
                return Tracker.image(self, picture, key, step)
            except Exception as exc:  # noqa: BLE001
                if not self._refused(exc):
                    if not unreachable(exc):
                        raise
                    self._flush()  # notes the outage
        self.dropped.append(f"picture {key} at step {step}")

    def last_step(self, key: str) -> int:
        try:
            return Tracker.last_step(self, key)
        except Exception as exc:  # noqa: BLE001
            if not unreachable(exc):
                raise
            return 0

    def finish(self, status: str = "FINISHED") -> None:
        self._queue({"kind": "finish", "status": status})

    def close(self) -> str | None:
        """Send what is pending (one last try); write the rest to the sync file and return
        its name, or None when nothing is left (or, said in the log with what is lost, when
        the sync file's disk is full)."""
        self._next_try = 0.0
        if self._flush() and not self.dropped and not self.parked:
            return None
        from iicnet import storage

        left = self.parked + self.pending
        try:
            append_to_sync_file(self.sync_file, self.uri, self.run_id, left, self.dropped)
        except OSError as exc:  # the sync file's disk is full too: say what is lost
            why = storage.out_of_space(exc)
            if why is None:
                raise
            steps = [e["step"] for e in left if e["kind"] == "metrics"]
            lost = [e["path"] for e in left if e["kind"] == "json"] + self.dropped + (
                [f"metrics of steps {steps[0]}-{steps[-1]}"] if steps else [])
            log.warning("tracking: cannot write the sync file %s (%s); lost: %s",
                        self.sync_file, why, ", ".join(lost) or "nothing")
            return None
        return self.sync_file


def write_sync_file(path: str, uri: str, run_id: str, pending: list[dict[str, Any]],
                    dropped: list[str] = ()) -> None:
    """The sync file: a header line (run, server without credentials), then one line per
    unsent item; written whole or not at all."""
    from iicnet import storage

    header = {"kind": "run", "run_id": run_id, "tracking_uri": redact(uri),
              "not_kept": list(dropped)}
    lines = [json.dumps(header)] + [json.dumps(entry) for entry in pending]
    storage.write_bytes(path, ("\n".join(lines) + "\n").encode())


def read_sync_file(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from iicnet import storage

    lines = [json.loads(line) for line in storage.read_bytes(path).decode().splitlines()
             if line.strip()]
    if not lines or lines[0].get("kind") != "run":
        raise ValueError(f"{path}: not a tracking sync file (no run header on its first line)")
    return lines[0], lines[1:]


def append_to_sync_file(path: str, uri: str, run_id: str, entries: list[dict[str, Any]],
                        dropped: list[str] = ()) -> None:
    """Add ``entries`` (and the ``dropped`` items' names) to the sync file at ``path`` (made
    when there is none): a resumed run adds to what its interrupted part left."""
    from iicnet import storage

    header, earlier = (read_sync_file(path) if storage.exists(path)
                       else ({"not_kept": []}, []))
    write_sync_file(path, uri, run_id, earlier + entries,
                    [*header.get("not_kept", []), *dropped])


def sync(path: str | Path, uri: str,
         handlers: dict[str, Callable[[str, dict[str, Any]], None]] | None = None) -> int:
    """Send every entry of sync file ``path`` to ``uri`` (raises on the first failure, having
    rewritten the file with what is left); the number sent. ``handlers`` do the kinds of
    entry this module does not know (called with the run id and the entry). The file is
    removed when done."""
    from iicnet import storage

    header, entries = read_sync_file(path)
    tracker = Tracker(uri, header["run_id"])
    sent = 0
    for index, entry in enumerate(entries):
        try:
            if entry["kind"] == "metrics":
                tracker.metrics(entry["values"], entry["step"], timestamp=entry["time"])
            elif entry["kind"] == "tags":
                tracker.tags(entry["values"])
            elif entry["kind"] == "json":
                tracker.json(entry["data"], entry["path"])
            elif entry["kind"] == "finish":
                tracker.finish(entry["status"])
            elif entry["kind"] in (handlers or {}):
                handlers[entry["kind"]](header["run_id"], entry)
            else:
                raise ValueError(f"{path}: line {index + 2}: unknown kind {entry['kind']!r}")
        except Exception:
            write_sync_file(str(path), uri, header["run_id"], entries[index:],
                            header.get("not_kept", []))
            raise
        sent += 1
    storage.remove(path)
    return sent
