"""Grayscale (supplement): one colour image in a 1-channel embedding (its BT.601 luma)."""

from __future__ import annotations

import numpy as np

from iicnet.model.config import ConfigError
from iicnet.tasks.base import Sample, Task, decode, register


@register("grayscale")
class Grayscale(Task):
    sources = ("folder", "div2k")
    output_names = ["color"]

    def check(self) -> None:
        self.need_images(1, "one colour image")
        if self.cfg.model.embed_channels != 1:
            raise ConfigError(f"model.embed_channels: the grayscale task embeds into 1 "
                              f"channel, got {self.cfg.model.embed_channels}")

    def load(self, sample: Sample, index: int) -> list[np.ndarray]:
        return [decode(sample, "image")]
