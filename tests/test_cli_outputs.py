"""Where ``iicnet embed`` and ``restore`` write: never over an input, never over an existing
output without ``--overwrite``, and an unwritable, read-only or full location is a message
and exit 2 with nothing left behind. Also: embedding metadata edited field by field."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from iicnet.formats import checkpoint
from tests.helpers import tmpfs
from tests.test_cli import embed, run
from tests.test_convert import ROOT, photo_clip, tiny_model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return checkpoint.save(tmp_path_factory.mktemp("outputs") / "ckpt", *tiny_model())


@pytest.fixture
def frames(tmp_path: Path) -> list[Path]:
    paths = []
    for j, frame in enumerate(photo_clip(3, 24, 40)):
        paths.append(tmp_path / "clip" / f"{j:03d}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(frame).save(paths[-1])
    return paths


@pytest.fixture
def embedding(capsys, ckpt: Path, frames: list[Path], tmp_path: Path) -> Path:
    out = tmp_path / "emb.png"
    assert embed(capsys, ckpt, out, *frames)[0] == 0
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden temporaries too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def restore(capsys, ckpt: Path, emb: Path, *extra: object) -> tuple[int, str, str]:
    return run(capsys, "restore", "--model", ckpt, "--device", "cpu", emb, *extra)


# -- never over an input, never over an output unasked -------------------------------------

@pytest.mark.parametrize("spelling", ["same", "dotted", "linked"])
def test_embed_never_writes_over_an_input(capsys, ckpt: Path, frames: list[Path],
                                          tmp_path: Path, spelling: str):
    target = {"same": frames[2],
              "dotted": frames[2].parent / ".." / "clip" / frames[2].name,
              "linked": tmp_path / "link.png"}[spelling]
    if spelling == "linked":
        target.symlink_to(frames[2])
    before = snapshot(tmp_path)
    for extra in ((), ("--overwrite",)):
        code, _, err = embed(capsys, ckpt, target, *frames, extra=extra)
        assert code == 2 and "is the input" in err and str(frames[2]) in err
        assert snapshot(tmp_path) == before


def test_embed_replaces_an_existing_file_only_with_overwrite(capsys, ckpt: Path,
                                                            frames: list[Path], tmp_path: Path):
    out = tmp_path / "emb.png"
    out.write_bytes(b"keep me")
    code, _, err = embed(capsys, ckpt, out, *frames)
    assert code == 2 and f"-o {out}: exists; pass --overwrite" in err
    assert out.read_bytes() == b"keep me"
    assert embed(capsys, ckpt, out, *frames, extra=("--overwrite",))[0] == 0
    assert Image.open(out).format == "PNG"
    folder = tmp_path / "folder.png"
    folder.mkdir()
    code, _, err = embed(capsys, ckpt, folder, *frames, extra=("--overwrite",))
    assert code == 2 and "a folder; give a file name" in err


def test_restore_names_what_it_would_replace(capsys, ckpt: Path, embedding: Path,
                                             tmp_path: Path):
    back = tmp_path / "back"
    back.mkdir()
    (back / "01-frame_0.png").write_bytes(b"old frame")
    (back / "notes.txt").write_text("mine")
    before = snapshot(back)
    code, _, err = restore(capsys, ckpt, embedding, "-o", back)
    assert code == 2 and "would replace 1 file(s) there (01-frame_0.png)" in err
    assert "--overwrite" in err and snapshot(back) == before
    code, out, _ = restore(capsys, ckpt, embedding, "-o", back, "--overwrite")
    assert code == 0 and "3 images" in out
    after = snapshot(back)
    assert after["notes.txt"] == b"mine" and after["01-frame_0.png"] != b"old frame"
    assert sorted(after) == ["00-frame_-1.png", "01-frame_0.png", "02-frame_+1.png",
                             "notes.txt"]


def test_restore_never_replaces_the_embedding_it_reads(capsys, ckpt: Path, embedding: Path,
                                                       tmp_path: Path):
    folder = tmp_path / "here"
    folder.mkdir()
    inside = folder / "00-frame_-1.png"
    inside.write_bytes(embedding.read_bytes())
    for extra in ((), ("--overwrite",)):
        code, _, err = restore(capsys, ckpt, inside, "-o", folder, *extra)
        assert code == 2 and "the embedding being restored" in err
        assert inside.read_bytes() == embedding.read_bytes()


def test_restore_video_refuses_an_existing_file(capsys, ckpt: Path, embedding: Path,
                                                tmp_path: Path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"someone's video")
    code, _, err = restore(capsys, ckpt, embedding, "--video", video)
    assert code == 2 and "exists; pass --overwrite" in err
    assert video.read_bytes() == b"someone's video"
    assert restore(capsys, ckpt, embedding, "--video", video, "--overwrite")[0] == 0
    assert video.read_bytes()[4:8] == b"ftyp"


# -- locations that cannot be written ----------------------------------------------------

def test_unwritable_locations_are_messages(capsys, ckpt: Path, frames: list[Path],
                                           embedding: Path, tmp_path: Path):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    before = snapshot(tmp_path)
    cases = [
        ("embed", a_file / "sub.png", f"{a_file} is a file, not a folder"),
        ("embed", Path("/proc/iicnet-test.png"), "cannot write it"),
        ("restore", a_file / "sub", "cannot write it"),
        ("restore", Path("/proc/iicnet-test"), "cannot write it"),
        ("restore-video", Path("/proc/iicnet-test.mp4"), "cannot write it"),
    ]
    for kind, target, message in cases:
        if kind == "embed":
            code, _, err = embed(capsys, ckpt, target, *frames)
        elif kind == "restore":
            code, _, err = restore(capsys, ckpt, embedding, "-o", target)
        else:
            code, _, err = restore(capsys, ckpt, embedding, "--video", target)
        assert code == 2, (kind, target, err)
        assert err.startswith("iicnet: error:") and message in err and str(target) in err
        assert "Traceback" not in err
    assert snapshot(tmp_path) == before


def _small_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def test_a_full_disk_is_a_message_and_leaves_no_partial_file(ckpt: Path, frames: list[Path],
                                                             tmp_path: Path):
    """A file-size limit makes the write fail part-way (EFBIG), as a full disk would."""
    out = tmp_path / "out" / "emb.png"
    out.parent.mkdir()
    big = []
    for j, frame in enumerate(photo_clip(3, 96, 128)):
        big.append(tmp_path / f"big{j}.png")
        Image.fromarray(frame).save(big[-1])
    result = subprocess.run(
        [sys.executable, "-m", "iicnet.app.cli", "embed", "--model", str(ckpt), "--device",
         "cpu", *map(str, big), "-o", str(out)],
        capture_output=True, text=True, cwd=ROOT, preexec_fn=_small_file_limit)
    assert result.returncode == 2, result.stderr
    assert "cannot write it: File too large" in result.stderr
    assert list(out.parent.iterdir()) == []


# -- embedding metadata, one edited field at a time ----------------------------------------

def edit_metadata(source: Path, target: Path, field: str, raw: str) -> None:
    """Save ``source``'s pixels again with ``iicnet:<field>`` holding ``raw`` (JSON text)."""
    image = Image.open(source)
    chunks = PngImagePlugin.PngInfo()
    for key, value in image.text.items():
        chunks.add_text(key, raw if key == f"iicnet:{field}" else value)
    image.save(target, pnginfo=chunks)


