"""The tile grid large images are cut into, and the progress bar shown while walking it."""

from __future__ import annotations

import math
from collections.abc import Iterable

DEFAULT_TILE = 512
"""Largest tile side in pixels unless the user says otherwise."""
MIN_TILE = 64
"""Smaller tiles restore badly: their borders dominate."""


def tile_bounds(length: int, tile: int, multiple: int) -> list[int]:
    """Boundaries ``[0, ..., length]`` of near-equal tiles of at most ``tile`` pixels, each a
    multiple of ``multiple`` (``length`` must be one); ``tile`` 0: one tile."""
    if tile <= 0 or length <= tile:
        return [0, length]
    count = math.ceil(length / (tile - tile % multiple or multiple))
    units = length // multiple
    return [multiple * (units * i // count) for i in range(count + 1)]


def progress_bar(items: Iterable, desc: str, enabled: bool, unit: str = "tile",
                 total: int | None = None) -> Iterable:
    """``items`` behind a progress bar on stderr, shown only when stderr is a terminal."""
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit=unit, total=total or None, leave=False, disable=None)
