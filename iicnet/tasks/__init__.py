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

from iicnet.config import Config, ConfigError
from iicnet.tasks.base import Sample, SampleError, Task, register, registered

__all__ = ["Sample", "SampleError", "Task", "get_task", "register", "task_names"]

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
