"""Files planted beside a model run nothing: a model folder or a registered model's artifact
that also holds pickles (``python_model.pkl``, ``model.pkl``, a torch ``.bin``) and code
files is used through ``iicnet info / embed / restore / eval``, ``iicnet.registry.load_model``
and the served model (``mlflow.pyfunc.load_model``, what ``mlflow models serve`` runs), and
no payload fires: each pickle, if ever unpickled, and each code file, if ever imported,
would create a marker file."""

from __future__ import annotations

import pathlib
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iicnet import registry
from iicnet.app.cli import main
from iicnet.formats import checkpoint
from iicnet.formats.config_file import load as load_config
from iicnet.model import IICNet
from tests.fixtures_mlflow import mlflow_server  # noqa: F401 (fixture)
from tests.test_convert import ROOT, TINY, photo_clip


class Payload:
    """Unpickling this creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def plant(folder: Path, marker: Path) -> list[str]:
    """Pickles and code files in ``folder``, each of which would create ``marker``."""
    bomb = pickle.dumps(Payload(marker))
    code = f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
    files = {"python_model.pkl": bomb, "model.pkl": bomb, "pytorch_model.bin": bomb,
             "__init__.py": code.encode(), "loader.py": code.encode(),
             "sitecustomize.py": code.encode()}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return sorted(files)


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, Path]:
    """``(model folder with planted files, marker)``."""
    cfg = load_config(ROOT / "configs" / "video-k3-small.yaml").override(TINY)
    folder = checkpoint.save(tmp_path / "model", IICNet(cfg).eval(), cfg)
    marker = tmp_path / "PAYLOAD-RAN"
    plant(folder, marker)
    return folder, marker


def test_the_payloads_would_fire(tmp_path: Path):
    """The markers are real: unpickling or importing a planted file does create one."""
    marker = tmp_path / "fired"
    plant(tmp_path, marker)
    pickle.loads((tmp_path / "model.pkl").read_bytes())
    assert marker.exists()


def test_the_cli_loads_only_safetensors_and_json_from_a_planted_folder(
        planted, tmp_path: Path, capsys, davis_shards: Path):
    folder, marker = planted
    frames = []
    for i, frame in enumerate(photo_clip(3, 48, 64)):
        frames.append(tmp_path / f"f{i}.png")
        Image.fromarray(frame).save(frames[-1])
    embedding = tmp_path / "clip.png"
    outcomes = {
        "info": main(["info", str(folder)]),
        "embed": main(["embed", "--model", str(folder), *map(str, frames), "-o",
                       str(embedding)]),
        "restore": main(["restore", "--model", str(folder), str(embedding), "-o",
                         str(tmp_path / "restored")]),
        "eval": main(["eval", "--model", str(folder), "--data", str(davis_shards),
                      "--crop", "32"]),
    }
    out = capsys.readouterr()
    assert outcomes == {"info": 0, "embed": 0, "restore": 0, "eval": 0}, out.err
    restored = sorted((tmp_path / "restored").glob("*.png"))
    assert len(restored) == 3
    assert np.asarray(Image.open(restored[0])).shape == (48, 64, 3)
    assert not marker.exists(), "a planted payload ran"


@pytest.mark.slow
def test_a_registered_model_with_planted_artifacts_loads_and_serves_without_running_them(
        planted, mlflow_server: str, monkeypatch, capsys):  # noqa: F811
    import mlflow
    from mlflow import MlflowClient

    folder, marker = planted
    clean = folder.parent / "clean"
    clean.mkdir()
    for name in (checkpoint.WEIGHTS, checkpoint.CONFIG):
        (clean / name).write_bytes((folder / name).read_bytes())
    cfg = checkpoint.load_config(clean)
    run = registry.start_run(mlflow_server, "planted-test", "planted", cfg)
    model_uri = registry.log_model(mlflow_server, run, clean)
    version = registry.register(mlflow_server, model_uri, "iicnet-planted")
    # Someone with write access to the artifact store adds files to the logged model: at
    # its root (beside MLmodel) and inside its checkpoint folder.
    extra = folder.parent / "extra"
    (extra / "checkpoint").mkdir(parents=True)
    plant(extra, marker)
    plant(extra / "checkpoint", marker)
    MlflowClient(mlflow_server).log_model_artifacts(model_uri.removeprefix("models:/"),
                                                   str(extra))

    uri = f"models:/iicnet-planted/{version}"
    model, _ = registry.load_model(uri, mlflow_server)
    assert sum(p.numel() for p in model.parameters()) > 0
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    assert main(["info", uri]) == 0, capsys.readouterr().err
    served = mlflow.pyfunc.load_model(uri)
    frames = [Image.fromarray(f) for f in photo_clip(3, 32, 32)]
    import base64
    import io

    def b64(picture: Image.Image) -> str:
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    [answer] = served.predict([{"images": [b64(f) for f in frames]}])
    assert answer["embedding"]
    assert not marker.exists(), "a planted payload ran"
