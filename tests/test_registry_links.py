"""MLflow 3's links between a registered version and its logged model, both ways, on each
kind of store a user meets: the embedded default's SQLite file opened in this process, an
``mlflow server`` on SQLite, and one on PostgreSQL (a cluster's).

Checked through ``MlflowClient`` as MLflow's pages read them: the version's source is
``models:/m-<id>`` (the version page's "Source Model"), the logged model's
``mlflow.modelVersions`` tag lists the version (its "Model versions"), its metrics carry the
dataset its run trained on ("Datasets used"), it is named for its task and config, and the
pyfunc's signature has inputs and outputs (the version page's "Schema").
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from iicnet import registry
from iicnet.formats import checkpoint
from iicnet.registry.tracking import process_tracking_uri
from tests.fixtures_mlflow import mlflow_server, start_mlflow, stop_mlflow  # noqa: F401
from tests.test_convert import tiny_model

pytestmark = pytest.mark.slow

NAME = "iicnet-links"
CONFIG_FILE = "configs/video-k3-small.yaml"


@pytest.fixture(scope="module", params=["sqlite-file", "sqlite-server", "postgres-server"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    base = tmp_path_factory.mktemp(request.param)
    if request.param == "sqlite-file":
        yield f"sqlite:///{base / 'mlflow.db'}"
    elif request.param == "sqlite-server":
        process, url = start_mlflow(f"sqlite:///{base / 'mlflow.db'}", base / "artifacts",
                                    base / "server.log")
        try:
            yield url
        finally:
            stop_mlflow(process)
    else:
        yield request.getfixturevalue("mlflow_server")


@pytest.fixture(scope="module")
def registered(store: str, davis_shards: Path, tmp_path_factory: pytest.TempPathFactory):
    """A tiny model trained on ``davis_shards`` (as its run records), logged with a score
    and registered: ``(uri, run_id, model_id, version, model)``."""
    model, cfg = tiny_model()
    saved = checkpoint.save(tmp_path_factory.mktemp("links") / "ckpt", model, cfg)
    # A store opened here keeps artifacts where its experiment says (default: ./mlruns).
    artifacts = (tmp_path_factory.mktemp("artifacts").as_uri() if store.startswith("sqlite:")
                 else None)
    run_id = registry.start_run(store, "links", "tiny", cfg, artifact_location=artifacts)
    registry.log_datasets(store, run_id, {"training": str(davis_shards)})
    before = (os.environ.get("MLFLOW_TRACKING_URI"), _explicit_uri())
    model_uri = registry.log_checkpoint(
        store, run_id, saved, name=registry.logged_model_name(cfg, CONFIG_FILE),
        metrics={"val/restored_psnr": 31.5}, step=7)
    version = registry.register(store, model_uri, NAME, tags={"step": "7"})
    # The process-wide tracking URI the registration needed is put back as it was.
    assert (os.environ.get("MLFLOW_TRACKING_URI"), _explicit_uri()) == before
    return store, run_id, model_uri.removeprefix("models:/"), version, model


def _explicit_uri():
    from mlflow.tracking._tracking_service import utils

    return utils._tracking_uri


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_the_version_points_at_its_logged_model(registered):
    uri, run_id, model_id, version, _ = registered
    found = _client(uri).get_model_version(NAME, version)
    assert found.source == f"models:/{model_id}"
    assert found.run_id == run_id
    # MLflow 3.17's stores keep no model id on a version (its entity and proto mappers leave
    # it out); the link MLflow's pages follow is the source, which names the model.
    assert found.model_id in (None, model_id)


def test_searching_versions_by_the_logged_model_finds_the_version(registered):
    uri, run_id, model_id, version, _ = registered
    found = _client(uri).search_model_versions(f"source_path = 'models:/{model_id}'")
    assert [(v.name, str(v.version), v.run_id) for v in found] == [(NAME, version, run_id)]


def test_the_logged_model_is_named_lists_its_version_and_its_dataset(registered,
                                                                     davis_shards: Path):
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    uri, run_id, model_id, version, _ = registered
    client = _client(uri)
    logged = client.get_logged_model(model_id)
    assert logged.name == "video-k3-small"
    assert logged.source_run_id == run_id
    listed = json.loads(logged.tags[MLFLOW_MODEL_VERSIONS])
    assert [(e["name"], str(e["version"])) for e in listed] == [(NAME, version)]
    [trained_on] = client.get_run(run_id).inputs.dataset_inputs
    assert json.loads(trained_on.dataset.source)["uri"] == str(davis_shards)
    assert [(m.key, m.value, m.step, m.dataset_name, m.dataset_digest) for m in logged.metrics] \
        == [("val/restored_psnr", 31.5, 7, trained_on.dataset.name, trained_on.dataset.digest)]


def test_the_version_loads_the_logged_models_weights(registered):
    uri, _, _, version, model = registered
    restored, _ = registry.load_model(f"models:/{NAME}/{version}", uri)
    assert all(torch.equal(a, b) for a, b in zip(restored.state_dict().values(),
                                                 model.state_dict().values()))


def test_the_versions_signature_has_the_inputs_and_outputs(registered):
    import mlflow

    uri, _, _, version, _ = registered
    with process_tracking_uri(uri):
        signature = mlflow.models.get_model_info(f"models:/{NAME}/{version}").signature
    files = {"type": "array", "items": {"type": "string"}}
    assert signature.inputs.to_dict() == [
        {**files, "name": "images", "required": False},
        {"type": "string", "name": "embedding", "required": False}]
    assert signature.outputs.to_dict() == [
        {"type": "string", "name": "embedding", "required": False},
        {**files, "name": "images", "required": False},
        {**files, "name": "names", "required": False}]


def test_a_logged_models_name_says_what_it_is():
    _, cfg = tiny_model()
    assert registry.logged_model_name(cfg, "configs/video-k3-small.yaml") == "video-k3-small"
    assert registry.logged_model_name(cfg, "mine.yaml") == "video-mine"
    m = cfg.model
    assert registry.logged_model_name(cfg) == f"video-k3-b{m.blocks}-nf{m.nf}"


def test_the_process_wide_uri_is_set_for_the_block_only(monkeypatch: pytest.MonkeyPatch):
    import mlflow

    explicit = _explicit_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with process_tracking_uri("sqlite:///elsewhere.db"):
        assert mlflow.get_tracking_uri() == "sqlite:///elsewhere.db"
        assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///elsewhere.db"
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:9"
    assert _explicit_uri() == explicit
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(KeyError), process_tracking_uri("sqlite:///elsewhere.db"):
        raise KeyError("inside")
    assert "MLFLOW_TRACKING_URI" not in os.environ and _explicit_uri() == explicit
