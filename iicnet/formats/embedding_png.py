"""The embedding file: an ordinary PNG whose text chunks say how to restore it.

``iicnet embed`` writes the embedding's pixels as an 8-bit RGB PNG (grey for a 1-channel
embedding) with one ``tEXt`` chunk per field of :class:`EmbeddingInfo`, keyed
``iicnet:<field>`` and holding JSON, so ``exiftool`` or ``identify -verbose`` show them too:

==================  =====================================================================
``format``          format version (:data:`FORMAT_VERSION`); a newer file is refused
``model``           registered model name (``iicnet-video``), or the checkpoint's path
``model_version``   registry version (``"3"``), or ``""`` for a local checkpoint
``weights``         fingerprint of the weights (:func:`iicnet.convert.weights_fingerprint`):
                    what ``restore`` checks, since only the same weights can invert
``task``, ``num_images``, ``embed_channels``, ``scale``
                    what the model embeds; ``restore`` checks them against its model
``size``            the inputs' original ``[height, width]``
``padding``         ``[bottom, right]`` pixels added to reach the model's multiple
``tile_rows``       row boundaries of the tile grid in input pixels, ``[0, ..., padded H]``
``tile_cols``       column boundaries, ``[0, ..., padded W]``
``names``           the K image names, in the order they were given
``pixels``          SHA-256 (first 16 hex digits) of the embedding's pixel bytes: a file
                    whose pixels changed after writing (lossy re-compression, editing) is
                    caught before it is restored into garbage
``fps``             frames per second of a source video, or null
``distortion``      what the model was trained to survive: ``{"kind": "jpeg", "quality":
                    [low, high]}`` for a model trained through JPEG at qualities low..high
                    (it restores a JPEG re-encoding), ``{"kind": "off"}`` for one trained
                    without; absent in files written before it was recorded
``halo``            pixels of context each tile was computed with (a multiple of
                    ``scale``); restoring uses the same; absent (0) in files written
                    before tiles had context
==================  =====================================================================

Writes are atomic (a temporary name, then a rename), so a failed ``embed`` leaves no file.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from iicnet import storage
from iicnet.formats.imagefiles import UndecodableImage, open_image

FORMAT_VERSION = 1
PREFIX = "iicnet:"


class EmbeddingFileError(ValueError):
    """A file is not an embedding this code can restore; the message says why."""


class LossyEmbeddingError(EmbeddingFileError):
    """The embedding was re-compressed or edited: restoring it is possible but degraded.

    ``file_format`` is what the file is (``"JPEG"``, ``"WEBP"``, or ``"PNG"`` for a PNG whose
    pixels changed); ``quality`` the JPEG quality its tables match (:func:`jpeg_quality`),
    else None."""

    def __init__(self, message: str, file_format: str = "", quality: int | None = None):
        super().__init__(message)
        self.file_format, self.quality = file_format, quality


@dataclass
class EmbeddingInfo:
    """What an embedding PNG carries besides its pixels (see the module docstring)."""

    model: str
    model_version: str
    weights: str
    task: str
    num_images: int
    embed_channels: int
    scale: int
    size: list[int]
    padding: list[int]
    tile_rows: list[int]
    tile_cols: list[int]
    names: list[str]
    pixels: str = ""
    fps: float | None = None
    format: int = FORMAT_VERSION
    distortion: dict | None = None
    """``{"kind": "jpeg", "quality": [low, high]}`` or ``{"kind": "off"}``; None: unknown
    (a file written before this field existed)."""
    halo: int = 0
    """Context around each tile, in input pixels; 0 in files written before it existed."""

    @property
    def padded_size(self) -> tuple[int, int]:
        return self.tile_rows[-1], self.tile_cols[-1]

    @property
    def jpeg_quality(self) -> tuple[int, int] | None:
        """The JPEG quality range the model was trained through, or None."""
        d = self.distortion
        return tuple(d["quality"]) if d is not None and d["kind"] == "jpeg" else None

    def describe_model(self) -> str:
        version = f" version {self.model_version}" if self.model_version else ""
        return f"{self.model or 'an unnamed model'}{version} (weights {self.weights})"


def pixel_digest(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()[:16]


def to_image(pixels: np.ndarray) -> Image.Image:
    """``(H, W, C_e)`` uint8 -> a PIL image (RGB, or L for one channel)."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
        raise ValueError(f"embedding pixels must be uint8 (H, W, 1 or 3), got {pixels.dtype} "
                         f"{pixels.shape}")
    return Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)


