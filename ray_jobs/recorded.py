"""A training run's recorded config: written into the run's storage folder when the run
starts (``run-config.json``, beside its checkpoints), read back when it is resumed.

A resumed run goes on with the config it was started with (its steps, schedule, cadence),
not with whatever the resuming command line would build afresh; only what that command line
gives explicitly (``--config``, ``--set``, ``--steps``, ``--experiment``, ``--data``,
``--val-data``, ``--num-workers``) changes it, and the changes are listed. The architecture
(``model.*``) cannot change: the checkpoints are of the first one.
Runs written before this file existed are resumed with the config of their newest
checkpoint (a training checkpoint holds the whole config).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RECORD = "run-config.json"
"""The recorded config's file name in the run's storage folder."""


def url(path: str, filesystem: Any) -> str:
    """A path of the run storage (pyarrow's form: no scheme for S3) as :mod:`iicnet.storage`
    takes it: the local path, or an ``s3://`` URL."""
    return path if filesystem is None else f"s3://{path}"


def location(storage_path: str, name: str, filesystem: Any) -> str:
    """Where run ``name``'s recorded recipe is."""
    return url(f"{storage_path}/{name}/{RECORD}", filesystem)


@dataclass
class Recorded:
    """What a run was started with: its config and the file it came from (which names the
    logged model), its MLflow experiment, its shards and its number of workers (None where
    not recorded)."""

    config: Any
    where: str
    config_file: str | None = None
    experiment: str | None = None
    data: str | None = None
    val_data: str | None = None
    num_workers: int | None = None


def record(cfg, storage_path: str, name: str, filesystem: Any, *, config_file: str,
           experiment: str, data: str, val_data: str, num_workers: int) -> None:
    """Write the run's recipe, whole or not at all."""
    import json

    from iicnet import storage

    text = json.dumps({"config_file": config_file, "experiment": experiment, "data": data,
                       "val_data": val_data, "num_workers": num_workers,
                       "config": cfg.to_dict()}, indent=1)
    storage.write_bytes(location(storage_path, name, filesystem), text.encode())


def recorded(storage_path: str, name: str, filesystem: Any) -> Recorded | None:
    """Run ``name``'s recipe: its ``run-config.json``, else its newest checkpoint's
    ``config.json`` (the config alone); None when it has neither."""
    import json

    from iicnet import storage
    from iicnet.formats.checkpoint import CONFIG, MAX_JSON_BYTES
    from iicnet.model.config import ConfigError, from_dict
    from ray_jobs.worker import step_folders

    candidates = [location(storage_path, name, filesystem)]
    candidates += [url(f"{folder}/{CONFIG}", filesystem)
                   for folder in step_folders(f"{storage_path}/{name}", filesystem)]
    for where in candidates:
        if not storage.exists(where):
            continue
        with storage.open_read(where) as stream:
            raw = stream.read(MAX_JSON_BYTES + 1)
        if len(raw) > MAX_JSON_BYTES:
            raise ConfigError(f"{where}: larger than a config's {MAX_JSON_BYTES // 1024} KiB")
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise ConfigError(f"{where}: not JSON ({exc})") from None
        if not where.endswith(RECORD):
            return Recorded(from_dict(raw, source=where), where)
        fields = {"config_file": str, "experiment": str, "data": str, "val_data": str,
                  "num_workers": int}
        wrong = [key for key, kind in fields.items()
                 if not isinstance(raw, dict) or not isinstance(raw.get(key), kind | None)]
        if wrong:
            raise ConfigError(f"{where}: {wrong[0]}: expected a {fields[wrong[0]].__name__}")
        return Recorded(from_dict(raw.get("config"), source=where), where,
                        **{key: raw.get(key) for key in fields})
    return None


def resumed_config(first, config_file: str | None, overrides: list[str]):
    """``(config, changes)``: the run's recorded config ``first``, replaced by
    ``config_file`` when one is given, with ``overrides`` applied; ``changes`` lists each
    field that differs from ``first`` as ``"field: old -> new"``. Raises ConfigError when
    the architecture would change."""
    from iicnet.formats.config_file import load
    from iicnet.model.config import ConfigError

    cfg = load(config_file) if config_file else first
    cfg = cfg.override(overrides) if overrides else cfg
    before, after = first.flat(), cfg.flat()
    changes = [f"{key}: {before.get(key)!r} -> {value!r}" for key, value in after.items()
               if before.get(key) != value]
    fixed = [change for change in changes if change.startswith("model.")]
    if fixed:
        raise ConfigError(f"a resumed run keeps its architecture (its checkpoints are of it): "
                          f"{'; '.join(fixed)}; train a new run (--name or --fresh) instead")
    return cfg, changes
