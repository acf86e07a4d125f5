"""Video: K frames ``data.step`` apart, from DAVIS clips (one clip is one shard sample).

Window ``i`` holds frames ``i, i+step, ..., i+step*(K-1)``, so a clip of n frames gives
``max(0, n - step*(K-1))`` windows (a window starts at every frame f with f + step*(K-1)
inside the clip). The stack is the middle frame (position K//2 of the window: the later of
the two middles for even K) first, then the other frames in time order; ``output_names``
give each image's position relative to the middle: ``frame_0, frame_-2, frame_-1, frame_+1,
frame_+2`` for K=5. With ``model.downscale`` set this is video at half resolution.
"""

from __future__ import annotations

import numpy as np

from iicnet.model.config import ConfigError
from iicnet.tasks.base import Sample, Task, decode, forget, register


@register("video")
class Video(Task):
    sources = ("davis",)

    def check(self) -> None:
        if self.num_images < 2:
            raise ConfigError(f"model.num_images: the video task needs at least 2 frames, "
                              f"got {self.num_images}")
        self.step = self.cfg.data.step
        middle = self.num_images // 2
        self.order = [middle] + [j for j in range(self.num_images) if j != middle]

    @property
    def output_names(self) -> list[str]:
        middle = self.num_images // 2
        return [f"frame_{j - middle:+d}" if j != middle else "frame_0" for j in self.order]

    @staticmethod
    def frames(sample: Sample) -> list[str]:
        """The clip's frame entries in time order (``00000.jpg``, ``00001.jpg``, ...)."""
        return sorted(k for k in sample if k[:1].isdigit())

    def windows(self, sample: Sample) -> int:
        return max(0, len(self.frames(sample)) - self.step * (self.num_images - 1))

    def load(self, sample: Sample, index: int) -> list[np.ndarray]:
        frames = self.frames(sample)
        picked = [frames[index + self.step * j] for j in self.order]
        arrays = [decode(sample, name) for name in picked]
        forget(sample, frames[:index + 1])
        return arrays