def encode(pixels: np.ndarray, info: EmbeddingInfo) -> bytes:
    """PNG bytes of ``(H, W, C_e)`` uint8 pixels with ``info`` in its text chunks."""
    info.pixels = pixel_digest(pixels)
    chunks = PngImagePlugin.PngInfo()
    for key, value in asdict(info).items():
        chunks.add_text(PREFIX + key, json.dumps(value))
    chunks.add_text("Software", "iicnet")
    chunks.add_text("Description", f"{info.num_images} images embedded by IICNet "
                                   f"({info.task}); `iicnet restore` brings them back")
    out = io.BytesIO()
    to_image(pixels).save(out, format="PNG", pnginfo=chunks)
    return out.getvalue()


def write(path: str | Path, pixels: np.ndarray, info: EmbeddingInfo) -> None:
    """Write the embedding PNG atomically (a local path or ``s3://`` URL)."""
    storage.write_bytes(path, encode(pixels, info))


def _parse_info(text: dict[str, str], where: str) -> EmbeddingInfo:
    raw = {k[len(PREFIX):]: v for k, v in text.items() if k.startswith(PREFIX)}
    if not raw:
        raise EmbeddingFileError(
            f"{where}: not an IICNet embedding (it has no iicnet metadata; a program that "
            "re-saved it may have dropped it)"
        )
    try:
        values = {k: json.loads(v) for k, v in raw.items()}
    except json.JSONDecodeError as exc:
        raise EmbeddingFileError(f"{where}: damaged iicnet metadata ({exc})") from exc
    version = values.get("format")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise EmbeddingFileError(f"{where}: embedding format {version!r}; this iicnet reads "
                                 f"format {FORMAT_VERSION} and older: upgrade iicnet")
    known = {f.name for f in fields(EmbeddingInfo)}
    missing = sorted(f.name for f in fields(EmbeddingInfo)
                     if f.name not in values and f.default is MISSING)
    if missing:
        raise EmbeddingFileError(f"{where}: iicnet metadata lacks {', '.join(missing)}")
    _check_fields(values, where)
    info = EmbeddingInfo(**{k: v for k, v in values.items() if k in known})
    _check_distortion(info.distortion, where)
    try:
        _check_geometry(info, where)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, EmbeddingFileError):
            raise
        raise EmbeddingFileError(f"{where}: damaged iicnet metadata ({exc})") from exc
    return info


MAX_SIDE = 1 << 16
"""Largest image side a file may claim (PNG itself allows 2**31 - 1)."""
MAX_FPS = 1000.0


def _int_in(low: int, high: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _ints(count: int, low: int, high: int):
    return lambda v: (isinstance(v, list) and len(v) == count
                      and all(_int_in(low, high)(x) for x in v))


def _text(v: object) -> bool:
    return isinstance(v, str) and len(v) <= 4096


def _fps(v: object) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)
                         and math.isfinite(v) and 0 < v <= MAX_FPS)


FIELD_CHECKS = {
    "model": (_text, "a string"),
    "model_version": (_text, "a string"),
    "weights": (_text, "a string"),
    "task": (_text, "a task name"),
    "num_images": (_int_in(1, 64), "a whole number 1..64"),
    "embed_channels": (lambda v: v in (1, 3) and not isinstance(v, bool), "1 or 3"),
    "scale": (lambda v: v in (1, 2, 4, 8) and not isinstance(v, bool), "1, 2, 4 or 8"),
    "size": (_ints(2, 1, MAX_SIDE), f"[height, width], each 1..{MAX_SIDE}"),
    "padding": (_ints(2, 0, MAX_SIDE), f"[bottom, right], each 0..{MAX_SIDE}"),
    "names": (lambda v: isinstance(v, list) and all(_text(x) for x in v), "a list of names"),
    "pixels": (_text, "a hex digest"),
    "fps": (_fps, f"null or a frame rate in (0, {MAX_FPS:g}]"),
}
"""What each scalar field of the metadata may hold; the tile grid, halo and distortion are
checked against each other after these."""


