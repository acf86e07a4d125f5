"""Reading and checking source images: every byte is kept, every pixel is decoded once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from iicnet.formats.imagefiles import IMAGE_SUFFIXES, UndecodableImage, open_image

__all__ = ["IMAGE_SUFFIXES", "BadImage", "SourceImage", "is_image", "read_image"]


class BadImage(Exception):
    """A source image is missing or does not decode; the message says why."""


@dataclass(frozen=True)
class SourceImage:
    path: Path
    data: bytes
    """The file's bytes, unchanged (shards store these, never a re-encoding)."""
    height: int
    width: int
    mode: str

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def suffix(self) -> str:
        """File extension without the dot, lower case (``jpg``), used as the entry suffix."""
        return self.path.suffix.lower().lstrip(".")


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def read_image(path: Path) -> SourceImage:
    """Read and fully decode ``path``: a truncated JPEG or PNG fails here, not in training."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise BadImage("file is missing") from exc
    except OSError as exc:
        raise BadImage(f"cannot read ({exc.strerror})") from exc
    try:
        with open_image(data) as image:
            width, height = image.size
            mode = image.mode
    except UndecodableImage as exc:
        raise BadImage(f"does not decode ({exc})") from exc
    return SourceImage(path, data, height, width, mode)
