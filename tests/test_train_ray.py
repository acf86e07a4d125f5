"""ray_jobs/train.py end to end: real Ray, a real MLflow server, a real S3 server, loopback.

Every run is the job's command line in a subprocess (its own local Ray), on a tiny model for
a handful of steps. Network calls go to servers these tests start on 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from iicnet.formats.config_file import load
from ray_jobs.train import DEFAULT_CONFIG, main
from tests.conftest import S3Server, _free_port
from tests.fixtures_mlflow import mlflow_server  # noqa: F401 (fixture)
from tests.fixtures_ray import RayHead, ray_head  # noqa: F401 (fixture)
from tests.helpers import job_env

REPO = Path(__file__).resolve().parent.parent
TINY = ["--set", "model.blocks=1", "--set", "model.nf=4", "--set", "model.growth=4",
        "--set", "data.crop=32", "--set", "data.batch_size=2", "--set", "data.loader_workers=1",
        "--set", "train.log_every=1", "--set", "train.val_every=2",
        "--set", "train.checkpoint_every=2"]
METRICS = ["loss/total", "loss/emb", "loss/freq", "loss/res", "lr", "grad_norm",
           "samples_per_s", "data_wait_fraction", "val/embedding_psnr", "val/embedding_ssim",
           "val/restored_psnr", "val/restored_ssim"]


def train(args: list[str], env: dict[str, str], timeout: float = 900
          ) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(REPO / "ray_jobs" / "train.py"), *args],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-6000:]}"
    return done


def mlflow_run(tracking: str, name: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`iicnet.run_name` = '{name}'")
    assert len(runs) == 1
    return client, runs[0]


def test_bad_arguments_fail_fast_naming_the_problem(capsys, monkeypatch, davis_shards):
    # An earlier test's registry load can leave MLflow's global URI (and its environment
    # variable) at a server that has stopped since; these checks need no server.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["--set", "model.blocks=0"]) == 2
    assert "model.blocks: must be positive" in capsys.readouterr().err
    assert main(["--set", "nosuch.field=1"]) == 2
    assert "unknown section 'nosuch'" in capsys.readouterr().err
    assert main(["--num-workers", "0"]) == 2
    assert "--num-workers" in capsys.readouterr().err
    assert main(["--data", str(davis_shards), "--set", "data.task=stereo",
                 "--set", "model.num_images=2"]) == 2
    assert "data.task: the stereo task reads flickr1024" in capsys.readouterr().err
    assert main(["--data", str(davis_shards), "--init", "zoo:video-k3-s",
                 "--set", "model.blocks=3"]) == 2
    assert "--init zoo:video-k3-s: another architecture: model.blocks 2 (the config has 3)" \
        in capsys.readouterr().err
    assert main(["--data", str(davis_shards), "--init", "zoo:nosuch"]) == 2
    assert "--init zoo:nosuch:" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")
    assert main(["--data", str(davis_shards)]) == 2
    assert "is not reachable" in capsys.readouterr().err


@pytest.mark.slow
def test_two_workers_train_log_checkpoint_and_register(mlflow_server, davis_shards,  # noqa: F811
                                                      tmp_path, monkeypatch):
    import mlflow

    from iicnet import registry
    from iicnet.formats import checkpoint
    from iicnet.training import STATE

    storage = tmp_path / "results"
    done = train(["--data", str(davis_shards), "--num-workers", "2", "--steps", "4",
                  "--storage", str(storage), "--experiment", "ray-test", "--name", "two",
                  "--force-alias", *TINY],
                 job_env(tmp_path, mlflow_server, MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1"))
    assert "registered: models:/iicnet-video/" in done.stdout
    assert "@candidate -> version" in done.stdout or "@candidate moved to" in done.stdout

    final = storage / "two" / "step-00000004"
    assert {p.name for p in final.iterdir()} >= {"model.safetensors", "config.json",
                                                 "optimizer.safetensors", STATE}
    assert json.loads((final / STATE).read_text())["step"] == 4

    client, run = mlflow_run(mlflow_server, "two")
    assert run.info.status == "FINISHED"
    assert run.data.params["model.blocks"] == "1" and run.data.params["train.steps"] == "4"
    # The full resolved config: fields that were not overridden come from the default YAML.
    assert run.data.params["optim.milestones"] == str(load(DEFAULT_CONFIG).optim.milestones)
    for key in METRICS:
        history = client.get_metric_history(run.info.run_id, key)
        assert history, key
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss/total")] == [
        1, 2, 3, 4]
    # System metrics, sampled each second here, from the one node's first worker.
    system = {key for key in run.data.metrics if key.startswith("system/")}
    assert {"system/node0/cpu_utilization_percentage",
            "system/node0/system_memory_usage_megabytes"} <= system, system
    assert not [key for key in system if not key.startswith("system/node0/")]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "config.json" in artifacts
    # The validation picture, one per validation step in the UI's image series (its slider).
    pictures = [a.path for a in client.list_artifacts(run.info.run_id, "images")
                if a.path.endswith(".png") and "compressed" not in a.path]
    assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in pictures
                  if p.startswith("images/validation+step+")) == [2, 4], pictures

    version = client.get_model_version_by_alias("iicnet-video", "candidate")
    assert version.tags["run_id"] == run.info.run_id and version.tags["step"] == "4"
    assert float(version.tags["val/restored_psnr"]) > 5
    assert "Trained 4 steps on" in version.description and "restored_psnr" in version.description

    # MLflow 3's model entity: found by search, its validation metrics linked to it, the
    # version pointing at it, and the shard sets as the run's dataset inputs.
    (logged,) = [m for m in client.search_logged_models([run.info.experiment_id])
                 if m.source_run_id == run.info.run_id]
    assert logged.status == "READY" and version.source == f"models:/{logged.model_id}"
    assert logged.name == "video-k3-small"  # the default config's name
    linked = {m.key: m.value for m in logged.metrics}
    assert linked["val/restored_psnr"] == pytest.approx(float(version.tags["val/restored_psnr"]),
                                                        abs=1e-4)
    assert [(e["name"], str(e["version"])) for e in  # the model page's list
            json.loads(logged.tags["mlflow.modelVersions"])] == [("iicnet-video", version.version)]
    outputs = client.get_run(run.info.run_id).outputs.model_outputs  # the run page's list
    assert [(o.model_id, o.step) for o in outputs] == [(logged.model_id, 4)]
    inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
    digest = hashlib.sha256((davis_shards / "manifest.json").read_bytes()).hexdigest()[:16]
    assert {i.dataset.digest for i in inputs} == {digest}
    assert {t.value for i in inputs for t in i.tags} == {"training"}  # val: same shard set
    by_id, _ = registry.load_model(f"models:/{logged.model_id}", uri=mlflow_server)
    model, cfg = registry.load_model("models:/iicnet-video@candidate", uri=mlflow_server)
    reference, _ = checkpoint.load(final)
    for key, value in reference.state_dict().items():
        assert (model.state_dict()[key] == value).all(), key
        assert (by_id.state_dict()[key] == value).all(), key
    assert cfg.model.blocks == 1 and cfg.train.steps == 4

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    pyfunc = mlflow.pyfunc.load_model("models:/iicnet-video@candidate")
    frames = list(np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))
    [answer] = pyfunc.predict([{"images": [_b64png(f) for f in frames]}])
    import iicnet
    from iicnet.formats import embedding_png

    expected = iicnet.load("models:/iicnet-video@candidate").embed(frames, as_png=False)
    served, _ = embedding_png.decode(base64.b64decode(answer["embedding"]), "served")
    assert np.array_equal(served, expected)


def _b64png(array: np.ndarray) -> str:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


@pytest.mark.slow
def test_on_a_cluster_the_single_machine_defaults_are_refused_before_anything_starts(
        capsys, monkeypatch, tmp_path: Path):
    from ray_jobs import tune

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")  # nothing listens: nothing may start
    monkeypatch.setenv("IICNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "runs on the Ray cluster at RAY_ADDRESS" in err
    for missing in ("MLFLOW_TRACKING_URI is not set", "--data is missing",
                    "--storage is missing"):
        assert missing in err
    assert not (tmp_path / "cache" / "shards").exists(), "no sample shards built"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    assert main(["--data", "s3://b/shards", "--val-data", str(tmp_path), "--storage",
                 str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert "MLFLOW_TRACKING_URI is sqlite: a store on one node's disk" in err
    assert f"--val-data {tmp_path}: a local path" in err
    assert f"--storage {tmp_path / 'results'}: a local path" in err
    assert "--data s3://b/shards" not in err
    assert tune.main(["--steps", "2", "--storage", "s3://b/sweeps"]) == 2
    err = capsys.readouterr().err
    assert "--data is missing" in err and "--storage" not in err
    assert not (tmp_path / "results").exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.slow
def test_ray_job_submit(ray_head: RayHead, mlflow_server, s3: S3Server, bucket: str,  # noqa: F811
                        samples: Path, tmp_path: Path):
    from data_prep.cli import main as prep

    assert prep(["davis", "--root", str(samples / "davis"), "--out", f"{bucket}/davis",
                 "--shard-size", "1"]) == 0
    # On a cluster each node reaches S3 by its own role; on loopback the job is told the
    # server, its test-only keys and, as docs/cluster.md says for an S3-compatible server,
    # the checksum mode (Ray's own processes do not inherit the driver's environment).
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": mlflow_server,
                                "MLFLOW_DISABLE_TELEMETRY": "true", **s3.env(),
                                "AWS_REQUEST_CHECKSUM_CALCULATION": "WHEN_REQUIRED",
                                "AWS_RESPONSE_CHECKSUM_VALIDATION": "WHEN_REQUIRED"}}
    command = [ray_head.ray(), "job", "submit", "--address", ray_head.dashboard,
               "--working-dir", str(REPO), "--runtime-env-json", json.dumps(runtime_env), "--",
               sys.executable, "ray_jobs/train.py", "--data", f"{bucket}/davis", "--steps", "2",
               "--num-workers", "2", "--storage", f"{bucket}/results", "--experiment",
               "ray-test", "--name", "submitted", *TINY]
    done = subprocess.run(command, env=ray_head.env, cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0 and "succeeded" in done.stdout, (
        f"{done.stdout[-5000:]}\n{done.stderr[-3000:]}")
    keys = {o["Key"] for o in s3.client().list_objects_v2(
        Bucket=bucket.removeprefix("s3://"), Prefix="results/").get("Contents", [])}
    assert "results/submitted/step-00000002/model.safetensors" in keys
    _, run = mlflow_run(mlflow_server, "submitted")
    assert run.info.status == "FINISHED"
