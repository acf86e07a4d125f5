"""The inference engines: which one runs, OpenVINO's parity with torch on the authors'
checkpoints, its cache, and the fallback to torch when OpenVINO is not installed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from iicnet.convert import engine as engines
from iicnet.formats import checkpoint, embedding_png, official
from iicnet.formats.imagefiles import InputError
from tests.test_convert import ROOT, photo_clip, tiny_model

PARITY = Path(os.environ.get("IICNET_PARITY") or ROOT.parent / "shared" / "parity")
"""The parity data (official checkpoints and outputs); ``IICNET_PARITY`` names another place."""
STEMS = ["st-06", "dual-01-1block", "supp-gray-01-1block"]
FLOAT_TOLERANCE = 1e-5
CPU = torch.device("cpu")


def clip_files(folder: Path, height: int, width: int) -> list[Path]:
    """A 3-frame photo clip written as ``0.png``, ``1.png``, ``2.png`` into ``folder``."""
    from PIL import Image

    files = []
    for j, frame in enumerate(photo_clip(3, height, width)):
        files.append(folder / f"{j}.png")
        Image.fromarray(frame).save(files[-1])
    return files


def test_choice_of_engine(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("IICNET_ENGINE", raising=False)
    installed = engines.openvino_available()
    assert engines.choose("auto", CPU) == ("openvino" if installed else "torch")
    assert engines.choose("torch", CPU) == "torch"
    assert engines.choose("auto", torch.device("cuda")) == "torch"
    with pytest.raises(InputError, match="--engine openvino runs on the CPU"):
        engines.choose("openvino", torch.device("cuda"))
    with pytest.raises(InputError, match="--engine tensorrt: expected one of auto, torch"):
        engines.choose("tensorrt", CPU)
    monkeypatch.setenv("IICNET_ENGINE", "torch")
    assert engines.choose("auto", CPU) == "torch"
    monkeypatch.setenv("IICNET_ENGINE", "onnx")
    with pytest.raises(InputError, match="IICNET_ENGINE=onnx"):
        engines.choose("auto", CPU)


@pytest.mark.slow
def test_without_openvino_the_cli_runs_torch_after_one_note(tmp_path: Path):
    """OpenVINO made unimportable in a fresh process, as on a machine without the extra."""
    model, cfg = tiny_model()
    ckpt = checkpoint.save(tmp_path / "ckpt", model, cfg)
    files = clip_files(tmp_path, 32, 48)
    code = ("import sys; sys.modules['openvino'] = None; from iicnet.app.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    env = {k: v for k, v in os.environ.items() if k != "IICNET_ENGINE"}
    out = tmp_path / "e.png"
    done = subprocess.run([sys.executable, "-c", code, "embed", "--model", str(ckpt),
                           "--device", "cpu", "--engine", "openvino", *map(str, files),
                           "-o", str(out)], capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if "OpenVINO is not installed" in line]
    assert len(notes) == 1 and "iicnet[fast]" in notes[0] and "torch" in notes[0]
    pixels, _ = embedding_png.read(out)
    stack = torch.from_numpy(np.stack([photo_clip(3, 32, 48)[i] for i in (1, 0, 2)]))
    expected = model.encode(stack.permute(0, 3, 1, 2)[None])[0].permute(1, 2, 0).numpy()
    assert np.array_equal(pixels, expected)


needs_openvino = pytest.mark.skipif(not engines.openvino_available(),
                                    reason="OpenVINO is not installed (iicnet[fast])")
"""Converting a model for OpenVINO takes tens of seconds on 2 cores: these tests are slow."""


@needs_openvino
def test_openvino_precision_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path):
    monkeypatch.setenv("IICNET_CACHE", str(tmp_path))
    model, _ = tiny_model()
    monkeypatch.delenv("IICNET_OPENVINO_PRECISION", raising=False)
    assert engines.make("openvino", model, CPU, "fp").precision == engines.DEFAULT_PRECISION
    monkeypatch.setenv("IICNET_OPENVINO_PRECISION", "bf16")
    assert engines.make("openvino", model, CPU, "fp").precision == "bf16"
    monkeypatch.setenv("IICNET_OPENVINO_PRECISION", "fp8")
    with pytest.raises(InputError, match="IICNET_OPENVINO_PRECISION=fp8: expected one of f32"):
        engines.make("openvino", model, CPU, "fp")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ov-cache")


@needs_openvino
@pytest.mark.slow
@pytest.mark.skipif(not PARITY.is_dir(), reason="no ../shared/parity here")
@pytest.mark.parametrize("stem", STEMS)
def test_openvino_matches_torch_on_the_parity_data(stem: str, cache: Path):
    """The authors' checkpoints on their parity input: floats within 1e-5 of torch's, and
    identical after rounding, both ways (restore from the official rounded embedding)."""
    from safetensors.torch import load_file

    imported = official.import_checkpoint(PARITY / f"{stem}.pth")
    model = imported.model.eval()
    ref = load_file(str(PARITY / f"{stem}.outputs.safetensors"))
    images = ref["images_rgb_uint8"]  # (1, K, 3, H, W) uint8, stack order
    embedding = ref["embedding_rgb_uint8"]  # (1, C_e, h, w) uint8
    if model.config.channel_order == "bgr":
        images = images.flip(2)
        embedding = embedding.flip(1) if embedding.shape[1] == 3 else embedding
    ovm = engines.OpenVinoEngine(model, f"parity-{stem}", cache)
    with torch.no_grad():
        e_torch = model.embed(images.float() / 255)
        r_torch = model.restore(embedding.float() / 255)
    e_ov = ovm.run("embed", images.float() / 255)
    r_ov = ovm.run("restore", embedding.float() / 255)
    e_err, r_err = (e_ov - e_torch).abs().max().item(), (r_ov - r_torch).abs().max().item()
    print(f"{stem}: openvino vs torch float max |diff| embed {e_err:.2e}, restore {r_err:.2e}")
    assert e_err < FLOAT_TOLERANCE and r_err < FLOAT_TOLERANCE
    assert torch.equal(ovm.encode(images), model.encode(images))
    assert torch.equal(ovm.decode(embedding), model.decode(embedding))


@needs_openvino
@pytest.mark.slow
def test_openvino_exports_once_per_model_into_the_cache(cache: Path):
    model, _ = tiny_model("video-k3-x2.yaml")
    first = engines.OpenVinoEngine(model, "tiny-x2", cache)
    clip = torch.randint(0, 256, (1, 3, 3, 32, 48), dtype=torch.uint8)
    first.encode(clip)
    files = sorted(p.name for p in first.folder.iterdir())
    assert files == ["embed.bin", "embed.xml"], files
    stamp = (first.folder / "embed.bin").stat().st_mtime_ns
    # another shape and another engine object: the cached conversion serves both
    second = engines.OpenVinoEngine(model, "tiny-x2", cache)
    assert second.folder == first.folder
    e = second.encode(torch.randint(0, 256, (1, 3, 3, 64, 40), dtype=torch.uint8))
    assert e.shape == (1, 3, 32, 20) and e.dtype == torch.uint8
    assert (first.folder / "embed.bin").stat().st_mtime_ns == stamp
    assert not [p for p in cache.rglob("*") if p.name.startswith(".")]
    # other weights get their own entry
    other, _ = tiny_model("video-k3-x2.yaml", seed=1)
    assert engines.OpenVinoEngine(other, "tiny-x2-other", cache).folder != first.folder


@needs_openvino
@pytest.mark.slow
def test_cli_engines_agree_to_rounding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`iicnet embed` / `restore` with --engine openvino and torch on the same tiled clip."""
    from PIL import Image

    from iicnet.app.cli import main

    monkeypatch.setenv("IICNET_CACHE", str(tmp_path / "cache"))
    model, cfg = tiny_model()
    ckpt = checkpoint.save(tmp_path / "ckpt", model, cfg)
    files = clip_files(tmp_path, 80, 136)
    out = {}
    for name in ("torch", "openvino"):
        args = ["--model", str(ckpt), "--device", "cpu", "--engine", name, "--tile", "64"]
        assert main(["embed", *args, *map(str, files), "-o", str(tmp_path / f"{name}.png")]) == 0
        assert main(["restore", *args, str(tmp_path / f"{name}.png"),
                     "-o", str(tmp_path / name)]) == 0
        out[name] = (embedding_png.read(tmp_path / f"{name}.png")[0],
                     np.stack([np.asarray(Image.open(p))
                               for p in sorted((tmp_path / name).iterdir())]))
    assert list((tmp_path / "cache" / "openvino").iterdir())
    for a, b in zip(out["torch"], out["openvino"]):
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
        print(f"torch vs openvino: max {diff.max()}, {(diff > 0).mean():.5%} differ")
        assert diff.max() <= 1 and (diff > 0).mean() <= 0.001


