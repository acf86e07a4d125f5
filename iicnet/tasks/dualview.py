"""Dual-view (x2, x4, x8): a normal view and a zoomed view of one DIV2K scene.

With s = ``data.scale``: the normal view is the bicubic low-resolution image (H/s, W/s) -
the shard's ``lr_x{s}`` entry, or made from the HR image with PIL's bicubic filter when the
source had none - and it is the reference. The zoomed view is the centre (H/s, W/s) region
of the HR image (cut to a multiple of s): the centre 1/s of the scene at full resolution,
at the same pixel size.

Crops are scale-aware: the zoomed crop is drawn first (random in training, centred in
evaluation), and the normal crop is centred on the same scene point (clamped to the image),
so the normal crop shows the zoomed crop's content, s times smaller, in its middle.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from iicnet.tasks.base import Sample, Task, crop_offset, crop_size, decode, register


@register("dualview")
class DualView(Task):
    sources = ("div2k",)

    def check(self) -> None:
        self.need_images(2, "a normal and a zoomed view")
        self.scale = self.cfg.data.scale

    @property
    def output_names(self) -> list[str]:
        return ["normal", f"zoom_x{self.scale}"]

    def load(self, sample: Sample, index: int) -> list[np.ndarray]:
        hr = decode(sample, "image")
        height, width = hr.shape[0] // self.scale, hr.shape[1] // self.scale
        hr = hr[:height * self.scale, :width * self.scale]
        if any(k.startswith(f"lr_x{self.scale}.") for k in sample):
            normal = decode(sample, f"lr_x{self.scale}")[:height, :width]
        else:
            small = Image.fromarray(hr).resize((width, height), Image.Resampling.BICUBIC)
            normal = np.asarray(small)
        top, left = self.zoom_origin(height, width)
        return [normal, hr[top:top + height, left:left + width]]

    def zoom_origin(self, height: int, width: int) -> tuple[int, int]:
        """Top-left, in HR pixels, of the zoomed region of an (H/s, W/s) normal view."""
        return (height * self.scale - height) // 2, (width * self.scale - width) // 2

    def crop(self, arrays: list[np.ndarray], rng: np.random.Generator | None) -> list[np.ndarray]:
        normal, zoomed = arrays
        height, width = normal.shape[:2]
        ch, cw = crop_size(height, width, self.cfg.data.crop, self.factor)
        zy, zx = crop_offset(height, ch, rng), crop_offset(width, cw, rng)
        top, left = self.zoom_origin(height, width)
        ny = round((top + zy + ch / 2) / self.scale - ch / 2)
        nx = round((left + zx + cw / 2) / self.scale - cw / 2)
        ny, nx = min(max(ny, 0), height - ch), min(max(nx, 0), width - cw)
        return [normal[ny:ny + ch, nx:nx + cw], zoomed[zy:zy + ch, zx:zx + cw]]