def _check_fields(values: dict, where: str) -> None:
    """Each field's type and range, so an edited file is refused by name instead of failing
    deep inside restoration (``scale: 0`` dividing by zero, ``fps: NaN`` in a video)."""
    for name, (ok, expected) in FIELD_CHECKS.items():
        if name in values and not ok(values[name]):
            shown = repr(values[name])
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise EmbeddingFileError(f"{where}: damaged iicnet metadata ({PREFIX}{name} is "
                                     f"{shown}; expected {expected})")
    names, count = values.get("names"), values.get("num_images")
    if isinstance(names, list) and len(names) != count:
        raise EmbeddingFileError(f"{where}: damaged iicnet metadata ({len(names)} names for "
                                 f"{count} images)")


def _check_distortion(value: object, where: str) -> None:
    if value is None:
        return
    kind = value.get("kind") if isinstance(value, dict) else None
    quality = value.get("quality") if isinstance(value, dict) else None
    ok = (kind == "off" and quality is None) or (
        kind == "jpeg" and isinstance(quality, list) and len(quality) == 2
        and all(isinstance(q, int) and not isinstance(q, bool) for q in quality)
        and 1 <= quality[0] <= quality[1] <= 100)
    if not ok:
        raise EmbeddingFileError(f"{where}: damaged iicnet metadata (distortion {value!r}; "
                                 'expected {"kind": "off"} or {"kind": "jpeg", "quality": '
                                 "[low, high]})")


def _check_geometry(info: EmbeddingInfo, where: str) -> None:
    def bounds_ok(b: object) -> bool:
        return (isinstance(b, list) and len(b) >= 2 and b[0] == 0
                and all(isinstance(x, int) and x % info.scale == 0 for x in b)
                and all(x < y for x, y in zip(b, b[1:])))

    if not (bounds_ok(info.tile_rows) and bounds_ok(info.tile_cols)):
        raise EmbeddingFileError(f"{where}: damaged iicnet metadata (tile grid "
                                 f"{info.tile_rows} x {info.tile_cols})")
    if not (isinstance(info.halo, int) and info.halo >= 0 and info.halo % info.scale == 0):
        raise EmbeddingFileError(f"{where}: damaged iicnet metadata (halo {info.halo!r})")
    height, width = info.size
    bottom, right = info.padding
    if (height + bottom, width + right) != info.padded_size:
        raise EmbeddingFileError(f"{where}: damaged iicnet metadata (size {info.size} + "
                                 f"padding {info.padding} != tile grid {info.padded_size})")


