"""What ``ray_jobs/train.py`` and ``ray_jobs/tune.py`` share on their command lines and check
before anything starts: the default config, the options both take with the same meaning,
the GPU and data checks, and the errors those checks raise with a message for the user
(each script turns one into exit status 2 and ``error: <message>``).
"""

from __future__ import annotations

import argparse
from typing import Any

from ray_jobs.common import REPO

DEFAULT_CONFIG = REPO / "configs" / "video-k3-small.yaml"
"""The embedded default's config: the small video variant."""

SHARED = {
    "--data": {"help": "training shards: a directory or s3://bucket/prefix (default: the "
                       "sample dataset, built if missing)"},
    "--gpu": {"action": "store_true", "help": "one GPU per worker, nccl, bf16"},
    "--experiment": {"help": "MLflow experiment (default: iicnet-<task>)"},
}
"""Options both scripts take with the same meaning and help, added by :func:`add`."""


def add(parser: argparse.ArgumentParser, flag: str) -> None:
    """Add the shared option ``flag`` (one of :data:`SHARED`) to ``parser``."""
    parser.add_argument(flag, **SHARED[flag])


def setup_errors() -> tuple[type[BaseException], ...]:
    """The errors the checks before training raise with a message naming the problem: an
    unreachable tracking server, a bad config or option, missing or unfit data, storage
    that cannot be used."""
    from iicnet import registry
    from iicnet.model.config import ConfigError
    from iicnet.storage import StorageError

    return (registry.TrackingError, ConfigError, FileNotFoundError, ValueError, StorageError)


def check_gpu(use_gpu: bool, doing: str) -> None:
    """Raise ConfigError when ``--gpu`` asks for a GPU this machine lacks (off a cluster only:
    a cluster's GPUs are on its worker nodes). ``doing``: what the script does on CPU
    without ``--gpu`` ("train", "sweep")."""
    from ray_jobs import common

    if not use_gpu or common.on_cluster():
        return
    import torch

    from iicnet.model.config import ConfigError

    if not torch.cuda.is_available():
        raise ConfigError(f"--gpu: this machine has no CUDA GPU (leave --gpu out to {doing} "
                          "on CPU, or submit the job to a cluster with GPUs)")


def data_sources(data: str | None, val_data: str | None, cfg, cache) -> tuple[str, str]:
    """``(training shards, validation shards)`` as absolute locations (Ray Train workers run
    in a folder of their own): ``data``, else the sample dataset (built if missing);
    ``val_data``, else ``data``. Raises ConfigError / FileNotFoundError / ValueError when
    the shards do not fit ``cfg`` or the 'val' split is empty."""
    from iicnet import storage
    from iicnet.tasks import check_shards
    from ray_jobs import common

    def samples(source: str, split: str) -> int:
        return int(check_shards(source, cfg, split)["splits"][split]["samples"])

    data = storage.absolute(data) if data else common.sample_shards(cache)
    val_data = storage.absolute(val_data) if val_data else data
    samples(data, "train")
    if samples(val_data, "val") < 1:
        raise ValueError(f"{val_data}: the 'val' split is empty")
    return data, val_data


def run_exists(storage_path: str, name: str, filesystem: Any) -> bool:
    """Whether ``<storage_path>/<name>`` (a run's or a sweep's folder) exists; ``filesystem``
    is the storage's pyarrow filesystem, None for a local path."""
    from pyarrow import fs

    filesystem = filesystem or fs.LocalFileSystem()
    return filesystem.get_file_info(f"{storage_path}/{name}").type != fs.FileType.NotFound


def initial_weights(source: str, cfg) -> bytes:
    """The weights of model ``source`` (``zoo:NAME``, a checkpoint folder, ``models:/...``)
    as safetensors bytes, for a run that fine-tunes it (``--init``). Raises ConfigError when
    the model cannot be loaded or its architecture (the ``model`` section) is not ``cfg``'s.
    """
    import dataclasses

    from safetensors.torch import save

    from iicnet.app.api import ModelError, load_model
    from iicnet.model.config import ConfigError

    try:
        model, found, _ = load_model(source)
    except ModelError as exc:
        raise ConfigError(f"--init {source}: {exc}") from None
    ours, theirs = dataclasses.asdict(cfg.model), dataclasses.asdict(found.model)
    differ = [f"model.{k} {theirs[k]!r} (the config has {ours[k]!r})"
              for k in ours if ours[k] != theirs.get(k)]
    if differ:
        raise ConfigError(f"--init {source}: another architecture: {'; '.join(differ)}")
    return save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
