"""A model trained here, registered in a loopback MLflow server, used through the CLI, the
Python API and ``mlflow models serve`` over HTTP.

The model is tiny (video K=3, one coupling block, 8 features) and trained with plain torch
for :data:`STEPS` steps on 32x32 crops of panning clips cut from scikit-image photographs
(astronaut, rocket, Hubble), one thread, seed 0, about 40 s on a loaded 2-core machine. It
is then tested on a clip from another photograph (coffee). Measured on this machine:
restored PSNR 24.80 dB untrained, 25.77 dB after 120 steps (embedding 27.26 -> 30.01 dB).
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import iicnet
from iicnet import registry
from iicnet.app.cli import main
from iicnet.formats import checkpoint, embedding_png
from iicnet.formats.config_file import load as load_config
from iicnet.model import IICNet
from iicnet.model.losses import iicnet_loss
from iicnet.model.metrics import psnr
from tests.conftest import _free_port
from tests.fixtures_mlflow import mlflow_server  # noqa: F401
from tests.test_convert import ROOT, TINY, photo_clip

pytestmark = pytest.mark.slow

STEPS = 120
SHIFT = 3
MIN_GAIN_DB = 0.5
"""Trained minus untrained restored PSNR on the coffee clip: 0.97 dB measured."""


def _pan_batch(rng: np.random.Generator, photos: list[np.ndarray], n: int = 4,
               size: int = 32) -> torch.Tensor:
    """``(n, 3, 3, size, size)`` floats: 3-frame pans, middle frame first."""
    clips = []
    for _ in range(n):
        photo = photos[rng.integers(len(photos))]
        y = rng.integers(0, photo.shape[0] - size)
        x = rng.integers(0, photo.shape[1] - size - 2 * SHIFT)
        frames = [photo[y:y + size, x + j * SHIFT:x + j * SHIFT + size] for j in range(3)]
        clips.append(np.stack([frames[1], frames[0], frames[2]]))
    return torch.from_numpy(np.stack(clips)).permute(0, 1, 4, 2, 3).float() / 255


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny model before and after training, as checkpoint directories."""
    from skimage import data

    base = tmp_path_factory.mktemp("models")
    cfg = load_config(ROOT / "configs" / "video-k3-small.yaml").override(TINY)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # far faster than 2 contending threads on a shared machine
    try:
        torch.manual_seed(0)
        model = IICNet(cfg)
        untrained = checkpoint.save(base / "untrained", model, cfg)
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
        photos = [data.astronaut(), data.rocket(), data.hubble_deep_field()]
        rng = np.random.default_rng(0)
        model.train()
        for _ in range(STEPS):
            x = _pan_batch(rng, photos)
            loss = iicnet_loss(model(x), x, x[:, 0], cfg.loss).total
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
        trained = checkpoint.save(base / "trained", model.eval(), cfg)
    finally:
        torch.set_num_threads(threads)
    return {"untrained": untrained, "trained": trained}


@pytest.fixture(scope="module")
def registered(mlflow_server: str, checkpoints: dict[str, Path]) -> str:  # noqa: F811
    """The trained model, registered as ``iicnet-video`` version 1 with alias candidate."""
    cfg = checkpoint.load_config(checkpoints["trained"])
    run = registry.start_run(mlflow_server, "serving-test", "tiny", cfg)
    model_uri = registry.log_model(mlflow_server, run, checkpoints["trained"])
    assert registry.register(mlflow_server, model_uri, "iicnet-video") == "1"
    return "models:/iicnet-video@candidate"


