"""Hiding: K unrelated images in one; the first (the cover) is the reference.

An item is K consecutive shard samples (``group = K``; the loader merges them, and a last
incomplete group of a loader worker is dropped). The images are unrelated, so each is
cropped on its own: all to the same size (the crop, or the smallest image's sides when one is
smaller), at random places in training and centred in evaluation.
"""

from __future__ import annotations

import numpy as np

from iicnet.model.config import ConfigError
from iicnet.tasks.base import Sample, Task, crop_offset, crop_size, decode, register


@register("hiding")
class Hiding(Task):
    sources = ("folder", "div2k")

    def check(self) -> None:
        if self.num_images < 2:
            raise ConfigError(f"model.num_images: the hiding task needs a cover and at least "
                              f"one secret image, got {self.num_images}")
        self.group = self.num_images

    @property
    def output_names(self) -> list[str]:
        return ["cover"] + [f"secret_{k}" for k in range(1, self.num_images)]

    def load(self, sample: Sample, index: int) -> list[np.ndarray]:
        return [decode(part, "image") for part in sample["parts"]]

    def crop(self, arrays: list[np.ndarray], rng: np.random.Generator | None) -> list[np.ndarray]:
        sizes = [crop_size(a.shape[0], a.shape[1], self.cfg.data.crop, self.factor)
                 for a in arrays]
        ch, cw = min(s[0] for s in sizes), min(s[1] for s in sizes)
        crops = []
        for a in arrays:
            top, left = crop_offset(a.shape[0], ch, rng), crop_offset(a.shape[1], cw, rng)
            crops.append(a[top:top + ch, left:left + cw])
        return crops
