"""A sweep's state in storage, and why ``--resume`` may trust it.

``<storage>/<sweep>/`` holds Ray Tune's experiment (``tuner.pkl``, the experiment and
searcher state), every trial's Ray Train folder (``train/``) and the sweep's own settings
(:data:`SETTINGS`). Ray restores a sweep by unpickling its state, so whoever can write to the
storage could run code in the driver: each time a sweep stops, :func:`seal_state` records
the sha256 of that state in the sweep's MLflow parent run (tag :data:`STATE_TAG`), and
:func:`check_sealed` refuses, before Ray reads anything, state that differs or was never
sealed.
"""

from __future__ import annotations

import json
from typing import Any

from iicnet import storage

SETTINGS = "iicnet-sweep.json"


STATE_TAG = "iicnet.sweep_state_sha256"
"""Parent-run tag: the digest of the sweep's Tune state when it last stopped."""


SWEEP_TAG = "iicnet.sweep"


def storage_files(filesystem: Any):
    """``filesystem``, or the local one for a local storage path."""
    from pyarrow import fs

    return filesystem or fs.LocalFileSystem()


def save_settings(settings: dict[str, Any], storage_path: str, filesystem: Any) -> None:
    files = storage_files(filesystem)
    directory = f"{storage_path}/{settings['name']}"
    files.create_dir(directory, recursive=True)
    with files.open_output_stream(f"{directory}/{SETTINGS}") as out:
        out.write(json.dumps(settings, indent=1).encode())


def load_settings(name: str, storage_path: str, filesystem: Any) -> dict[str, Any]:
    from pyarrow import fs

    files = storage_files(filesystem)
    path = f"{storage_path}/{name}/{SETTINGS}"
    if files.get_file_info(path).type == fs.FileType.NotFound:
        raise FileNotFoundError(f"--resume {name}: no sweep of that name in {storage_path} "
                                f"(no {SETTINGS}); pass the --storage it ran with")
    with files.open_input_stream(path) as f:
        data = f.read(1 << 20)
    try:
        settings = json.loads(data)
    except (ValueError, RecursionError):
        raise ValueError(f"{path}: not valid JSON; the sweep's settings are damaged") from None
    missing = [k for k in ("name", "experiment", "config", "space", "parent_run_id")
               if not isinstance(settings, dict) or k not in settings]
    if missing or settings["name"] != name:
        raise ValueError(f"{path}: not the settings of sweep {name} (missing "
                         f"{', '.join(missing) or 'nothing'}, name {settings.get('name')!r})")
    return settings


def state_digest(storage_path: str, name: str, filesystem: Any) -> str:
    """sha256 over the name and sha256 of every file of the sweep's Tune state: everything
    under ``<storage>/<name>/`` except ``train/`` (the trials' Ray Train folders, which hold
    JSON and our sealed checkpoints; Ray unpickles nothing there)."""
    import hashlib

    from pyarrow import fs

    files = storage_files(filesystem)
    root = f"{storage_path}/{name}".rstrip("/")
    lines = []
    for info in files.get_file_info(fs.FileSelector(root, recursive=True)):
        if info.type != fs.FileType.File:
            continue
        relative = info.path[len(root) + 1:] if info.path.startswith(root + "/") else info.path
        if relative.split("/")[0] == "train":
            continue
        with files.open_input_stream(info.path) as f:
            lines.append(f"{relative}\0{storage.sha256(f)}\n")
    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


def seal_state(uri: str, settings: dict[str, Any], storage_path: str, filesystem: Any) -> None:
    """Record the digest of the sweep's Tune state in its MLflow parent run: the only way
    ``--resume`` lets Ray read (and unpickle) that state again."""
    from iicnet import registry

    digest = state_digest(storage_path, settings["name"], filesystem)
    registry.Tracker(uri, settings["parent_run_id"]).tags({STATE_TAG: digest})


def check_sealed(uri: str, settings: dict[str, Any], storage_path: str,
                 filesystem: Any) -> None:
    """Raise SweepStateError unless the sweep's Tune state in storage is exactly what the
    sweep itself left there (the digest :func:`seal_state` recorded in MLflow).

    ``Tuner.restore`` unpickles ``tuner.pkl``, the experiment state and the searcher state
    from storage: whoever could change them could run code here. Nothing of it is read
    before this check passes."""
    from iicnet import registry

    name = settings["name"]
    runs = registry.find_runs(uri, settings["experiment"], {SWEEP_TAG: name})
    tags = runs.get(settings["parent_run_id"])
    if tags is None:
        raise SweepStateError(f"--resume {name}: its MLflow parent run "
                              f"{settings['parent_run_id']} is not in experiment "
                              f"{settings['experiment']!r} at {registry.redact(uri)}")
    recorded = tags.get(STATE_TAG)
    if not recorded:
        raise SweepStateError(
            f"--resume {name}: the sweep's state in {storage_path}/{name} was never sealed "
            "(its driver did not stop cleanly), so nothing vouches for it; Ray would unpickle "
            "it, so it is not resumed. Start a new sweep (--name another name)")
    found = state_digest(storage_path, name, filesystem)
    if found != recorded:
        raise SweepStateError(
            f"--resume {name}: the sweep's state in {storage_path}/{name} changed since the "
            f"sweep last stopped (sha256 {found[:12]}..., recorded {recorded[:12]}... in MLflow "
            f"run {settings['parent_run_id']}); Ray would unpickle it, so it is not resumed. "
            "Someone or something else wrote there: check who can write to the storage")


class SweepStateError(RuntimeError):
    """The sweep's state in storage cannot be trusted, or is not where it should be."""


def finished_before(uri: str, parent_run_id: str) -> bool:
    """Whether the sweep's parent run was closed as finished (so --resume has nothing to do)."""
    from iicnet import registry

    return registry.Tracker(uri, parent_run_id).status() == "FINISHED"


