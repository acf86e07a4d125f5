"""``iicnet embed | restore | eval | info`` on local checkpoints: outputs, and every bad input
(a clear message naming the problem, exit code 2, no output file)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iicnet.app.cli import main
from iicnet.formats import checkpoint, embedding_png
from tests.test_convert import ROOT, photo_clip, tiny_model


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, cfg = tiny_model()
    return checkpoint.save(tmp_path_factory.mktemp("cli") / "ckpt", model, cfg)


@pytest.fixture
def frames(tmp_path: Path) -> list[Path]:
    """Three PNG frames of a real photo, odd-sized, in time order."""
    paths = []
    for j, frame in enumerate(photo_clip(3, 41, 67)):
        path = tmp_path / "clip" / f"{j:03d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(frame).save(path)
        paths.append(path)
    return paths


def run(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def embed(capsys, ckpt: Path, out: Path, *inputs: object, extra: tuple = ()) -> tuple:
    return run(capsys, "embed", "--model", ckpt, "--device", "cpu", *extra, *inputs, "-o", out)


def test_embed_and_restore_round_trip(capsys, ckpt: Path, frames: list[Path], tmp_path: Path):
    out = tmp_path / "emb.png"
    code, stdout, _ = embed(capsys, ckpt, out, frames[0].parent)
    assert code == 0 and "3 images of 67x41" in stdout
    pixels, info = embedding_png.read(out)
    assert pixels.shape == (41, 67, 3) and info.model == str(ckpt) and info.model_version == ""
    code, stdout, _ = run(capsys, "restore", "--model", ckpt, out, "-o", tmp_path / "back",
                          "--video", tmp_path / "back.mp4")
    assert code == 0
    names = sorted(p.name for p in (tmp_path / "back").iterdir())
    assert names == ["00-frame_-1.png", "01-frame_0.png", "02-frame_+1.png"]
    restored = [np.asarray(Image.open(tmp_path / "back" / n)) for n in names]
    import iicnet

    expected = iicnet.load(str(ckpt), device="cpu").restore(out)
    assert all(np.array_equal(a, b) for a, b in zip(restored, expected))
    import av

    with av.open(str(tmp_path / "back.mp4")) as video:
        decoded = [f.to_ndarray(format="rgb24") for f in video.decode(video=0)]
    assert len(decoded) == 3 and decoded[0].shape == (42, 68, 3)


def test_glob_and_file_inputs_keep_their_order(capsys, ckpt: Path, frames: list[Path],
                                               tmp_path: Path):
    by_glob, by_files = tmp_path / "a.png", tmp_path / "b.png"
    assert embed(capsys, ckpt, by_glob, str(frames[0].parent / "*.png"))[0] == 0
    assert embed(capsys, ckpt, by_files, *frames)[0] == 0
    assert np.array_equal(embedding_png.read(by_glob)[0], embedding_png.read(by_files)[0])
    assert embed(capsys, ckpt, by_files, frames[2], frames[1], frames[0],
                 extra=("--overwrite",))[0] == 0
    assert not np.array_equal(embedding_png.read(by_glob)[0], embedding_png.read(by_files)[0])


def test_video_input_takes_frames_around_the_middle(capsys, ckpt: Path, tmp_path: Path):
    from iicnet.formats.imagefiles import write_video

    clip = photo_clip(15, 48, 64, shift=2)
    write_video(tmp_path / "in.mp4", clip, fps=10)
    out = tmp_path / "emb.png"
    assert embed(capsys, ckpt, out, tmp_path / "in.mp4", extra=("--step", "3"))[0] == 0
    _, info = embedding_png.read(out)
    assert info.fps == 10 and info.size == [48, 64]
    code, _, err = embed(capsys, ckpt, tmp_path / "x.png", tmp_path / "in.mp4",
                         extra=("--step", "8"))
    assert code == 2 and "15 frames, too short" in err


def test_tiled_embedding_records_its_grid(capsys, ckpt: Path, tmp_path: Path):
    paths = []
    for j, frame in enumerate(photo_clip(3, 130, 200)):
        paths.append(tmp_path / f"{j}.png")
        Image.fromarray(frame).save(paths[-1])
    out = tmp_path / "emb.png"
    assert embed(capsys, ckpt, out, *paths, extra=("--tile", "100"))[0] == 0
    _, info = embedding_png.read(out)
    assert info.tile_rows == [0, 65, 130] and info.tile_cols == [0, 100, 200]
    code, _, _ = run(capsys, "restore", "--model", ckpt, "--tile", "0", out, "-o", tmp_path / "r")
    assert code == 0 and Image.open(tmp_path / "r" / "01-frame_0.png").size == (200, 130)


def test_info(capsys, ckpt: Path):
    code, out, _ = run(capsys, "info", ROOT / "configs" / "video-k5.yaml")
    assert code == 0 and "task video, K=5" in out
    code, out, _ = run(capsys, "info", ckpt, "--json")
    info = json.loads(out)
    assert code == 0 and info["images"] == ["frame_-1", "frame_0", "frame_+1"]
    assert info["reference"] == "frame_0"
    assert info["weights"] and info["scale"] == 1 and info["parameters"]["total"] > 0


def test_eval_prints_the_paper_layout(capsys, ckpt: Path, samples: Path, tmp_path: Path):
    from data_prep.cli import main as prep

    shards = tmp_path / "davis"
    assert prep(["davis", "--root", str(samples / "davis"), "--out", str(shards)]) == 0
    args = ("eval", "--model", ckpt, "--data", shards, "--crop", 48, "--limit", 2)
    code, out, _ = run(capsys, *args, "--json")
    result = json.loads(out)
    assert code == 0 and result["split"] == "test" and result["items"] == 2
    assert set(result["images"]) == {"frame_-1", "frame_0", "frame_+1"}
    assert 0 < result["embedding"]["psnr"] < 100 and 0 < result["restored"]["ssim"] <= 1
    code, out, _ = run(capsys, *args)
    assert code == 0 and "| task | embedding | restored (all) | frame_-1 |" in out
    step = checkpoint.load_config(ckpt).data.step
    assert f"| video K=3, step {step} |" in out
    code, _, err = run(capsys, "eval", "--model", ckpt, "--data", tmp_path / "none")
    assert code == 2 and "no manifest" in err


# -- bad input: message, exit code 2, nothing written --------------------------------------

def test_wrong_number_of_images(capsys, ckpt: Path, frames: list[Path], tmp_path: Path):
    out = tmp_path / "emb.png"
    code, _, err = embed(capsys, ckpt, out, *frames[:2])
    assert code == 2 and "embeds 3 images" in err and "but 2 were given" in err
    assert str(frames[0]) in err and not out.exists()


def test_images_of_different_sizes(capsys, ckpt: Path, frames: list[Path], tmp_path: Path):
    Image.open(frames[2]).crop((0, 0, 60, 41)).save(frames[2])
    out = tmp_path / "emb.png"
    code, _, err = embed(capsys, ckpt, out, *frames)
    assert code == 2 and f"{frames[2]}: 60x41 pixels, but {frames[0]} is 67x41" in err
    assert not out.exists()


def test_unreadable_and_missing_files(capsys, ckpt: Path, frames: list[Path], tmp_path: Path):
    bad = frames[1].with_name("notes.png")
    bad.write_text("not an image")
    out = tmp_path / "emb.png"
    code, _, err = embed(capsys, ckpt, out, frames[0], bad, frames[2])
    assert code == 2 and f"{bad}: not an image" in err and not out.exists()
    code, _, err = embed(capsys, ckpt, out, frames[0], tmp_path / "gone.png", frames[2])
    assert code == 2 and "gone.png: no such file or folder" in err
    code, _, err = embed(capsys, ckpt, out, str(tmp_path / "*.tif"))
    assert code == 2 and "matches no files" in err
    code, _, err = embed(capsys, ckpt, tmp_path / "emb.jpg", *frames)
    assert code == 2 and "must be a .png" in err and not (tmp_path / "emb.jpg").exists()


def test_restore_refuses_foreign_and_lossy_embeddings(capsys, ckpt: Path, frames: list[Path],
                                                      tmp_path: Path):
    other = checkpoint.save(tmp_path / "other", *tiny_model(seed=3))
    out = tmp_path / "emb.png"
    assert embed(capsys, ckpt, out, *frames)[0] == 0
    back = tmp_path / "back"
    code, _, err = run(capsys, "restore", "--model", other, out, "-o", back)
    assert code == 2 and "only the model that made an embedding can restore it" in err
    assert not back.exists()

    code, _, err = run(capsys, "restore", "--model", ckpt, frames[0], "-o", back)
    notes = [line for line in err.splitlines() if "could not be checked" in line]
    assert code == 0 and len(notes) == 1 and "no iicnet metadata" in notes[0]
    assert len(list(back.iterdir())) == 3
    shutil.rmtree(back)

    jpeg = tmp_path / "emb.jpg"
    Image.open(out).save(jpeg, quality=95)
    code, _, err = run(capsys, "restore", "--model", ckpt, jpeg, "-o", back)
    assert code == 2 and "a JPEG file" in err and "quality will drop" in err
    assert not back.exists()
    code, _, err = run(capsys, "restore", "--model", ckpt, jpeg, "-o", back, "--allow-lossy")
    assert code == 0 and "warning" in err and len(list(back.iterdir())) == 3


def test_unknown_model_and_unreachable_registry(capsys, frames: list[Path], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch):
    from tests.conftest import _free_port

    out = tmp_path / "emb.png"
    code, _, err = embed(capsys, "hdfs://somewhere/model", out, *frames)
    assert code == 2 and "unknown model URI" in err
    code, _, err = embed(capsys, tmp_path / "no-such-model", out, *frames)
    assert code == 2 and "no such checkpoint directory" in err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")
    code, _, err = embed(capsys, "models:/iicnet-video@champion", out, *frames)
    assert code == 2 and "not reachable" in err and not out.exists()


def test_the_installed_command_exits_2(tmp_path: Path):
    result = subprocess.run([sys.executable, "-m", "iicnet.app.cli", "restore", "--model",
                             str(tmp_path), str(tmp_path / "x.png"), "-o", str(tmp_path / "o")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("iicnet: error:") and "Traceback" not in result.stderr
