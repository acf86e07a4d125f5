"""Stereo: the left and right views of a Flickr1024 pair; the left view is the reference."""

from __future__ import annotations

import numpy as np

from iicnet.tasks.base import Sample, Task, decode, register


@register("stereo")
class Stereo(Task):
    sources = ("flickr1024",)
    output_names = ["left", "right"]

    def check(self) -> None:
        self.need_images(2, "a left and a right view")

    def load(self, sample: Sample, index: int) -> list[np.ndarray]:
        return [decode(sample, "left"), decode(sample, "right")]
