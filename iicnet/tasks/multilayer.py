"""Multi-layer composition / decomposition from matting triplets (fg, alpha, bg).

Foreground, alpha and background are resized to 256x256 (bilinear), then the images are the
composite ``alpha*fg + (1-alpha)*bg`` (the reference), the background and the foreground
multiplied by its alpha, all rounded to uint8; with ``data.matte`` the alpha matte (as three
equal channels) is a fourth image.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from iicnet.tasks.base import Sample, Task, decode, register

SIZE = 256


def _resized(array: np.ndarray) -> np.ndarray:
    image = Image.fromarray(array).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32)


@register("multilayer")
class MultiLayer(Task):
    sources = ("matting",)

    def check(self) -> None:
        self.matte = self.cfg.data.matte
        if self.matte:
            self.need_images(4, "composite, background, foreground and the alpha matte "
                                "(data.matte is true)")
        else:
            self.need_images(3, "composite, background and foreground; set data.matte for 4")

    @property
    def output_names(self) -> list[str]:
        return ["composite", "background", "foreground"] + (["alpha"] if self.matte else [])

    def load(self, sample: Sample, index: int) -> list[np.ndarray]:
        fg = _resized(decode(sample, "fg"))
        bg = _resized(decode(sample, "bg"))
        alpha = _resized(decode(sample, "alpha", mode="L"))[..., None] / 255.0
        layers = [alpha * fg + (1 - alpha) * bg, bg, alpha * fg]
        if self.matte:
            layers.append(np.repeat(alpha * 255.0, 3, axis=2))
        return [np.clip(np.rint(x), 0, 255).astype(np.uint8) for x in layers]
