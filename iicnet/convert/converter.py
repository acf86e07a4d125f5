"""Using a trained model on your own images: ``iicnet.load(MODEL)`` -> :class:`Converter`.

::

    import iicnet
    conv = iicnet.load("models:/iicnet-video@champion")   # or a checkpoint directory
    png = conv.embed(frames)          # K (H, W, 3) uint8 arrays, natural order -> PNG bytes
    frames = conv.restore(png)        # -> K (H, W, 3) uint8 arrays, the same order

*Natural order* is the order a person gives the images in: time order for a clip (the
converter moves the middle frame to the front, as the model expects), left then right for
stereo, normal then zoomed for dual-view, cover first for hiding. ``conv.names`` names them.

Any size works. The images are padded at the bottom and right (edge pixels repeated) to the
model's multiple and cropped back after restoring. Large images are cut into a grid of tiles
of at most ``tile`` x ``tile`` pixels (default :data:`DEFAULT_TILE`). Each tile is encoded
and decoded on a window enlarged by ``halo`` pixels of context on every side (clipped to the
image; default :data:`DEFAULT_HALO`) and only the tile's own part is kept, so a tiled result
equals the untiled one to within rounding, without seams, while memory is bounded by one
window of (tile + 2 halo)^2 pixels whatever the image size. The grid and the halo are
recorded in the PNG and restoring uses the same ones (an embedding written before the halo
existed records none, and is restored tile by tile as it was made). Tile sides are
near-equal multiples of the model's multiple (a 1920x1080 frame becomes 4 x 3 tiles of
480x360). Measured peak memory for one 512x512 tile of the published video K=5 design
(float32, CPU, no halo): about 1.4 GiB above the loaded model, growing with the window's area
and with K; a 1920x1080 K=5 clip in one piece would need about 11 GiB. ``tile=0`` turns
tiling off (what the paper's tables were measured with, and what ``iicnet eval`` does).

``engine`` chooses what runs the network: torch, or OpenVINO on the CPU (see
:mod:`iicnet.convert.engine`); ``auto`` takes OpenVINO on the CPU when it is installed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from iicnet.convert import engine as engines
from iicnet.convert.tiling import (
    DEFAULT_HALO,
    DEFAULT_TILE,
    MIN_TILE,
    Span,
    halo_for,
    progress_bar,
    spans,
    tile_bounds,
)
from iicnet.formats import embedding_png
from iicnet.formats.embedding_png import EmbeddingFileError, EmbeddingInfo
from iicnet.formats.imagefiles import InputError, check_same_size
from iicnet.model import IICNet
from iicnet.model.config import Config


class MismatchError(EmbeddingFileError):
    """An embedding was made by another model than the one asked to restore it."""


class UncheckedEmbedding(UserWarning):
    """An embedding without iicnet metadata (a plain PNG, e.g. from the authors' official
    code) is restored without checking that this model made it."""


class RobustRestore(UserWarning):
    """A JPEG re-encoding of an embedding (or a PNG whose pixels changed) is restored by a
    model trained through JPEG (``distortion.kind: jpeg``), without ``allow_lossy``."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model came from, for messages and the embedding's provenance."""

    uri: str
    """What the user gave: a model URI or a checkpoint directory."""
    name: str
    """Registered model name, or the checkpoint directory."""
    version: str = ""
    """Registry version, or ``""`` where there is none."""


