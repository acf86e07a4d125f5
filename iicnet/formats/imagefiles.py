"""The user's files: image files, folders, globs and videos in; images and videos out.

Inputs name K images in their natural order (time order for a clip; left then right for a
stereo pair; cover first for hiding): image files, folders (their image files sorted by
name), glob patterns (sorted), or one video file, from which K frames ``step`` apart are
taken around its middle frame. Images are read as 8-bit RGB: EXIF rotation is applied,
greyscale is repeated on three channels, an alpha channel is dropped.

Every problem raises :class:`InputError` naming the file and what was wrong with it.
Video needs PyAV (``pip install av``; its wheels carry FFmpeg).
"""

from __future__ import annotations

import glob
import io
import re
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from iicnet.storage.atomic import adding

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                  ".gif")
"""The file types read as images, here and by ``data_prep`` (lower case)."""
VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}


class InputError(ValueError):
    """A user's input file or argument is unusable; the message names it."""


class UndecodableImage(ValueError):
    """Bytes that do not decode as an image; the message is the reason alone, without a
    file name, and the same in every run (callers add where the bytes came from)."""


def open_image(source: bytes | str | Path) -> Image.Image:
    """Open and fully decode an image file or its bytes (a truncated file fails here).

    Raises :class:`UndecodableImage`; a missing file raises the usual ``OSError``.
    """
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes | bytearray)
                           else source)
        image.load()
        return image
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # PIL names in-memory streams in some messages ("<_io.BytesIO object at 0x...>");
        # drop that so one bad file gives the same reason in every run and manifest.
        reason = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc)).strip()
        reason = re.sub(r"\s*'[^']*'$", "", reason)  # "cannot identify image file '/x/y'"
        raise UndecodableImage(_empty(source) or png_damage(source) or reason
                               or type(exc).__name__) from exc


