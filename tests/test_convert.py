"""The Python API: ``iicnet.load`` -> Converter; padding, tiling, order, metadata checks."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import iicnet
from iicnet.app.api import load_model
from iicnet.convert import (
    Converter,
    MismatchError,
    ModelSource,
    UncheckedEmbedding,
    serving,
    tile_bounds,
)
from iicnet.formats import checkpoint, embedding_png
from iicnet.formats.config_file import load as load_config
from iicnet.formats.embedding_png import EmbeddingFileError, LossyEmbeddingError
from iicnet.formats.imagefiles import InputError
from iicnet.model import IICNet
from tests.helpers import perturb

ROOT = Path(__file__).resolve().parent.parent
TINY = ["model.blocks=1", "model.nf=8", "model.growth=8"]


def tiny_model(config: str = "video-k3-small.yaml", seed: int = 0, extra: tuple = ()
               ) -> tuple[IICNet, object]:
    """A tiny model with perturbed weights, so the zero-initialised layers do something."""
    cfg = load_config(ROOT / "configs" / config).override(TINY + list(extra))
    torch.manual_seed(seed)
    return perturb(IICNet(cfg), seed=seed).eval(), cfg


def photo_clip(k: int, height: int, width: int, shift: int = 4) -> list[np.ndarray]:
    """K frames panning across scikit-image's coffee photo, in time order."""
    from skimage import data

    photo = data.coffee()
    return [np.ascontiguousarray(photo[30:30 + height, 60 + j * shift:60 + j * shift + width])
            for j in range(k)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, cfg = tiny_model()
    return checkpoint.save(tmp_path_factory.mktemp("api") / "ckpt", model, cfg)


@pytest.fixture(scope="module")
def conv(ckpt: Path) -> Converter:
    return iicnet.load(str(ckpt), device="cpu")


def test_import_iicnet_stays_light():
    code = "import sys, iicnet; assert 'torch' not in sys.modules; assert callable(iicnet.load)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_png_round_trip_any_size(conv: Converter):
    clip = photo_clip(3, 37, 53)
    png = conv.embed(clip)
    pixels, info = embedding_png.decode(png, "x")
    assert pixels.shape == (37, 53, 3)
    assert info.size == [37, 53] and info.task == "video" and info.num_images == 3
    assert info.weights == conv.fingerprint and info.names == ["frame_-1", "frame_0", "frame_+1"]
    restored = conv.restore(png)
    assert [r.shape for r in restored] == [(37, 53, 3)] * 3
    assert all(r.dtype == np.uint8 for r in restored)
    assert np.array_equal(np.stack(conv.restore(conv.embed(clip, as_png=False))),
                          np.stack(restored))


def test_natural_order_puts_the_middle_frame_first(conv: Converter):
    clip = photo_clip(3, 32, 32)
    stack = torch.from_numpy(np.stack([clip[1], clip[0], clip[2]])).permute(0, 3, 1, 2)[None]
    expected = conv.model.encode(stack)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(conv.embed(clip, as_png=False), expected)
    restored = conv.model.decode(conv.model.encode(stack))[0].permute(0, 2, 3, 1).numpy()
    got = conv.restore(expected)
    assert np.array_equal(got[1], restored[0]) and np.array_equal(got[0], restored[1])


def test_tile_bounds():
    assert tile_bounds(1080, 512, 1) == [0, 360, 720, 1080]
    assert tile_bounds(1920, 512, 2) == [0, 480, 960, 1440, 1920]
    assert tile_bounds(300, 0, 2) == [0, 300] and tile_bounds(300, 512, 2) == [0, 300]
    for length, tile, multiple in [(1000, 100, 2), (482, 64, 2), (999, 77, 1), (130, 64, 2)]:
        bounds = tile_bounds(length, tile, multiple)
        sizes = np.diff(bounds)
        assert bounds[0] == 0 and bounds[-1] == length
        assert all(b % multiple == 0 for b in bounds)
        assert sizes.max() <= tile and sizes.max() - sizes.min() <= multiple


def test_tiles_are_encoded_independently_on_the_recorded_grid(ckpt: Path):
    # halo 0: no context, as embeddings were made before the halo (tests/test_tiling.py)
    conv = iicnet.load(str(ckpt), device="cpu", tile=64, halo=0)
    clip = photo_clip(3, 100, 150)
    pixels, info = conv.embed_pixels(clip)
    assert info.tile_rows == [0, 50, 100] and info.tile_cols == [0, 50, 100, 150]
    corner = torch.from_numpy(np.stack([clip[1], clip[0], clip[2]])[:, 50:, 100:])
    alone = conv.model.encode(corner.permute(0, 3, 1, 2)[None])[0].permute(1, 2, 0).numpy()
    assert np.array_equal(pixels[50:, 100:], alone)
    # a converter with another tile size restores on the grid recorded in the PNG
    png = embedding_png.encode(pixels, info)
    untiled = iicnet.load(str(ckpt), device="cpu", tile=0)
    assert np.array_equal(np.stack(untiled.restore(png)), np.stack(conv.restore(png)))


def test_downscaling_model_pads_and_crops_back(tmp_path: Path):
    model, cfg = tiny_model("video-k3-x2.yaml")
    conv = Converter(model, cfg, ModelSource("x", "x"), tile=64)
    clip = photo_clip(3, 45, 71)
    pixels, info = conv.embed_pixels(clip)
    assert info.padding == [1, 1] and pixels.shape == (23, 36, 3)
    restored = conv.restore(embedding_png.encode(pixels, info))
    assert [r.shape for r in restored] == [(45, 71, 3)] * 3


def test_bad_images_are_named(conv: Converter):
    clip = photo_clip(3, 32, 32)
    with pytest.raises(InputError, match="embeds 3 images .* but 2 were given"):
        conv.embed(clip[:2])
    with pytest.raises(InputError, match="image 2: 30x32 pixels, but image 0 is 32x32"):
        conv.embed([clip[0], clip[1], clip[2][:, :30]])
    with pytest.raises(InputError, match="image 1: expected a uint8"):
        conv.embed([clip[0], clip[1].astype(np.float32), clip[2]])


def test_embedding_from_another_model_is_refused(conv: Converter):
    other, cfg = tiny_model(seed=1)
    png = Converter(other, cfg, ModelSource("m", "iicnet-video", "7")).embed(photo_clip(3, 32, 32))
    with pytest.raises(MismatchError, match="made by iicnet-video version 7 .* other weights"):
        conv.restore(png)
    stereo, scfg = tiny_model("stereo.yaml")
    png = Converter(stereo, scfg, ModelSource("s", "iicnet-stereo")).embed(photo_clip(2, 32, 32))
    with pytest.raises(MismatchError, match="task stereo with K=2"):
        conv.restore(png)


def test_lossy_and_foreign_files(conv: Converter, tmp_path: Path):
    from PIL import Image

    png = conv.embed(photo_clip(3, 40, 40))
    pixels, info = embedding_png.decode(png, "x")
    jpeg = tmp_path / "e.jpg"
    Image.fromarray(pixels).save(jpeg, quality=90)
    with pytest.raises(LossyEmbeddingError, match="JPEG file.*quality will drop"):
        conv.restore(jpeg)
    assert len(conv.restore(jpeg, allow_lossy=True)) == 3
    info.format = embedding_png.FORMAT_VERSION + 1
    with pytest.raises(EmbeddingFileError, match="upgrade iicnet"):
        conv.restore(embedding_png.encode(pixels, info))
    info.format, info.tile_cols = embedding_png.FORMAT_VERSION, [0, 41]
    with pytest.raises(EmbeddingFileError, match="damaged iicnet metadata"):
        conv.restore(embedding_png.encode(pixels, info))
    plain = tmp_path / "plain.png"
    Image.fromarray(pixels).save(plain)
    with pytest.warns(UncheckedEmbedding, match="could not be checked"):
        assert len(conv.restore(plain)) == 3
    Image.fromarray(pixels[..., :1].repeat(2, axis=2).mean(2).astype(np.uint8)).save(plain)
    with pytest.raises(InputError, match="a grey image, but .* makes 3-channel embeddings"):
        conv.restore(plain)
    with pytest.raises(EmbeddingFileError, match="no such file"):
        conv.restore(tmp_path / "missing.png")


def test_pixels_changed_after_writing_are_caught(conv: Converter):
    from PIL import Image, PngImagePlugin

    png = conv.embed(photo_clip(3, 40, 40))
    pixels, _ = embedding_png.decode(png, "x")
    with Image.open(io.BytesIO(png)) as image:
        text = dict(image.text)
    chunks = PngImagePlugin.PngInfo()
    for key, value in text.items():
        chunks.add_text(key, value)
    out = io.BytesIO()
    Image.fromarray(pixels // 4 * 4).save(out, format="PNG", pnginfo=chunks)
    with pytest.raises(LossyEmbeddingError, match="pixels changed after iicnet wrote it"):
        conv.restore(out.getvalue())
    assert len(conv.restore(out.getvalue(), allow_lossy=True)) == 3


def test_unknown_model_uris(tmp_path: Path):
    from iicnet.app.api import ModelError

    for uri, message in [("s3://bucket/model", "unknown model URI"),
                         (str(tmp_path / "nope"), "no such checkpoint directory"),
                         (__file__, "a file, not a checkpoint directory")]:
        with pytest.raises(ModelError, match=message):
            load_model(uri)


def test_serving_records(conv: Converter):
    import base64

    from PIL import Image

    def b64png(array: np.ndarray) -> str:
        out = io.BytesIO()
        Image.fromarray(array).save(out, format="PNG")
        return base64.b64encode(out.getvalue()).decode()

    clip = photo_clip(3, 24, 30)
    [answer] = serving.handle(conv, [{"images": [b64png(f) for f in clip]}])
    png = base64.b64decode(answer["embedding"])
    assert png == conv.embed(clip)
    [restored] = serving.handle(conv, [{"embedding": answer["embedding"]}])
    assert restored["names"] == conv.names
    images = [np.asarray(Image.open(io.BytesIO(base64.b64decode(s)))) for s in restored["images"]]
    assert np.array_equal(np.stack(images), np.stack(conv.restore(png)))
    with pytest.raises(InputError, match="record 0: expected an 'images' list"):
        serving.handle(conv, [{"other": 1}])