def weights_fingerprint(model: torch.nn.Module) -> str:
    """The first 16 hex digits of a SHA-256 over the weights (names, shapes, values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(t.shape)};".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()[:16]


class Converter:
    """A model ready to embed K images into one picture and to restore them from it.

    ``embed`` / ``restore`` take and return uint8 numpy arrays ``(H, W, 3)`` in natural
    order (see the module docstring). Build one with :func:`iicnet.load`.
    """

    def __init__(self, model: IICNet, config: Config, source: ModelSource, *,
                 device: torch.device | str = "cpu", tile: int = DEFAULT_TILE,
                 progress: bool = False, engine: str = "auto", halo: int = DEFAULT_HALO):
        from iicnet.tasks import get_task, natural_order

        if tile and tile < MIN_TILE:
            raise InputError(f"--tile {tile}: tiles smaller than {MIN_TILE} pixels restore "
                             "badly; use at least " f"{MIN_TILE}, or 0 for no tiling")
        self.device = torch.device(device)
        self.fingerprint = weights_fingerprint(model)
        self.model = model.to(self.device).eval()
        self.config, self.source = config, source
        self.tile, self.progress = tile, progress
        if halo < 0:
            raise InputError(f"halo {halo}: must be 0 or more pixels")
        self.halo = halo_for(halo, self.model.multiple)
        self.engine = engines.make(engine, self.model, self.device, self.fingerprint)
        task = get_task(config)
        self.task = task.name
        self.order, self.names = natural_order(task, config.model.num_images)
        """``order[i]``: the natural position of the image at stack position ``i``."""

    @property
    def stack_names(self) -> list[str]:
        """The images' names in stack order: the reference first."""
        return [self.names[position] for position in self.order]

    @property
    def num_images(self) -> int:
        return self.config.model.num_images

    @property
    def scale(self) -> int:
        return self.model.scale

    @property
    def multiple(self) -> int:
        return self.model.multiple

    def describe(self) -> str:
        version = f" version {self.source.version}" if self.source.version else ""
        return f"{self.source.name}{version}"

    # -- the model on a tile grid -------------------------------------------------------

    def encode_stack(self, x: torch.Tensor, rows: list[int], cols: list[int],
                     halo: int | None = None) -> torch.Tensor:
        """``(K, C, H, W)`` uint8 in stack order -> ``(C_e, H/s, W/s)`` uint8, tile by tile on
        the grid ``rows`` x ``cols`` (boundaries in input pixels), each computed with ``halo``
        pixels of context (default: this converter's)."""
        s = self.scale
        out = torch.empty((self.config.model.embed_channels, rows[-1] // s, cols[-1] // s),
                          dtype=torch.uint8)
        for rs, cs in self._grid(rows, cols, halo, "embedding"):
            window = x[:, :, rs.start:rs.stop, cs.start:cs.stop][None].to(self.device)
            embedding = self._colour(self.engine.encode(self._colour(window, 2)), 1)[0].cpu()
            r, c = rs.scaled(s), cs.scaled(s)
            out[:, slice(*r.tile), slice(*c.tile)] = embedding[:, r.keep0:r.keep1,
                                                               c.keep0:c.keep1]
        return out

    def decode_stack(self, e: torch.Tensor, rows: list[int], cols: list[int],
                     halo: int | None = None) -> torch.Tensor:
        """``(C_e, H/s, W/s)`` uint8 -> ``(K, C, H, W)`` uint8 in stack order, on the grid and
        with the halo the embedding was made with."""
        s = self.scale
        out = torch.empty((self.num_images, self.config.model.image_channels, rows[-1],
                           cols[-1]), dtype=torch.uint8)
        for rs, cs in self._grid(rows, cols, halo, "restoring"):
            r, c = rs.scaled(s), cs.scaled(s)
            window = e[:, r.start:r.stop, c.start:c.stop][None].to(self.device)
            images = self._colour(self.engine.decode(self._colour(window, 1)), 2)[0].cpu()
            out[:, :, slice(*rs.tile), slice(*cs.tile)] = images[:, :, rs.keep0:rs.keep1,
                                                                 cs.keep0:cs.keep1]
        return out

    def _colour(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """RGB <-> BGR along ``dim`` for a model with ``channel_order: bgr`` (an imported
        official model; see :mod:`iicnet.formats.official`); 1-channel tensors stay."""
        if self.config.model.channel_order != "bgr" or t.shape[dim] != 3:
            return t
        return t.flip(dim)

    def _grid(self, rows: list[int], cols: list[int], halo: int | None, desc: str
              ) -> Iterable[tuple[Span, Span]]:
        halo = self.halo if halo is None else halo
        if halo % self.scale:
            raise ValueError(f"halo {halo}: not a multiple of the model's scale {self.scale}")
        cells = [(r, c) for r in spans(rows, halo) for c in spans(cols, halo)]
        return progress_bar(cells, desc, self.progress and len(cells) > 1)

    # -- embedding ---------------------------------------------------------------------

    def check_images(self, images: Sequence[np.ndarray] | np.ndarray,
                     labels: Sequence[str] | None = None) -> list[np.ndarray]:
        """Validate K (H, W, 3) uint8 images; raise :class:`InputError` naming the culprit."""
        images = list(images)
        labels = list(labels) if labels is not None else [f"image {i}"
                                                          for i in range(len(images))]
        self.check_count(labels)
        for image, label in zip(images, labels):
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
                raise InputError(f"{label}: expected a uint8 numpy array, got "
                                 f"{getattr(image, 'dtype', type(image).__name__)}")
            if image.ndim != 3 or image.shape[2] != self.config.model.image_channels:
                raise InputError(f"{label}: expected (H, W, {self.config.model.image_channels})"
                                 f" pixels, got shape {image.shape}")
        check_same_size(images, labels)
        return images

    def check_count(self, labels: Sequence[str]) -> None:
        """Raise :class:`InputError` unless ``labels`` name exactly K images."""
        if len(labels) != self.num_images:
            got = f" ({', '.join(labels)})" if 0 < len(labels) <= 12 else ""
            raise InputError(
                f"{self.describe()} embeds {self.num_images} images ({', '.join(self.names)}; "
                f"task {self.task}), but {len(labels)} were given{got}"
            )

    def embed_pixels(self, images: Sequence[np.ndarray] | np.ndarray, *,
                     labels: Sequence[str] | None = None, fps: float | None = None
                     ) -> tuple[np.ndarray, EmbeddingInfo]:
        """The embedding ``(H', W', C_e)`` uint8 and the metadata its PNG carries."""
        images = self.check_images(images, labels)
        height, width = images[0].shape[:2]
        m = self.multiple
        pad = (-height % m, -width % m)
        stack = np.stack([images[i] for i in self.order])
        stack = np.pad(stack, ((0, 0), (0, pad[0]), (0, pad[1]), (0, 0)), mode="edge")
        rows = tile_bounds(height + pad[0], self.tile, m)
        cols = tile_bounds(width + pad[1], self.tile, m)
        out = self.encode_stack(torch.from_numpy(stack).permute(0, 3, 1, 2), rows, cols,
                                self.halo)
        info = self._info([height, width], list(pad), rows, cols, fps)
        return out.permute(1, 2, 0).numpy(), info

    def _info(self, size: list[int], padding: list[int], rows: list[int], cols: list[int],
              fps: float | None = None) -> EmbeddingInfo:
        return EmbeddingInfo(
            model=self.source.name, model_version=self.source.version,
            weights=self.fingerprint, task=self.task, num_images=self.num_images,
            embed_channels=self.config.model.embed_channels, scale=self.scale, size=size,
            padding=padding, tile_rows=rows, tile_cols=cols, names=self.names, fps=fps,
            halo=self.halo,
            distortion=({"kind": "jpeg", "quality": list(self.jpeg_quality)}
                        if self.jpeg_quality else {"kind": "off"}),
        )

    @property
    def jpeg_quality(self) -> tuple[int, int] | None:
        """The JPEG quality range the model was trained through, or None (not trained for
        JPEG: a lossy embedding is refused unless ``allow_lossy``)."""
        d = self.config.distortion
        return (d.quality[0], d.quality[1]) if d.kind == "jpeg" else None

    def embed(self, images: Sequence[np.ndarray] | np.ndarray, *, as_png: bool = True,
              fps: float | None = None) -> bytes | np.ndarray:
        """K images -> PNG bytes carrying the provenance (or the ``(H', W', C_e)`` pixels)."""
        pixels, info = self.embed_pixels(images, fps=fps)
        return embedding_png.encode(pixels, info) if as_png else pixels

    # -- restoring ---------------------------------------------------------------------

    def check_info(self, info: EmbeddingInfo, where: str) -> None:
        """Raise :class:`MismatchError` unless this model made the embedding."""
        mine = (self.task, self.num_images, self.config.model.embed_channels, self.scale)
        theirs = (info.task, info.num_images, info.embed_channels, info.scale)
        if mine != theirs:
            raise MismatchError(
                f"{where}: made by {info.describe_model()} for task {info.task} with "
                f"K={info.num_images}, but {self.describe()} is for task {self.task} with "
                f"K={self.num_images}; restore it with the model that made it"
            )
        if info.weights != self.fingerprint:
            raise MismatchError(
                f"{where}: made by {info.describe_model()}, but {self.describe()} has other "
                f"weights ({self.fingerprint}); only the model that made an embedding can "
                "restore it: pass --model with that one"
            )

    def default_info(self, pixels: np.ndarray) -> EmbeddingInfo:
        """The geometry assumed for an embedding without metadata: no padding, and the tile
        grid this converter would have used for an input of that size."""
        height, width = pixels.shape[0] * self.scale, pixels.shape[1] * self.scale
        return self._info([height, width], [0, 0], tile_bounds(height, self.tile, self.multiple),
                          tile_bounds(width, self.tile, self.multiple))

    def read_embedding(self, embedding: bytes | str | Path | np.ndarray, *,
                       allow_lossy: bool = False) -> tuple[np.ndarray, EmbeddingInfo]:
        """Pixels and metadata of PNG bytes, a file, or raw ``(H', W', C_e)`` pixels; the
        metadata is checked against this model."""
        if isinstance(embedding, np.ndarray):
            if embedding.dtype != np.uint8 or embedding.ndim != 3:
                raise InputError(f"embedding: expected (H, W, C_e) uint8 pixels, got "
                                 f"{embedding.dtype} {embedding.shape}")
            pixels, info, where = embedding, None, "embedding"
        else:
            where = "embedding" if isinstance(embedding, bytes | bytearray) else str(embedding)
            data = (bytes(embedding) if isinstance(embedding, bytes | bytearray)
                    else embedding_png.read_bytes(embedding))
            pixels, info, allow_lossy = self._decode(data, where, allow_lossy)
        if info is None:
            plain = not allow_lossy and not isinstance(embedding, np.ndarray)
            pixels = self._match_channels(pixels, where, strict=plain)
            info = self.default_info(pixels)
            if plain:
                self._warn_unchecked(info, where)
        self.check_info(info, where)
        return pixels, info

    def _decode(self, data: bytes, where: str, allow_lossy: bool
                ) -> tuple[np.ndarray, EmbeddingInfo | None, bool]:
        """Pixels, metadata, and whether they were taken although lossy: a model trained
        through JPEG takes a JPEG or a changed PNG with a :class:`RobustRestore` note."""
        trained = self.jpeg_quality
        if trained is None:
            return *embedding_png.decode(data, where, allow_lossy=allow_lossy), allow_lossy
        try:
            return *embedding_png.decode(data, where), False
        except embedding_png.LossyEmbeddingError as exc:
            if exc.file_format not in ("JPEG", "PNG") and not allow_lossy:
                raise
            pixels, info = embedding_png.decode(data, where, allow_lossy=True)
            if exc.file_format in ("JPEG", "PNG"):
                self._note_robust(exc, where, trained)
            return pixels, info, True

    def _note_robust(self, exc: embedding_png.LossyEmbeddingError, where: str,
                     trained: tuple[int, int]) -> None:
        import warnings

        low, high = trained
        if exc.file_format == "PNG":
            what, unchecked = "pixels changed after iicnet wrote them", ""
        else:
            what = "a JPEG" + (f" at quality {exc.quality}" if exc.quality is not None else "")
            unchecked = ("; a JPEG keeps no iicnet metadata, so it is not checked that this "
                         "model made it")
        below = (f" ({exc.quality} is below it: expect a larger loss)"
                 if exc.quality is not None and exc.quality < low else "")
        warnings.warn(RobustRestore(
            f"{where}: {what}, restored because {self.describe()} was trained to restore from "
            f"JPEG at quality {low}..{high}{below}{unchecked}"), stacklevel=4)

    def _warn_unchecked(self, info: EmbeddingInfo, where: str) -> None:
        import warnings

        height, width = info.size
        tiles = (len(info.tile_rows) - 1) * (len(info.tile_cols) - 1)
        grid = (f" on a grid of {tiles} tiles (--tile 0 restores it in one piece, as the "
                "official code makes embeddings)" if tiles > 1 else "")
        warnings.warn(UncheckedEmbedding(
            f"{where}: no iicnet metadata, so it could not be checked against "
            f"{self.describe()}; restoring it as {self.num_images} images of "
            f"{width}x{height}{grid}"), stacklevel=3)

    def _match_channels(self, pixels: np.ndarray, where: str, strict: bool = False
                        ) -> np.ndarray:
        """Pixels with this model's embedding channels. ``strict`` (a plain PNG): a channel
        count other than the model's is an error; else grey and RGB are converted."""
        want = self.config.model.embed_channels
        if pixels.shape[2] == want:
            return pixels
        if strict:
            kind = {1: "grey", 3: "RGB"}.get(pixels.shape[2], f"{pixels.shape[2]}-channel")
            raise InputError(f"{where}: a {kind} image, but {self.describe()} makes "
                             f"{want}-channel embeddings ({'grey' if want == 1 else 'RGB'}); "
                             "is it the embedding of another model?")
        if want == 1 and pixels.shape[2] == 3:
            luma = pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]
        if want == 3 and pixels.shape[2] == 1:
            return np.repeat(pixels, 3, axis=2)
        raise InputError(f"{where}: {pixels.shape[2]} channels; this model's embeddings "
                         f"have {want}")

    def restore_pixels(self, pixels: np.ndarray, info: EmbeddingInfo) -> list[np.ndarray]:
        """Decode checked embedding pixels on the recorded tile grid, crop, natural order."""
        e = torch.from_numpy(np.require(pixels, requirements=["C", "W"])).permute(2, 0, 1)
        out = self.decode_stack(e, info.tile_rows, info.tile_cols, info.halo)
        k = self.num_images
        height, width = info.size
        stack = out[:, :, :height, :width].permute(0, 2, 3, 1).numpy()
        natural: list[np.ndarray] = [np.empty(0, np.uint8)] * k
        for stack_index, position in enumerate(self.order):
            natural[position] = np.ascontiguousarray(stack[stack_index])
        return natural

    def restore(self, embedding: bytes | str | Path | np.ndarray, *,
                allow_lossy: bool = False) -> list[np.ndarray]:
        """An embedding (PNG bytes, a file path, or raw pixels) -> K (H, W, 3) uint8 images.

        Raw pixels carry no metadata: they are assumed unpadded and tiled as this converter
        tiles. A JPEG (or a PNG whose pixels changed) raises unless ``allow_lossy``, or
        unless the model was trained through JPEG (:attr:`jpeg_quality`), which restores it
        with a :class:`RobustRestore` warning naming the trained quality range.
        """
        pixels, info = self.read_embedding(embedding, allow_lossy=allow_lossy)
        return self.restore_pixels(pixels, info)