def _empty(source: bytes | str | Path) -> str | None:
    try:
        size = len(source) if isinstance(source, bytes | bytearray) else Path(source).stat().st_size
    except OSError:
        return None
    return "an empty file (0 bytes)" if size == 0 else None


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_damage(source: bytes | str | Path) -> str | None:
    """What is wrong with a PNG's chunk structure (the first chunk whose CRC fails, or that
    runs past the end of the file), for messages; None for a file that is not a PNG or
    whose chunks are whole (its damage, if any, is elsewhere: the compressed pixels)."""
    try:
        data = source if isinstance(source, bytes | bytearray) else Path(source).read_bytes()
    except OSError:
        return None
    if not data.startswith(PNG_SIGNATURE):
        return None
    at = len(PNG_SIGNATURE)
    while at + 8 <= len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        kind = data[at + 4:at + 8]
        name = kind.decode("latin-1") if kind.isalpha() else repr(bytes(kind))
        end = at + 12 + length
        if end > len(data):
            return (f"a damaged PNG: chunk {name} at byte {at} needs {length} bytes, but the "
                    f"file ends {len(data) - at - 8} bytes in (truncated)")
        if zlib.crc32(data[at + 4:end - 4]) != int.from_bytes(data[end - 4:end], "big"):
            return f"a damaged PNG: chunk {name} at byte {at} fails its CRC check"
        if kind == b"IEND":
            return None
        at = end
    return None


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _folder_images(folder: Path) -> list[Path]:
    found = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise InputError(f"{folder}: a folder with no image files "
                         f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


def expand(inputs: Iterable[str]) -> list[Path]:
    """Files, folders and glob patterns -> the files they name, in order."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(_folder_images(path))
        elif path.exists():
            paths.append(path)
        elif glob.has_magic(item):
            matches = sorted(Path(m) for m in glob.glob(item) if Path(m).is_file())
            if not matches:
                raise InputError(f"{item}: the pattern matches no files")
            paths.extend(matches)
        else:
            raise InputError(f"{item}: no such file or folder")
    return paths


def read_image(path: str | Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB of an image file."""
    try:
        with open_image(path) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                image = Image.fromarray(_to_8_bit(np.asarray(image), image.mode, path))
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file") from exc
    except IsADirectoryError as exc:
        raise InputError(f"{path}: a folder, not an image") from exc
    except PermissionError as exc:
        raise InputError(f"{path}: not readable ({exc.strerror})") from exc
    except UndecodableImage as exc:
        raise InputError(f"{path}: not an image this program can read ({exc})") from exc


def _to_8_bit(array: np.ndarray, mode: str, path: str | Path) -> np.ndarray:
    """Greyscale of more than 8 bits as 8-bit (PIL's convert would clip): 16-bit keeps its
    top 8 bits; 32-bit integers are taken as 8-bit or 16-bit data by their largest value;
    floating point must lie in 0..1 (scaled to 0..255)."""
    if mode == "F":
        finite = np.isfinite(array).all()
        low, high = (float(array.min()), float(array.max())) if finite else (0.0, 0.0)
        if not finite or low < 0 or high > 1:
            found = "NaN or infinite values" if not finite else f"values {low:g}..{high:g}"
            raise InputError(f"{path}: a floating-point image with {found}; this program "
                             "reads floating-point pixels in 0..1 only")
        return np.rint(array * 255).astype(np.uint8)
    wide = array.astype(np.int64)
    if mode == "I":
        low, high = int(wide.min()), int(wide.max())
        if low < 0 or high > 65535:
            raise InputError(f"{path}: a 32-bit integer image with values {low}..{high}; "
                             "this program reads 8-bit or 16-bit pixels only")
        return (wide >> (8 if high > 255 else 0)).astype(np.uint8)
    return (wide >> 8).astype(np.uint8)


def check_same_size(images: list[np.ndarray], names: list[str]) -> None:
    """All images must have the first one's size; the message names the first that differs."""
    height, width = images[0].shape[:2]
    for image, name in zip(images[1:], names[1:]):
        if image.shape[:2] != (height, width):
            raise InputError(
                f"{name}: {image.shape[1]}x{image.shape[0]} pixels, but {names[0]} is "
                f"{width}x{height}; all images of one embedding must have the same size"
            )


def _av():
    try:
        import av
    except ImportError as exc:
        raise InputError("reading or writing video needs PyAV: pip install av") from exc
    return av


def window_indices(frames: int, k: int, step: int) -> list[int]:
    """K frame indices ``step`` apart, centred on the middle frame of ``frames``."""
    span = step * (k - 1)
    if span >= frames:
        raise ValueError(f"{k} frames {step} apart span {span + 1} frames")
    first = min(max(frames // 2 - step * (k // 2), 0), frames - 1 - span)
    return [first + step * j for j in range(k)]


def read_video_window(path: str | Path, k: int, step: int) -> tuple[list[np.ndarray], float]:
    """K RGB frames ``step`` apart around the middle of a video, and its frame rate."""
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(f"{path}: has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 25)
            total = stream.frames or sum(1 for p in container.demux(stream) if p.size)
        try:
            wanted = window_indices(total, k, step)
        except ValueError as exc:
            raise InputError(f"{path}: {total} frames, too short: {exc} (pass a smaller "
                             "--step)") from exc
        frames: list[np.ndarray] = []
        with av.open(str(path)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index in wanted:
                    frames.append(frame.to_ndarray(format="rgb24"))
                if index >= wanted[-1]:
                    break
    except av.error.FFmpegError as exc:
        raise InputError(f"{path}: not a video this program can read ({exc})") from exc
    if len(frames) != k:
        raise InputError(f"{path}: decoded only {len(frames)} of frames {wanted} (the file "
                         "may be truncated)")
    return frames, fps


def write_image(path: Path, image: np.ndarray) -> None:
    """Save ``(H, W, 3)`` (or ``(H, W, 1)``) uint8 as PNG."""
    Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(path, format="PNG")


def write_video(path: Path, frames: list[np.ndarray], fps: float) -> None:
    """Encode RGB frames as H.264 (MPEG-4 part 2 where FFmpeg lacks libx264).

    4:2:0 chroma needs even sides, so an odd last row or column is repeated.
    """
    av = _av()
    height, width = frames[0].shape[:2]
    even_h, even_w = height + height % 2, width + width % 2
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=max(1, round(fps)))
        stream.width, stream.height, stream.pix_fmt = even_w, even_h, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "12"}
        for frame in frames:
            rgb = frame if frame.shape[2] == 3 else np.repeat(frame, 3, axis=2)
            rgb = np.pad(rgb, ((0, even_h - height), (0, even_w - width), (0, 0)), mode="edge")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())


def write_images(directory: Path, files: dict[str, np.ndarray],
                 progress: Callable[[list[str]], Iterable[str]] = iter) -> list[Path]:
    """Write PNGs named by ``files``' keys into ``directory``: all of them or none
    (see :func:`iicnet.storage.atomic.adding`). ``progress`` wraps the name list."""
    try:
        with adding(directory) as staging:
            for name in progress(list(files)):
                write_image(staging / name, files[name])
    except NotADirectoryError as exc:
        raise InputError(str(exc)) from exc
    return [directory / name for name in files]
