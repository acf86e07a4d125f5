"""Restoring from JPEG, using a model trained through it: its distortion training in the embedding's
metadata, restoring a JPEG (or a changed PNG) without --allow-lossy for such a model only,
and ``iicnet eval --jpeg Q`` scoring restoration from real JPEGs of the embedding."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

import iicnet
from iicnet.app.evaluation import evaluate
from iicnet.convert import Converter
from iicnet.convert.converter import RobustRestore
from iicnet.formats import checkpoint, embedding_png
from iicnet.formats.embedding_png import EmbeddingFileError, LossyEmbeddingError
from iicnet.model.metrics import psnr
from tests.test_cli import run
from tests.test_convert import photo_clip, tiny_model

ROBUST = "video-k3-small-jpeg.yaml"


@pytest.fixture(scope="module")
def robust_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return checkpoint.save(tmp_path_factory.mktemp("robust") / "ckpt", *tiny_model(ROBUST))


@pytest.fixture(scope="module")
def baseline_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return checkpoint.save(tmp_path_factory.mktemp("baseline") / "ckpt", *tiny_model())


@pytest.fixture(scope="module")
def robust(robust_ckpt: Path) -> Converter:
    return iicnet.load(str(robust_ckpt), device="cpu")


def jpeg_bytes(pixels: np.ndarray, quality: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def with_text(pixels: np.ndarray, text: dict[str, str]) -> bytes:
    chunks = PngImagePlugin.PngInfo()
    for key, value in text.items():
        chunks.add_text(key, value)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG", pnginfo=chunks)
    return out.getvalue()


# -- metadata ----------------------------------------------------------------------------

def test_metadata_records_the_distortion_training(robust: Converter, baseline_ckpt: Path):
    assert robust.jpeg_quality == (50, 95)
    pixels, info = embedding_png.decode(robust.embed(photo_clip(3, 24, 40)), "x")
    assert info.distortion == {"kind": "jpeg", "quality": [50, 95]}
    assert info.jpeg_quality == (50, 95)

    baseline = iicnet.load(str(baseline_ckpt), device="cpu")
    assert baseline.jpeg_quality is None
    _, plain_info = embedding_png.decode(baseline.embed(photo_clip(3, 24, 40)), "x")
    assert plain_info.distortion == {"kind": "off"} and plain_info.jpeg_quality is None


def test_files_without_the_field_still_read_and_damaged_ones_are_refused(robust: Converter):
    png = robust.embed(photo_clip(3, 24, 40))
    pixels, _ = embedding_png.decode(png, "x")
    with Image.open(io.BytesIO(png)) as image:
        text = dict(image.text)
    old = {k: v for k, v in text.items() if k != "iicnet:distortion"}
    _, info = embedding_png.decode(with_text(pixels, old), "old.png")
    assert info.distortion is None and info.jpeg_quality is None
    assert len(robust.restore(with_text(pixels, old))) == 3

    for bad in ('{"kind": "jpeg", "quality": [90, 50]}', '{"kind": "webp"}', '"jpeg"',
                '{"kind": "jpeg", "quality": [50, 101]}', '{"kind": "off", "quality": [1, 2]}'):
        with pytest.raises(EmbeddingFileError, match="bad.png: damaged iicnet metadata "
                                                     r"\(distortion"):
            embedding_png.decode(with_text(pixels, {**text, "iicnet:distortion": bad}),
                                 "bad.png")


def test_jpeg_quality_is_read_from_the_tables():
    photo = photo_clip(1, 64, 64)[0]
    for quality in (97, 90, 75, 50, 23):
        with Image.open(io.BytesIO(jpeg_bytes(photo, quality))) as image:
            assert embedding_png.jpeg_quality(image) == quality
    out = io.BytesIO()
    Image.fromarray(photo).save(out, format="PNG")
    with Image.open(out) as image:
        assert embedding_png.jpeg_quality(image) is None
    with pytest.raises(LossyEmbeddingError, match="a JPEG file \\(quality 61\\)") as caught:
        embedding_png.decode(jpeg_bytes(photo, 61), "e.jpg")
    assert (caught.value.file_format, caught.value.quality) == ("JPEG", 61)


# -- restoring ---------------------------------------------------------------------------

def test_robust_model_restores_a_jpeg_and_says_what_it_was_trained_for(robust: Converter):
    pixels, _ = embedding_png.decode(robust.embed(photo_clip(3, 32, 48)), "x")
    jpeg = jpeg_bytes(pixels, 80)
    with pytest.warns(RobustRestore) as caught:
        restored = robust.restore(jpeg)
    (note,) = [str(w.message) for w in caught]
    assert "a JPEG at quality 80" in note and "quality 50..95" in note and "below" not in note
    with Image.open(io.BytesIO(jpeg)) as image:
        received = np.asarray(image.convert("RGB"))
    assert not np.array_equal(received, pixels)
    expected = robust.restore(received)
    assert all(np.array_equal(a, b) for a, b in zip(restored, expected))

    with pytest.warns(RobustRestore, match=r"quality 30, .*\(30 is below it"):
        robust.restore(jpeg_bytes(pixels, 30))


def test_robust_model_restores_a_changed_png_with_its_metadata(robust: Converter):
    png = robust.embed(photo_clip(3, 30, 46))
    pixels, info = embedding_png.decode(png, "x")
    with Image.open(io.BytesIO(png)) as image:
        text = dict(image.text)
    changed = with_text(pixels // 4 * 4, text)
    with pytest.warns(RobustRestore, match="pixels changed after iicnet wrote them") as caught:
        restored = robust.restore(changed)
    assert "not checked" not in str(caught[0].message)
    assert [r.shape for r in restored] == [(30, 46, 3)] * 3


def test_other_lossy_formats_stay_refused_for_a_robust_model(robust: Converter):
    pixels, _ = embedding_png.decode(robust.embed(photo_clip(3, 32, 32)), "x")
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="WEBP", quality=90)
    with pytest.raises(LossyEmbeddingError, match="a WEBP file"):
        robust.restore(out.getvalue())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RobustRestore)
        assert len(robust.restore(out.getvalue(), allow_lossy=True)) == 3


def test_cli_restore_accepts_jpeg_for_a_robust_model_only(capsys, robust_ckpt: Path,
                                                          baseline_ckpt: Path,
                                                          tmp_path: Path):
    frames = tmp_path / "clip"
    frames.mkdir()
    for j, frame in enumerate(photo_clip(3, 33, 50)):
        Image.fromarray(frame).save(frames / f"{j}.png")
    for name, ckpt in (("robust", robust_ckpt), ("baseline", baseline_ckpt)):
        png, jpeg = tmp_path / f"{name}.png", tmp_path / f"{name}.jpg"
        assert run(capsys, "embed", "--model", ckpt, frames, "-o", png)[0] == 0
        Image.open(png).save(jpeg, quality=90)
        before = jpeg.read_bytes()
        back = tmp_path / f"{name}-back"
        code, out, err = run(capsys, "restore", "--model", ckpt, jpeg, "-o", back)
        assert jpeg.read_bytes() == before
        if name == "robust":
            lines = [line for line in err.splitlines() if line.startswith("iicnet:")]
            assert code == 0 and len(lines) == 1, err
            assert "quality 50..95" in lines[0] and "a JPEG at quality 90" in lines[0]
            assert len(list(back.iterdir())) == 3
        else:
            assert code == 2 and "a JPEG file (quality 90)" in err and "--allow-lossy" in err
            assert not back.exists()


# -- eval --jpeg -------------------------------------------------------------------------

def test_evaluate_scores_restoring_from_real_jpegs(robust: Converter):
    clip = photo_clip(3, 32, 48)
    stack = torch.from_numpy(np.stack([clip[i] for i in robust.order])).permute(0, 3, 1, 2)
    reference = stack[0].float() / 255
    result = evaluate(robust, [(stack, reference)], jpeg=[90, 40, 90])
    lossless = evaluate(robust, [(stack, reference)])
    assert sorted(result.jpeg) == [40, 90]
    assert result.to_dict()["restored"] == lossless.to_dict()["restored"]

    pixels, _ = embedding_png.decode(robust.embed(clip), "x")
    for quality in (90, 40):
        with pytest.warns(RobustRestore):
            restored = robust.restore(jpeg_bytes(pixels, quality))
        expected = float(psnr(torch.from_numpy(np.stack(restored)).permute(0, 3, 1, 2),
                              torch.from_numpy(np.stack(clip)).permute(0, 3, 1, 2)).mean())
        got = result.to_dict()["jpeg"][str(quality)]["restored"]["psnr"]
        assert got == pytest.approx(expected, abs=1e-4)
        assert got != pytest.approx(lossless.to_dict()["restored"]["psnr"], abs=1e-3)
    table = result.table()
    assert "from JPEG Q90" in table and "from JPEG Q40" in table
    assert table.index("Q90") < table.index("Q40")
    with pytest.raises(ValueError, match="JPEG quality must be in 1..100, got 0"):
        evaluate(robust, [], jpeg=[0])


def test_cli_eval_jpeg(capsys, robust_ckpt: Path, samples: Path, tmp_path: Path):
    from data_prep.cli import main as prep

    shards = tmp_path / "davis"
    assert prep(["davis", "--root", str(samples / "davis"), "--out", str(shards)]) == 0
    args = ("eval", "--model", robust_ckpt, "--data", shards, "--crop", 32, "--limit", 2)
    code, out, _ = run(capsys, *args, "--jpeg", 75, "--jpeg", 95, "--json")
    result = json.loads(out)
    assert code == 0 and list(result["jpeg"]) == ["95", "75"]
    for scores in result["jpeg"].values():
        assert set(scores) == {"embedding", "restored", "images", "copy",
                               "items_with_a_side_image_below_copy"}
        assert 0 < scores["restored"]["psnr"] < 100
        assert set(scores["images"]) == set(scores["copy"]) == {"frame_-1", "frame_0",
                                                                "frame_+1"}
        for name, copy in scores["copy"].items():  # the embedding taken as each frame
            assert 0 < copy["psnr"] < 100 and 0 <= copy["items_below"] <= 2
            assert copy["margin_db"] == pytest.approx(scores["images"][name]["psnr"]
                                                      - copy["psnr"])
        assert 0 <= scores["items_with_a_side_image_below_copy"] <= 2
    code, out, _ = run(capsys, *args, "--json")
    assert code == 0 and "jpeg" not in json.loads(out)
    code, _, err = run(capsys, *args, "--jpeg", 0)
    assert code == 2 and "--jpeg 0: a JPEG quality is 1..100" in err
