"""Rescaling x2 (supplement): one image and its half-size version as the embedding.

The reference is the image bilinear-downsampled by 2 (the shared rule for downscaling
tasks), so ``model.downscale`` must be set.
"""

from __future__ import annotations

import numpy as np

from iicnet.model.config import ConfigError
from iicnet.tasks.base import Sample, Task, decode, register


@register("rescaling")
class Rescaling(Task):
    sources = ("div2k", "folder")
    output_names = ["image"]

    def check(self) -> None:
        self.need_images(1, "one image")
        if self.cfg.model.downscale == "none":
            raise ConfigError("model.downscale: the rescaling task halves the image; set "
                              "'squeeze' (published) or 'haar'")

    def load(self, sample: Sample, index: int) -> list[np.ndarray]:
        return [decode(sample, "image")]
