"""Tasks: one small module per published experiment, registered by name.

``get_task(cfg)`` builds the task that ``cfg.data.task`` names. Every module in this package
registers its task with ``@register("<name>")`` on import, and this package imports them
all, so adding a task is adding one module. See :mod:`iicnet.tasks.base` for the contract.

=============  =======================  ==========================================
name           reads (data_prep layout)  images, reference first
=============  =======================  ==========================================
video          davis                    K frames at ``data.step``; middle frame first
stereo         flickr1024               left, right (K = 2)
dualview       div2k                    normal (bicubic LR), zoomed centre (K = 2)
multilayer     matting                  composite, background, fg x alpha [, alpha]
hiding         folder, div2k            cover, then K-1 secret images
grayscale      folder, div2k            the colour image (K = 1, C_e = 1)
rescaling      div2k, folder            the image (K = 1, with downscaling)
=============  =======================  ==========================================

Video at half resolution is the video task with ``model.downscale`` set.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from typing import Any

import torch

from iicnet.formats.shards import read_manifest, read_split
from iicnet.model.config import Config, ConfigError
from iicnet.tasks.base import Sample, SampleError, Task, register, registered

__all__ = ["Sample", "SampleError", "Task", "check_shards", "evaluation_items",
           "get_task", "natural_order", "register", "task_names"]

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")


def task_names() -> list[str]:
    return sorted(registered())


def get_task(cfg: Config) -> Task:
    """The task named by ``cfg.data.task``, checked against the rest of the config."""
    tasks = registered()
    if cfg.data.task not in tasks:
        raise ConfigError(f"data.task: unknown task {cfg.data.task!r} "
                          f"(known: {', '.join(sorted(tasks))})")
    return tasks[cfg.data.task](cfg)


def natural_order(task: Task, k: int) -> tuple[list[int], list[str]]:
    """``(order, names)``: ``order[i]`` is the natural position (time order for a clip) of
    the image at stack position ``i``, and ``names`` the K image names in natural order, the
    order users give and get images in."""
    order = list(getattr(task, "order", range(k)))
    names = [""] * k
    for stack_index, natural in enumerate(order):
        names[natural] = task.output_names[stack_index]
    return order, names


def evaluation_items(source: str, cfg: Config, split: str
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images, reference)`` of every window of every sample of ``split``, in shard
    order, cropped as for validation (``train=False``): what ``iicnet eval`` scores.

    Raises ``ConfigError`` when ``source`` holds shards of a layout the task does not read,
    and ``FileNotFoundError`` / ``ValueError`` for a missing or damaged manifest.
    """
    check_shards(source, cfg, split)
    yield from get_task(cfg).items(read_split(source, split), None, train=False)


def check_shards(source: str, cfg: Config, split: str) -> dict[str, Any]:
    """The manifest of ``source``, checked to hold shards ``cfg``'s task reads and a
    ``split``. Raises ``ConfigError`` (wrong layout), ``FileNotFoundError`` (no manifest) or
    ``ValueError`` (damaged manifest, no such split), each naming the place."""
    manifest = read_manifest(source)
    get_task(cfg).check_source(manifest["source"], source)
    if split not in manifest["splits"]:
        raise ValueError(f"{source}: no split {split!r} (splits: "
                         f"{', '.join(manifest['splits'])})")
    return manifest