@pytest.mark.parametrize("field, raw, message", [
    ("scale", "0", "iicnet:scale is 0; expected 1, 2, 4 or 8"),
    ("scale", "true", "iicnet:scale is True"),
    ("fps", "NaN", "iicnet:fps is nan"),
    ("fps", "1e308", "iicnet:fps is 1e+308"),
    ("fps", '"ten"', "iicnet:fps is 'ten'"),
    ("fps", "-5", "iicnet:fps is -5"),
    ("num_images", '"3"', "iicnet:num_images is '3'"),
    ("num_images", "2", "2 images"),
    ("embed_channels", "2", "iicnet:embed_channels is 2"),
    ("size", "[-24, 40]", "iicnet:size is [-24, 40]"),
    ("size", "[24]", "iicnet:size is [24]"),
    ("padding", '"none"', "iicnet:padding is 'none'"),
    ("names", "[1, 2, 3]", "iicnet:names is [1, 2, 3]"),
    ("model", "[" + "1," * 100 + "1]", "iicnet:model is [1, 1,"),
    ("halo", "-1", "halo -1"),
    ("tile_rows", "[0, 0]", "tile grid"),
])
def test_edited_metadata_is_refused_by_name(capsys, ckpt: Path, embedding: Path,
                                            tmp_path: Path, field: str, raw: str, message: str):
    edited = tmp_path / f"edited-{field}.png"
    edit_metadata(embedding, edited, field, raw)
    back = tmp_path / "back"
    code, _, err = restore(capsys, ckpt, edited, "-o", back, "--video", tmp_path / "v.mp4")
    assert code == 2, err
    assert f"{edited}: damaged iicnet metadata" in err and message in err
    assert not back.exists() and not (tmp_path / "v.mp4").exists()


