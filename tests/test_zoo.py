"""The shipped model zoo: every model loads by name, verifies its checksums, carries its
measured card, and embeds and restores a real clip it never saw, through the CLI, the Python
API and serving requests; a tampered or unknown model is refused by name."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import iicnet
from iicnet import zoo
from iicnet.app import cli
from iicnet.convert import serving
from iicnet.formats import checkpoint
from iicnet.model.metrics import psnr

NAMES = zoo.names()
CLIP = "DAVIS-2017-test-challenge/JPEGImages/480p/chelsea-pan"
"""A sample clip (scikit-image photographs) that no zoo model trained on."""


def test_the_zoo_ships_models_with_cards_within_its_size_budget():
    assert len(NAMES) >= 2, NAMES
    total = sum(p.stat().st_size for p in zoo.MODELS.rglob("*") if p.is_file())
    assert total < 20 * 2**20, f"the zoo is {total / 2**20:.1f} MiB"
    for name in NAMES:
        card = zoo.card(name)
        scores = card["scores"]
        assert len(scores["restored_psnr_per_frame"]) == card["num_images"]
        assert scores["embedding_psnr"] > 20 and scores["worst_frame_psnr"] > 20, card
        assert card["cpu_s_per_megapixel"] > 0
        assert card["training"]["steps"] > 0 and card["training"]["data"], card["training"]
        assert (zoo.MODELS / name / checkpoint.MARKER).is_file()


def test_info_lists_every_zoo_model_with_its_scores():
    out = subprocess.run([sys.executable, "-m", "iicnet.app.cli", "info", "zoo:"],
                         capture_output=True, text=True, check=True).stdout
    for name in NAMES:
        assert f"zoo:{name}" in out
    assert out.count("held-out (") == len(NAMES), out
    listed = json.loads(subprocess.run(
        [sys.executable, "-m", "iicnet.app.cli", "info", "zoo:", "--json"],
        capture_output=True, text=True, check=True).stdout)
    assert sorted(listed) == NAMES


def _clip(samples: Path, frames: int, step: int = 5) -> list[Path]:
    return [samples / "davis" / CLIP / f"{5 + j * step:05d}.jpg" for j in range(frames)]


@pytest.mark.parametrize("name", NAMES)
def test_embed_and_restore_an_unseen_clip_through_the_cli(name: str, samples: Path,
                                                          tmp_path: Path):
    k = zoo.card(name)["num_images"]
    inputs = _clip(samples, k)
    png, out = tmp_path / "clip.png", tmp_path / "restored"
    for argv in (["embed", "--model", f"zoo:{name}", *map(str, inputs), "-o", str(png)],
                 ["restore", "--model", f"zoo:{name}", str(png), "-o", str(out)]):
        done = subprocess.run([sys.executable, "-m", "iicnet.app.cli", *argv],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    embedding = _pixels(png)
    restored = sorted(out.glob("*.png"))
    assert len(restored) == k
    reference = k // 2
    for j, (original, back) in enumerate(zip(inputs, restored, strict=True)):
        truth = _pixels(original)
        restored_psnr = float(psnr(_tensor(_pixels(back)), _tensor(truth)))
        copy_psnr = float(psnr(_tensor(embedding), _tensor(truth)))
        # Each side frame comes back better than the embedding taken as that frame; the
        # reference, which the embedding is trained to look like, about as well as that.
        floor = copy_psnr - 0.25 if j == reference else copy_psnr
        assert restored_psnr > floor and restored_psnr > 20, (back, restored_psnr, copy_psnr)


def test_python_api_and_serving_requests(samples: Path):
    name = NAMES[0]
    k = zoo.card(name)["num_images"]
    converter = iicnet.load(f"zoo:{name}", engine="torch")
    files = [base64.b64encode(p.read_bytes()).decode() for p in _clip(samples, k)]
    (answer,) = serving.handle(converter, [{"images": files}])
    (back,) = serving.handle(converter, [{"embedding": answer["embedding"]}])
    assert len(back["images"]) == k and back["names"] == converter.names
    direct = converter.restore(base64.b64decode(answer["embedding"]))
    served = [np.asarray(Image.open(io.BytesIO(base64.b64decode(b)))) for b in back["images"]]
    assert all(np.array_equal(a, b) for a, b in zip(direct, served, strict=True))


def _tampered_zoo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change) -> str:
    name = NAMES[0]
    shutil.copytree(zoo.MODELS / name, tmp_path / "models" / name)
    change(tmp_path / "models" / name)
    monkeypatch.setattr(zoo, "MODELS", tmp_path / "models")
    return name


def _flip_a_weight_byte(folder: Path) -> None:
    data = bytearray((folder / checkpoint.WEIGHTS).read_bytes())
    data[-3] ^= 0x01
    (folder / checkpoint.WEIGHTS).write_bytes(bytes(data))


@pytest.mark.parametrize("change, says", [
    (_flip_a_weight_byte, "model.safetensors does not match its sha256"),
    (lambda folder: (folder / checkpoint.MARKER).unlink(), "has no complete.json"),
    (lambda folder: (folder / zoo.CARD).write_text("{}"), "card.json is"),
])
def test_a_tampered_zoo_model_is_refused(change, says, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, capsys, samples):
    k = zoo.card(NAMES[0])["num_images"]
    name = _tampered_zoo(tmp_path, monkeypatch, change)
    inputs = _clip(samples, k)
    code = cli.main(["embed", "--model", f"zoo:{name}", *map(str, inputs),
                     "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and says in err and "reinstall iicnet" in err, err
    assert not (tmp_path / "x.png").exists()


def test_an_unknown_zoo_name_lists_the_shipped_ones(capsys):
    assert cli.main(["info", "zoo:no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "no such zoo model" in err and all(name in err for name in NAMES), err


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


def _tensor(pixels: np.ndarray):
    import torch

    return torch.from_numpy(pixels).permute(2, 0, 1)[None]