@needs_openvino
@pytest.mark.slow
def test_openvino_export_raises_no_deprecation(tmp_path: Path):
    """Both directions exported with deprecation and future warnings turned into errors (the
    tracer's deprecation failed here), then run on two sizes against torch's floats."""
    import warnings

    model, _ = tiny_model("video-k3-x2.yaml")
    ovm = engines.OpenVinoEngine(model, "tiny-x2-warnings", tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        warnings.simplefilter("error", FutureWarning)
        for direction in ("embed", "restore"):
            ovm.exported(direction)
    for h, w in ((32, 48), (40, 24)):
        clip = torch.rand(1, 3, 3, h, w)
        with torch.no_grad():
            embedding = model.embed(clip)
            restored = model.restore(embedding)
        assert (ovm.run("embed", clip) - embedding).abs().max() < FLOAT_TOLERANCE
        assert (ovm.run("restore", embedding) - restored).abs().max() < FLOAT_TOLERANCE


@needs_openvino
@pytest.mark.slow
def test_a_full_cache_disk_costs_only_speed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture):
    """The OpenVINO cache on a full disk (a 8 KiB tmpfs): `iicnet embed --engine openvino`
    still makes the same PNG after one warning naming the cache, and leaves no partial
    entry; with room again, the next command fills the cache."""

    from iicnet.app.cli import main
    from tests.helpers import resize_tmpfs, tmpfs

    model, cfg = tiny_model()
    ckpt = checkpoint.save(tmp_path / "ckpt", model, cfg)
    files = clip_files(tmp_path, 48, 64)
    args = ["embed", "--model", str(ckpt), "--device", "cpu", "--engine", "openvino",
            *map(str, files)]
    with tmpfs(tmp_path / "cache", "size=8k") as cache:
        monkeypatch.setenv("IICNET_CACHE", str(cache))
        assert main([*args, "-o", str(tmp_path / "full.png")]) == 0
        warned = [r.getMessage() for r in caplog.records if "OpenVINO cache" in r.getMessage()]
        assert len(warned) == 1, warned
        assert str(cache / "openvino") in warned[0] and "No space left on device" in warned[0]
        assert not [p for p in cache.rglob("*") if p.is_file()], list(cache.rglob("*"))
        caplog.clear()
        resize_tmpfs(cache, "64m")
        assert main([*args, "-o", str(tmp_path / "cached.png")]) == 0
        assert not [r for r in caplog.records if "OpenVINO cache" in r.getMessage()]
        entries = [p.name for p in (cache / "openvino").rglob("*") if p.is_file()]
        assert sorted(entries) == ["embed.bin", "embed.xml"], entries
    full, _ = embedding_png.read(tmp_path / "full.png")
    cached, _ = embedding_png.read(tmp_path / "cached.png")
    assert np.array_equal(full, cached)
