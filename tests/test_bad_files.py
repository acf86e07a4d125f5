"""The bad-file table: every kind of damaged, odd or hostile file a user can hand
``iicnet embed`` as an input or ``iicnet restore`` as an embedding.

Refused kinds must end in exit 2 and a message that names the file and the problem, with
no output left behind; accepted kinds (odd but readable formats) must round-trip. Each row
is a kind; the ids say which.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from iicnet.formats import checkpoint
from tests.test_cli import embed, run
from tests.test_convert import photo_clip, tiny_model

H, W = 41, 67


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, cfg = tiny_model()
    return checkpoint.save(tmp_path_factory.mktemp("bad-files") / "ckpt", model, cfg)


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    return photo_clip(3, H, W)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def header_only_png(width: int, height: int) -> bytes:
    """A valid-looking PNG whose header claims ``width`` x ``height`` pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))


def flip(data: bytes, at: int) -> bytes:
    damaged = bytearray(data)
    damaged[at] ^= 0x10
    return bytes(damaged)


def png_bytes(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# -- inputs to embed ------------------------------------------------------------------------

def _write(name: str, data: bytes) -> Callable[[Path, np.ndarray], Path]:
    def make(folder: Path, frame: np.ndarray) -> Path:
        (folder / name).write_bytes(data)
        return folder / name
    return make


def _derived(name: str, build: Callable[[np.ndarray], bytes]) -> Callable[[Path, np.ndarray], Path]:
    def make(folder: Path, frame: np.ndarray) -> Path:
        (folder / name).write_bytes(build(frame))
        return folder / name
    return make


def _saved(name: str, convert: Callable[[np.ndarray], Image.Image], **options
           ) -> Callable[[Path, np.ndarray], Path]:
    def make(folder: Path, frame: np.ndarray) -> Path:
        convert(frame).save(folder / name, **options)
        return folder / name
    return make


REFUSED_INPUTS = {
    "zero-byte": (_write("empty.png", b""), "an empty file (0 bytes)"),
    "text named .png": (_write("notes.png", b"shopping list\n"), "not an image"),
    "html named .jpg": (_write("page.jpg", b"<!doctype html><html></html>"), "not an image"),
    "pdf named .png": (_write("doc.png", b"%PDF-1.4\n%\xe2\xe3\n"), "not an image"),
    "png signature only": (_write("sig.png", b"\x89PNG\r\n\x1a\n"), "not an image"),
    "truncated png": (_derived("half.png", lambda f: png_bytes(Image.fromarray(f))[:400]),
                      "chunk IDAT at byte 33 needs"),
    "png with a flipped bit": (_derived("flip.png", lambda f: flip(
        png_bytes(Image.fromarray(f)), 200)), "chunk IDAT at byte 33 fails its CRC check"),
    "png header flipped": (_derived("hdr.png", lambda f: flip(
        png_bytes(Image.fromarray(f)), 20)), "chunk IHDR at byte 8 fails its CRC check"),
    "truncated jpeg": (_derived("half.jpg", lambda f: _jpeg(f)[:300]), "truncated"),
    "decompression bomb header": (_write("bomb.png", header_only_png(40000, 40000)),
                                  "could be decompression bomb"),
    "terapixel header": (_write("tera.png", header_only_png(1_000_000, 1_000_000)),
                         "could be decompression bomb"),
    "float image out of 0..1": (_saved("hdr.tif", lambda f: Image.fromarray(
        f[..., 0].astype(np.float32))), "a floating-point image with values 31..230"),
    "float image with NaN": (_saved("nan.tif", lambda f: Image.fromarray(
        np.full(f.shape[:2], np.nan, np.float32))), "NaN or infinite values"),
    "32-bit integer beyond 16 bits": (_saved("deep.tif", lambda f: Image.fromarray(
        f[..., 0].astype(np.int32) * 70000)), "a 32-bit integer image with values"),
    "a folder named .png": (lambda folder, f: _mkdir(folder / "dir.png"), "dir.png"),
}


def _jpeg(frame: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _mkdir(path: Path) -> Path:
    path.mkdir()
    (path / "inside.png").write_bytes(png_bytes(Image.new("RGB", (W, H))))
    (path / "more.png").write_bytes(png_bytes(Image.new("RGB", (W, H))))
    return path


@pytest.mark.parametrize("kind", list(REFUSED_INPUTS))
def test_a_bad_input_file_is_refused_by_name(capsys, ckpt: Path, clip: list[np.ndarray],
                                             tmp_path: Path, kind: str):
    make, message = REFUSED_INPUTS[kind]
    folder = tmp_path / "in"
    folder.mkdir()
    good = []
    for j in (0, 2):
        good.append(folder / f"good{j}.png")
        Image.fromarray(clip[j]).save(good[-1])
    bad = make(folder, clip[1])
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    out = tmp_path / "out" / "embedding.png"
    code, _, err = embed(capsys, ckpt, out, good[0], bad, good[1])
    assert code == 2, err
    assert err.startswith("iicnet: error:") and "Traceback" not in err
    assert str(bad) in err and message.lower() in err.lower(), err
    assert not out.exists() and not list(tmp_path.glob("out/*"))
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before  # inputs untouched


def _exif_rotated(frame: np.ndarray) -> Image.Image:
    """The frame stored transposed, with the EXIF orientation that turns it back."""
    image = Image.fromarray(np.ascontiguousarray(np.rot90(frame, 1)))
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    image.info["exif"] = exif.tobytes()
    return image


ACCEPTED_INPUTS = {
    # kind: (file name, how it is written, the RGB the program must read from it or None)
    "rgba png": ("a.png", lambda f: Image.fromarray(np.dstack([f, f[..., :1]])), "same"),
    "palette png": ("p.png", lambda f: Image.fromarray(f).quantize(256), None),
    "greyscale png": ("g.png", lambda f: Image.fromarray(f[..., 1]), "grey"),
    "greyscale+alpha png": ("la.png", lambda f: Image.fromarray(f[..., 1]).convert("LA"),
                            "grey"),
    "16-bit greyscale png": ("g16.png", lambda f: Image.fromarray(
        f[..., 1].astype(np.uint16) * 257), "grey"),
    "1-bit png": ("bw.png", lambda f: Image.fromarray(f[..., 1]).convert("1"), "binary"),
    "float image in 0..1": ("f.tif", lambda f: Image.fromarray(
        f[..., 1].astype(np.float32) / 255), "grey"),
    "32-bit integer with 8-bit values": ("i.tif", lambda f: Image.fromarray(
        f[..., 1].astype(np.int32)), "grey"),
    "bmp": ("b.bmp", lambda f: Image.fromarray(f), "same"),
    "lossless webp": ("w.webp", lambda f: Image.fromarray(f), "same"),
    "tiff": ("t.tiff", lambda f: Image.fromarray(f), "same"),
    "ppm": ("x.ppm", lambda f: Image.fromarray(f), "same"),
    "gif (first frame)": ("a.gif", lambda f: Image.fromarray(f).quantize(256), None),
    "cmyk jpeg": ("c.jpg", lambda f: Image.fromarray(f).convert("CMYK"), None),
    "exif-rotated jpeg": ("r.jpg", _exif_rotated, None),
    "upper-case suffix": ("UPPER.PNG", lambda f: Image.fromarray(f), "same"),
    "unicode name": ("кадр 1 ✓.png", lambda f: Image.fromarray(f), "same"),
}


@pytest.mark.parametrize("kind", list(ACCEPTED_INPUTS))
def test_an_odd_but_readable_input_is_read_as_8_bit_rgb(capsys, ckpt: Path,
                                                       clip: list[np.ndarray],
                                                       tmp_path: Path, kind: str):
    from iicnet.formats.imagefiles import read_image

    name, write, expected = ACCEPTED_INPUTS[kind]
    path = tmp_path / name
    image = write(clip[1])
    options = {"lossless": True} if name.endswith(".webp") else {}
    if name.endswith(".jpg"):
        image.save(path, quality=95, **({"exif": image.info["exif"]} if "exif" in image.info
                                         else {}))
    else:
        image.save(path, **options)
    pixels = read_image(path)
    assert pixels.dtype == np.uint8 and pixels.shape == (H, W, 3), pixels.shape
    if expected == "same":
        assert np.array_equal(pixels, clip[1])
    elif expected == "grey":
        assert np.array_equal(pixels, np.repeat(clip[1][..., 1:2], 3, axis=2))
    elif expected == "binary":  # black and white, dithered: only the two levels
        assert set(np.unique(pixels)) <= {0, 255} and 0.2 < (pixels > 0).mean() < 0.8
    else:  # lossy or quantised: close to the frame, and the right way up
        error = np.abs(pixels.astype(int) - clip[1].astype(int)).mean()
        assert error < 40, error
    others = []
    for j in (0, 2):
        others.append(tmp_path / f"o{j}.png")
        Image.fromarray(clip[j]).save(others[-1])
    out = tmp_path / "embedding.png"
    code, _, err = embed(capsys, ckpt, out, others[0], path, others[1])
    assert code == 0, err
    assert Image.open(out).size == (W, H)


# -- embeddings given to restore ------------------------------------------------------------

@pytest.fixture(scope="module")
def embedding(tmp_path_factory: pytest.TempPathFactory, ckpt: Path,
              clip: list[np.ndarray]) -> Path:
    from iicnet.app.cli import main

    folder = tmp_path_factory.mktemp("embedding")
    frames = []
    for j, frame in enumerate(clip):
        frames.append(folder / f"{j}.png")
        Image.fromarray(frame).save(frames[-1])
    out = folder / "embedding.png"
    assert main(["embed", "--model", str(ckpt), "--device", "cpu", *map(str, frames),
                 "-o", str(out)]) == 0
    return out


def _resaved(convert: Callable[[Image.Image], Image.Image]) -> Callable[[Path, Path], None]:
    """The embedding's pixels changed by ``convert``, its iicnet text chunks kept."""
    def make(source: Path, target: Path) -> None:
        image = Image.open(source)
        chunks = PngImagePlugin.PngInfo()
        for key, value in image.text.items():
            chunks.add_text(key, value)
        convert(image).save(target, pnginfo=chunks)
    return make


def _bytes(change: Callable[[bytes], bytes]) -> Callable[[Path, Path], None]:
    def make(source: Path, target: Path) -> None:
        target.write_bytes(change(source.read_bytes()))
    return make


def _chunk_at(data: bytes, kind: bytes) -> int:
    return data.index(kind) - 4


REFUSED_EMBEDDINGS = {
    "zero-byte": (_bytes(lambda b: b""), "an empty file (0 bytes)"),
    "text file": (_bytes(lambda b: b"hello\n"), "not an image"),
    "truncated in the pixels": (_bytes(lambda b: b[:_chunk_at(b, b"IDAT") + 20]),
                                "needs"),
    "flipped bit in the pixels": (_bytes(lambda b: flip(b, _chunk_at(b, b"IDAT") + 30)),
                                  "chunk IDAT"),
    "flipped bit in the metadata": (_bytes(lambda b: flip(b, _chunk_at(b, b"tEXt") + 12)),
                                    "chunk tEXt"),
    "resized": (_resaved(lambda im: im.resize((im.width * 2, im.height * 2))),
                "cropped or resized"),
    "cropped": (_resaved(lambda im: im.crop((0, 0, im.width - 8, im.height - 8))),
                "cropped or resized"),
    "greyscale": (_resaved(lambda im: im.convert("L").convert("RGB")), "pixels changed"),
    "palette": (_resaved(lambda im: im.quantize(256).convert("RGB")), "pixels changed"),
    "one pixel edited": (_resaved(lambda im: _edit_pixel(im)), "pixels changed"),
    "jpeg": (lambda s, t: Image.open(s).save(t, format="JPEG", quality=95),
             "a JPEG file (quality 95)"),
    "lossless webp": (lambda s, t: Image.open(s).save(t, format="WEBP", lossless=True),
                      "a WEBP file"),
    "bomb header": (_bytes(lambda b: header_only_png(40000, 40000)),
                    "could be decompression bomb"),
}


def _edit_pixel(image: Image.Image) -> Image.Image:
    image = image.copy()
    r, g, b = image.getpixel((3, 3))
    image.putpixel((3, 3), ((r + 1) % 256, g, b))
    return image


@pytest.mark.parametrize("kind", list(REFUSED_EMBEDDINGS))
def test_a_damaged_embedding_is_refused_by_name(capsys, ckpt: Path, embedding: Path,
                                                tmp_path: Path, kind: str):
    make, message = REFUSED_EMBEDDINGS[kind]
    bad = tmp_path / "shared.png"
    make(embedding, bad)
    kept = bad.read_bytes()
    back = tmp_path / "back"
    code, _, err = run(capsys, "restore", "--model", ckpt, bad, "-o", back,
                       "--video", tmp_path / "clip.mp4")
    assert code == 2, err
    assert err.startswith("iicnet: error:") and "Traceback" not in err
    assert str(bad) in err and message.lower() in err.lower(), err
    assert not back.exists() and not (tmp_path / "clip.mp4").exists()
    assert bad.read_bytes() == kept


def test_a_png_cut_after_its_pixels_still_restores_exactly(capsys, ckpt: Path,
                                                           embedding: Path, tmp_path: Path):
    """A file that lost only its end marker (IEND) keeps every pixel: restored as made."""
    cut = tmp_path / "cut.png"
    cut.write_bytes(embedding.read_bytes()[:-12])
    whole, back = tmp_path / "whole", tmp_path / "back"
    assert run(capsys, "restore", "--model", ckpt, embedding, "-o", whole)[0] == 0
    code, _, err = run(capsys, "restore", "--model", ckpt, cut, "-o", back)
    assert code == 0, err
    for name in sorted(p.name for p in whole.iterdir()):
        assert np.array_equal(np.asarray(Image.open(whole / name)),
                              np.asarray(Image.open(back / name)))
