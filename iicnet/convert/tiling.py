"""The tile grid large images are cut into, the context (halo) each tile is computed with,
and the progress bar shown while walking it."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_TILE = 512
"""Largest tile side in pixels unless the user says otherwise."""
MIN_TILE = 64
"""Smaller tiles restore badly: their borders dominate."""
DEFAULT_HALO = 16
"""Pixels of context computed around each tile and then thrown away. The network's
receptive field is far wider (every 3x3 convolution adds one pixel; 10 coupling blocks reach
over 100 pixels), but little of it matters: on the authors' trained st-06 model (video K=3,
x2, 10 blocks) and a real photo cut into 64-pixel tiles, halo 0 leaves restored values up to
145 levels off on 15% of them, halo 8 up to 4 levels on 2.5%, halo 16 an embedding equal to
the untiled one and restored values at most 1 level off on 0.013% (rounding), measured with
``bench/inference.py --halo`` (the curve: ``bench/results/halo.json``)."""


def tile_bounds(length: int, tile: int, multiple: int) -> list[int]:
    """Boundaries ``[0, ..., length]`` of near-equal tiles of at most ``tile`` pixels, each a
    multiple of ``multiple`` (``length`` must be one); ``tile`` 0: one tile."""
    if tile <= 0 or length <= tile:
        return [0, length]
    count = math.ceil(length / (tile - tile % multiple or multiple))
    units = length // multiple
    return [multiple * (units * i // count) for i in range(count + 1)]


def halo_for(halo: int, multiple: int) -> int:
    """``halo`` rounded up to a multiple of ``multiple``, so windows stay on the model's grid."""
    if halo < 0:
        raise ValueError(f"halo {halo}: must be 0 or more pixels")
    return -(-halo // multiple) * multiple


@dataclass(frozen=True)
class Span:
    """One tile along one axis: the window computed, ``[start, stop)``, and the part of it
    kept, ``[start + keep0, start + keep1)`` (the tile itself)."""

    start: int
    stop: int
    keep0: int
    keep1: int

    @property
    def tile(self) -> tuple[int, int]:
        return self.start + self.keep0, self.start + self.keep1

    def scaled(self, s: int) -> Span:
        """The same span in a grid ``s`` times coarser (the embedding's)."""
        return Span(self.start // s, self.stop // s, self.keep0 // s, self.keep1 // s)


def spans(bounds: list[int], halo: int) -> list[Span]:
    """Each tile of ``bounds`` widened by ``halo`` on both sides, clipped to the image: at an
    image border the window sees the same zero padding the whole image would."""
    length = bounds[-1]
    out = []
    for a, b in zip(bounds, bounds[1:]):
        start, stop = max(0, a - halo), min(length, b + halo)
        out.append(Span(start, stop, a - start, b - start))
    return out


def progress_bar(items: Iterable, desc: str, enabled: bool, unit: str = "tile",
                 total: int | None = None) -> Iterable:
    """``items`` behind a progress bar on stderr, shown only when stderr is a terminal."""
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit=unit, total=total or None, leave=False, disable=None)