@pytest.fixture
def tracking(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> str:  # noqa: F811
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    return mlflow_server


def test_round_trip_through_the_cli_from_the_registry(
        registered: str, tracking: str, checkpoints: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture):
    clip = photo_clip(3, 101, 151, shift=SHIFT)
    paths = []
    for j, frame in enumerate(clip):
        paths.append(tmp_path / "in" / f"{j}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(frame).save(paths[-1])
    emb = tmp_path / "emb.png"
    assert main(["embed", "--model", registered, *map(str, paths), "-o", str(emb)]) == 0
    _, info = embedding_png.read(emb)
    assert (info.model, info.model_version) == ("iicnet-video", "1")
    assert main(["restore", "--model", "models:/iicnet-video/1", str(emb),
                 "-o", str(tmp_path / "out")]) == 0
    restored = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "out").iterdir())]
    trained = _mean_psnr(restored, clip)
    untrained = _mean_psnr(iicnet.load(str(checkpoints["untrained"]), device="cpu")
                           .restore(iicnet.load(str(checkpoints["untrained"]), device="cpu")
                                    .embed(clip)), clip)
    assert trained > untrained + MIN_GAIN_DB, f"restored PSNR: trained {trained:.2f} dB, " \
                                              f"untrained {untrained:.2f} dB"

    assert main(["info", registered]) == 0
    assert "from iicnet-video version 1" in capsys.readouterr().out
    for uri, message in [("models:/iicnet-video@champion", "champion"),
                         ("models:/iicnet-nothing/1", "iicnet-nothing")]:
        assert main(["restore", "--model", uri, str(emb), "-o", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert message in err and not (tmp_path / "x").exists()


def _mean_psnr(restored: list[np.ndarray], clip: list[np.ndarray]) -> float:
    return float(np.mean([psnr(torch.tensor(r).permute(2, 0, 1),
                               torch.tensor(c).permute(2, 0, 1)).item()
                          for r, c in zip(restored, clip)]))


def test_python_api_from_the_registry(registered: str, tracking: str):
    conv = iicnet.load(registered, device="cpu")
    assert conv.source.version == "1" and conv.names == ["frame_-1", "frame_0", "frame_+1"]
    clip = photo_clip(3, 40, 50, shift=SHIFT)
    assert [r.shape for r in conv.restore(conv.embed(clip))] == [(40, 50, 3)] * 3


def test_the_pyfunc_declares_its_records_and_carries_an_input_example(registered: str,
                                                                     tracking: str):
    import warnings

    import mlflow

    info = mlflow.models.get_model_info(registered)
    assert info.signature.inputs.input_names() == ["images", "embedding"]
    assert info.signature.outputs.input_names() == ["embedding", "images", "names"]
    assert info.signature.params is None
    model = mlflow.models.Model.load(registered)
    example = model.load_input_example(mlflow.artifacts.download_artifacts(registered))
    assert len(example.iloc[0]["images"]) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # MLflow warns when it drops what it was given
        pyfunc = mlflow.pyfunc.load_model(registered)
        [answer] = pyfunc.predict(example)
        [back] = pyfunc.predict([{"embedding": answer["embedding"]}])
    assert embedding_png.decode(base64.b64decode(answer["embedding"]), "example")[0].shape \
        == (32, 32, 3)
    assert len(back["images"]) == len(back["names"]) == 3
    # Anything but the declared records is refused before it reaches the model.
    stack = np.zeros((1, 3, 3, 16, 16), dtype=np.uint8)
    with pytest.raises(mlflow.exceptions.MlflowException, match="schema"):
        pyfunc.predict(stack)


def _b64png(array: np.ndarray) -> str:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def test_mlflow_models_serve_over_http(registered: str, tracking: str, tmp_path: Path):
    port = _free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", registered,
             "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.5)
        conv = iicnet.load(registered, device="cpu")
        clip = photo_clip(3, 30, 45, shift=SHIFT)

        # PNG files in base64, one record per request item
        answer = _post(f"{url}/invocations",
                       {"dataframe_records": [{"images": [_b64png(f) for f in clip]}]})
        [record] = answer["predictions"]
        png = base64.b64decode(record["embedding"])
        assert np.array_equal(embedding_png.decode(png, "served")[0],
                              conv.embed(clip, as_png=False))
        answer = _post(f"{url}/invocations",
                       {"dataframe_records": [{"embedding": record["embedding"]}]})
        [record] = answer["predictions"]
        restored = [np.asarray(Image.open(io.BytesIO(base64.b64decode(s))))
                    for s in record["images"]]
        assert record["names"] == conv.names
        assert np.array_equal(np.stack(restored), np.stack(conv.restore(png)))

    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
