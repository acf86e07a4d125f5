"""Embedding and restoring with a loaded model: the tile grid, input checks, the PNG's
metadata, and serving requests. Knows nothing of where the model came from."""

from iicnet.convert.converter import (
    Converter,
    MismatchError,
    ModelSource,
    UncheckedEmbedding,
    weights_fingerprint,
)
from iicnet.convert.engine import ENGINES
from iicnet.convert.tiling import DEFAULT_HALO, DEFAULT_TILE, MIN_TILE, progress_bar, tile_bounds

__all__ = ["DEFAULT_HALO", "DEFAULT_TILE", "ENGINES", "MIN_TILE", "Converter", "MismatchError",
           "ModelSource", "UncheckedEmbedding", "progress_bar", "tile_bounds",
           "weights_fingerprint"]