@pytest.mark.parametrize("fps", ["nan", "inf", "0", "-3", "1e9"])
def test_a_bad_frame_rate_is_refused(capsys, ckpt: Path, embedding: Path, tmp_path: Path,
                                     fps: str):
    code, _, err = restore(capsys, ckpt, embedding, "--video", tmp_path / "v.mp4", "--fps", fps)
    assert code == 2 and "--fps" in err and "a frame rate" in err
    assert not (tmp_path / "v.mp4").exists()


def test_the_edit_helper_keeps_a_valid_file_valid(capsys, ckpt: Path, embedding: Path,
                                                 tmp_path: Path):
    """The table above proves something only if an untouched re-save still restores."""
    same = tmp_path / "same.png"
    edit_metadata(embedding, same, "fps", json.dumps(12.5))
    code, _, _ = restore(capsys, ckpt, same, "-o", tmp_path / "back")
    assert code == 0 and len(list((tmp_path / "back").iterdir())) == 3
    assert np.array_equal(np.asarray(Image.open(same)), np.asarray(Image.open(embedding)))


# -- a damaged model folder, through the command ---------------------------------------------

def _truncate(folder: Path) -> None:
    weights = folder / checkpoint.WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])


def _wrong_shape(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / checkpoint.WEIGHTS)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].flatten()[:3].clone()
    save_file(tensors, folder / checkpoint.WEIGHTS)
    (folder / checkpoint.MARKER).unlink()  # as an unsealed (older) checkpoint would be


def _nan_weights(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / checkpoint.WEIGHTS)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone().fill_(float("nan"))
    save_file(tensors, folder / checkpoint.WEIGHTS)
    (folder / checkpoint.MARKER).unlink()


def _binary_config(folder: Path) -> None:
    (folder / checkpoint.CONFIG).write_bytes(bytes(range(256)) * 4)
    (folder / checkpoint.MARKER).unlink()


@pytest.mark.parametrize("damage, message", [
    (_truncate, "incomplete or damaged checkpoint"),
    (_wrong_shape, "wrong shape"),
    (_nan_weights, "NaN"),
    (_binary_config, "config.json"),
])
def test_a_damaged_model_folder_is_a_message_with_exit_2(capsys, ckpt: Path, frames: list[Path],
                                                         tmp_path: Path, damage, message):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(ckpt, model)
    damage(model)
    out = tmp_path / "emb.png"
    code, _, err = embed(capsys, model, out, *frames)
    assert code == 2, err
    assert err.startswith("iicnet: error:") and message in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".*emb*"))


@pytest.fixture
def read_only_folder(tmp_path: Path):
    """A read-only filesystem (a tmpfs mounted ro; needs root, skipped elsewhere)."""
    with tmpfs(tmp_path / "ro", "ro,size=1m") as folder:
        yield folder


def test_a_read_only_filesystem_is_a_message(capsys, ckpt: Path, frames: list[Path],
                                             embedding: Path, read_only_folder: Path):
    code, _, err = embed(capsys, ckpt, read_only_folder / "emb.png", *frames)
    assert code == 2 and err.startswith("iicnet: error:") and "Traceback" not in err
    assert "Read-only file system" in err and str(read_only_folder) in err
    code, _, err = restore(capsys, ckpt, embedding, "-o", read_only_folder / "back")
    assert code == 2 and "Read-only file system" in err and "Traceback" not in err
    assert list(read_only_folder.iterdir()) == []
