"""Reading and checking source images: every byte is kept, every pixel is decoded once."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


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
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            width, height = image.size
            mode = image.mode
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # PIL names the in-memory stream in some messages ("<_io.BytesIO object at 0x...>");
        # drop that so the same bad file gives the same reason in every run and manifest.
        reason = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc)).strip()
        raise BadImage(f"does not decode ({reason or type(exc).__name__})") from exc
    return SourceImage(path, data, height, width, mode)