def decode(data: bytes, where: str, *, allow_lossy: bool = False
           ) -> tuple[np.ndarray, EmbeddingInfo | None]:
    """``(H, W, C_e)`` uint8 pixels and the metadata of an embedding file's bytes.

    The metadata is None for a plain PNG without iicnet text chunks (an embedding saved by
    the authors' official code, or one whose chunks a program dropped): its pixels are
    returned as stored, grey or RGB, and the caller must assume a geometry and cannot check
    the model. Raises :class:`LossyEmbeddingError` for a JPEG (or another non-PNG format)
    and for a PNG whose pixels no longer match their recorded digest, unless
    ``allow_lossy``; then the metadata of a non-PNG is None too. Raises
    :class:`EmbeddingFileError` for anything else that is not an embedding.
    """
    try:
        image = open_image(data)
    except UndecodableImage as exc:
        raise EmbeddingFileError(f"{where}: not an image ({exc})") from exc
    if image.format != "PNG":
        if not allow_lossy:
            quality = jpeg_quality(image)
            at = f" (quality {quality})" if quality is not None else ""
            raise LossyEmbeddingError(
                f"{where}: a {image.format} file{at}, not the PNG that iicnet embed writes. "
                "Lossy re-compression destroys most of what is hidden in the pixels: "
                "restoration quality will drop sharply. Use the original PNG, or pass "
                "--allow-lossy (Python: allow_lossy=True) to restore anyway",
                image.format or "", quality)
        mode = "L" if image.mode in ("L", "LA", "I", "I;16") else "RGB"
        return _pixels(image.convert(mode)), None
    if not any(key.startswith(PREFIX) for key in image.text):
        return _plain_pixels(image, where), None
    info = _parse_info(dict(image.text), where)
    mode = "L" if info.embed_channels == 1 else "RGB"
    pixels = _pixels(image.convert(mode) if image.mode != mode else image)
    expected = (info.padded_size[0] // info.scale, info.padded_size[1] // info.scale)
    if pixels.shape[:2] != expected:
        raise EmbeddingFileError(f"{where}: {pixels.shape[1]}x{pixels.shape[0]} pixels, but "
                                 f"its metadata says {expected[1]}x{expected[0]}; it was "
                                 "cropped or resized after it was written")
    if pixel_digest(pixels) != info.pixels and not allow_lossy:
        raise LossyEmbeddingError(
            f"{where}: its pixels changed after iicnet wrote it (lossy re-compression or "
            "editing): restoration quality will drop. Use the original file, or pass "
            "--allow-lossy (Python: allow_lossy=True) to restore anyway", "PNG")
    return pixels, info


def jpeg_quality(image: Image.Image) -> int | None:
    """The quality (1..100) whose IJG-scaled tables (what libjpeg, Pillow and most encoders
    use) are nearest to a JPEG's luminance table; None for another format or when no quality
    matches within a factor of 1.25 per coefficient (an encoder with its own tables)."""
    tables = getattr(image, "quantization", None)
    if image.format != "JPEG" or not tables or len(tables.get(0, ())) != 64:
        return None
    import torch

    from iicnet.model.modules.jpeg import quant_tables

    luma = torch.tensor(list(tables[0]), dtype=torch.float32).clamp(min=1).log()
    candidates = quant_tables(torch.arange(1, 101))[:, 0].reshape(100, 64).log()
    error = (candidates - luma).abs().mean(1)
    best = int(error.argmin())
    return best + 1 if float(error[best]) < 0.223 else None


def reencode_jpeg(pixels: np.ndarray, quality: int) -> np.ndarray:
    """``(H, W, C_e)`` uint8 pixels after a real JPEG round trip through Pillow at
    ``quality`` (its defaults otherwise: 4:2:0 chroma for RGB), as a chat app or website
    re-encodes a shared PNG."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    out = io.BytesIO()
    to_image(pixels).save(out, format="JPEG", quality=quality)
    with open_image(out.getvalue()) as image:
        return np.array(_pixels(image.convert("L" if pixels.shape[2] == 1 else "RGB")))


_PLAIN_MODES = {"1": "L", "L": "L", "P": "RGB", "RGB": "RGB"}
"""PNG modes a plain embedding may have (8-bit grey or colour, a palette or bilevel image
being the same pixels stored smaller), and what they are read as."""


def _plain_pixels(image: Image.Image, where: str) -> np.ndarray:
    mode = _PLAIN_MODES.get(image.mode)
    if mode is None:
        raise EmbeddingFileError(f"{where}: a {image.mode} PNG without iicnet metadata; an "
                                 "embedding is an 8-bit grey or RGB image (no alpha, no 16-bit)")
    return _pixels(image.convert(mode) if image.mode != mode else image)


def _pixels(image: Image.Image) -> np.ndarray:
    array = np.asarray(image)
    return array[..., None] if array.ndim == 2 else array


def read_bytes(path: str | Path) -> bytes:
    """The bytes of a local file or ``s3://`` object; :class:`EmbeddingFileError` if there
    are none to read."""
    try:
        return storage.read_bytes(path)
    except FileNotFoundError as exc:
        raise EmbeddingFileError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise EmbeddingFileError(f"{path}: a directory, not an embedding PNG") from exc
    except OSError as exc:
        raise EmbeddingFileError(f"{path}: cannot read ({exc})") from exc


def read(path: str | Path, *, allow_lossy: bool = False
         ) -> tuple[np.ndarray, EmbeddingInfo | None]:
    """:func:`decode` a local file or ``s3://`` object."""
    return decode(read_bytes(path), str(path), allow_lossy=allow_lossy)
