"""ray_jobs/tune.py end to end: real Ray Tune over Ray Train, a real MLflow server on loopback.

One tiny sweep (3 trials of a 4-step, 4-channel model, 2 at a time) runs as the job's command
line in a subprocess with its own local Ray. It interrupts itself once its first trial has
finished (``IICNET_TUNE_INTERRUPT_AFTER=1`` sends it a SIGTERM) and is then resumed with
``--resume``; the tests read what both runs left in Tune's storage, in MLflow and on disk.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from ray_jobs.tune import main
from tests.fixtures_mlflow import mlflow_server  # noqa: F401 (fixture)
from tests.helpers import job_env

REPO = Path(__file__).resolve().parent.parent
NAME = "tune-test-sweep"
TINY = ["--set", "model.nf=4", "--set", "model.growth=4", "--set", "data.crop=32",
        "--set", "data.batch_size=1", "--set", "data.loader_workers=0",
        "--steps", "4", "--val-every", "2", "--space", "model.blocks=choice:1,2",
        "--num-samples", "3", "--max-concurrent", "2", "--max-failures", "0",
        "--min-embedding-psnr", "10"]
SEARCHED = ["loss.lambda_emb", "loss.lambda_freq", "loss.lambda_res", "model.blocks"]


@dataclass
class Sweep:
    tracking: str
    storage: Path
    out: Path
    interrupted: subprocess.CompletedProcess
    resumed: subprocess.CompletedProcess
    finished_first: dict[str, dict]
    """Trials finished before the interruption: trial id -> what they had then."""


def tune(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "ray_jobs" / "tune.py"), *args], env=env,
                          cwd=REPO, capture_output=True, text=True, timeout=540)


def explain(done: subprocess.CompletedProcess) -> str:
    return f"exit {done.returncode}\n{done.stdout[-5000:]}\n{done.stderr[-5000:]}"


def trial_states(storage: Path) -> dict[str, tuple[str, dict]]:
    """trial id -> (Tune status, last result) from the experiment's saved state."""
    from ray import tune as ray_tune

    analysis = ray_tune.ExperimentAnalysis(str(storage / NAME))
    return {t.trial_id: (t.status, dict(t.last_result)) for t in analysis.trials}


def child_runs(tracking: str) -> dict[str, object]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking)
    exp = client.get_experiment_by_name("iicnet-video")
    runs = client.search_runs([exp.experiment_id],
                              filter_string=f"tags.`iicnet.sweep` = '{NAME}'")
    return {r.data.tags.get("iicnet.trial_id", "parent"): r for r in runs}


def history(tracking: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from mlflow import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(tracking).get_metric_history(run_id,
                                                                                       key))


@pytest.fixture(scope="module")
def sweep(mlflow_server: str, davis_shards: Path,  # noqa: F811 (fixture)
          tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    base = tmp_path_factory.mktemp("tune")
    storage, out = base / "ray_results", base / "out"
    common = ["--storage", str(storage), "--out", str(out)]
    interrupted = tune([*TINY, *common, "--data", str(davis_shards), "--name", NAME],
                       job_env(base, mlflow_server, IICNET_TUNE_INTERRUPT_AFTER="1"))
    assert interrupted.returncode == 3, explain(interrupted)
    runs = child_runs(mlflow_server)
    finished = {}
    for trial_id, (status, result) in trial_states(storage).items():
        if status == "TERMINATED":
            checkpoints = sorted(p.name for p in (storage / NAME / "train" / trial_id).iterdir())
            finished[trial_id] = {
                "result": result, "checkpoints": checkpoints,
                "history": history(mlflow_server, runs[trial_id].info.run_id,
                                   "val/restored_psnr")}
    resumed = tune(["--resume", NAME, *common], job_env(base, mlflow_server))
    assert resumed.returncode == 0, explain(resumed)
    return Sweep(mlflow_server, storage, out, interrupted, resumed, finished)


def test_bad_arguments_fail_fast_naming_the_problem(capsys, monkeypatch, tmp_path: Path):
    monkeypatch.setenv("IICNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["--space", "model.blocks=uniform:1:4"]) == 2
    assert "model.blocks is not a float field; use randint or choice" in capsys.readouterr().err
    assert main(["--space", "loss.lambda_res=choice:-1,1"]) == 2
    assert "loss.lambda_res: must not be negative" in capsys.readouterr().err
    assert main(["--set", "model.blocks=2", "--space", "model.blocks=choice:1,2"]) == 2
    assert "both --set and --space" in capsys.readouterr().err
    assert main(["--num-samples", "0"]) == 2
    assert "--num-samples: must be at least 1" in capsys.readouterr().err
    assert main(["--steps", "4", "--grace-steps", "8"]) == 2
    assert "--grace-steps: 8 is beyond" in capsys.readouterr().err
    assert main(["--resume", "nosuch", "--storage", str(tmp_path / "results")]) == 2
    assert "--resume nosuch: no sweep of that name" in capsys.readouterr().err


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_without_rerunning_finished_trials(sweep: Sweep):
    assert "IICNET_TUNE_INTERRUPT_AFTER=1: interrupting" in sweep.interrupted.stdout
    assert f"--resume {NAME}" in sweep.interrupted.stdout
    assert sweep.finished_first, "no trial had finished when the sweep was interrupted"
    assert len(sweep.finished_first) < 3
    states = trial_states(sweep.storage)
    assert len(states) == 3 and {s for s, _ in states.values()} == {"TERMINATED"}
    runs = child_runs(sweep.tracking)
    for trial_id, before in sweep.finished_first.items():
        status, result = states[trial_id]
        # Same last result (same wall-clock stamp), no new checkpoints, no new validations.
        assert result["timestamp"] == before["result"]["timestamp"]
        assert result["step"] == before["result"]["step"]
        train_dir = sweep.storage / NAME / "train" / trial_id
        assert sorted(p.name for p in train_dir.iterdir()) == before["checkpoints"]
        assert history(sweep.tracking, runs[trial_id].info.run_id,
                       "val/restored_psnr") == before["history"]
    assert "(resumed)" in sweep.resumed.stdout
    # Each stop sealed the Tune state in the parent run; the last seal matches what is there.
    from ray_jobs.sweep_state import STATE_TAG, state_digest

    parent = child_runs(sweep.tracking)["parent"]
    assert parent.data.tags[STATE_TAG] == state_digest(str(sweep.storage), NAME, None)


@pytest.mark.slow
def test_resuming_a_finished_sweep_does_nothing(sweep: Sweep, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sweep.tracking)
    monkeypatch.setenv("IICNET_CACHE", str(sweep.storage.parent / "cache"))
    assert main(["--resume", NAME, "--storage", str(sweep.storage)]) == 0
    assert f"sweep {NAME} has already finished" in capsys.readouterr().out


@pytest.mark.slow
def test_the_sweep_is_tracked_registered_and_reported(sweep: Sweep):
    from mlflow import MlflowClient

    from iicnet import registry

    client = MlflowClient(sweep.tracking)
    runs = child_runs(sweep.tracking)
    parent = runs.pop("parent")
    assert parent.info.status == "FINISHED" and parent.data.tags["iicnet.kind"] == "sweep"
    assert parent.data.params["tune.search"] == "optuna"
    assert parent.data.params["tune.num_samples"] == "3"
    assert parent.data.params["tune.min_embedding_psnr"] == "10.0"
    assert parent.data.params["tune.space.model.blocks"] == "choice:1,2"
    assert parent.data.metrics["tune/trials"] == 3
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/results.csv", "sweep/results.json", "sweep/pareto.png"} <= artifacts

    table = json.loads((sweep.out / "results.json").read_text())
    assert table["sweep"] == NAME and table["parent_run_id"] == parent.info.run_id
    trials = {t["trial_id"]: t for t in table["trials"]}
    assert set(trials) == set(runs) and len(runs) == 3
    for trial_id, run in runs.items():
        row = trials[trial_id]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED" and row["run_id"] == run.info.run_id
        assert run.data.tags["tune.status"] == row["status"] != "failed"
        for field in SEARCHED:
            assert float(run.data.params[field]) == pytest.approx(row[field])
        assert run.data.params["model.blocks"] in ("1", "2")
        assert run.data.params["model.nf"] == "4"  # --set fixed it for every trial
        assert run.data.params["train.steps"] == "4"
        assert row["restored_psnr"] > 0 and row["embedding_psnr"] > 0
        assert run.data.metrics["tune/objective"] == pytest.approx(row["objective"])
        assert history(sweep.tracking, run.info.run_id, "val/restored_psnr")

    best = [t for t in table["trials"] if t["best"]]
    assert len(best) == 1 and best[0]["trial_id"] == table["best_trial"]
    assert best[0]["pareto"] and runs[best[0]["trial_id"]].data.tags["tune.best"] == "true"
    version = client.get_model_version_by_alias("iicnet-video", "tuned")
    assert version.run_id == best[0]["run_id"]
    assert version.tags["trial_id"] == best[0]["trial_id"] and version.tags["sweep"] == NAME
    model, cfg = registry.load_model("models:/iicnet-video@tuned", sweep.tracking)
    assert cfg.model.nf == 4 and cfg.model.blocks == best[0]["model.blocks"]
    assert cfg.loss.lambda_res == pytest.approx(best[0]["loss.lambda_res"])

    with (sweep.out / "results.csv").open() as f:
        assert sorted(r["trial_id"] for r in csv.DictReader(f)) == sorted(runs)
    png = sweep.out / "pareto.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    for path in ("results.csv", "results.json", "pareto.png"):
        assert str(sweep.out / path) in sweep.resumed.stdout
    assert "registered: models:/iicnet-video@tuned" in sweep.resumed.stdout
    assert best[0]["trial_id"] in sweep.resumed.stdout


@pytest.mark.parametrize(("cpus", "workers", "limit", "expected"), [
    (2, 1, None, {"max_concurrent": 2, "threads": 1, "num_cpus": 4}),
    (2, 2, None, {"max_concurrent": 1, "threads": 1, "num_cpus": 3}),
    (2, 1, 1, {"max_concurrent": 1, "threads": 2, "num_cpus": 3}),
    (16, 2, 2, {"max_concurrent": 2, "threads": 4, "num_cpus": 18}),
])
def test_local_trials_share_the_cores_and_each_driver_gets_a_cpu(monkeypatch, cpus, workers,
                                                                 limit, expected):
    from ray_jobs import tune as job

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    plan = job.resources({"workers_per_trial": workers, "gpu": False, "max_concurrent": limit})
    assert {k: plan[k] for k in expected} == expected
    assert plan["per_worker"] == {"CPU": expected["threads"]}
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    on_cluster = job.resources({"workers_per_trial": workers, "gpu": True, "max_concurrent": 8})
    assert on_cluster == {"max_concurrent": 8, "num_cpus": None, "threads": None,
                          "per_worker": None}


def test_settings_of_the_embedded_default_and_how_flags_change_them():
    from ray_jobs.tune import new_settings, parse_args

    embedded = new_settings(parse_args([]))
    train = embedded["config"]["train"]
    assert (train["steps"], train["val_every"], train["checkpoint_every"]) == (60, 20, 20)
    assert embedded["config"]["model"]["blocks"] == 2 and embedded["num_samples"] >= 4
    assert embedded["space"] == ["loss.lambda_emb=loguniform:0.25:4.0",
                                 "loss.lambda_freq=loguniform:0.0001:0.01",
                                 "loss.lambda_res=loguniform:0.3:10.0",
                                 "model.blocks=choice:1,2,3"]
    assert (embedded["min_embedding_psnr"], embedded["grace_steps"]) == (20.0, 20)

    fixed = new_settings(parse_args(["--set", "train.steps=30", "--set",
                                     "loss.lambda_freq=0.002", "--space",
                                     "optim.lr=loguniform:1e-4:1e-3", "--name", "s"]))
    assert fixed["config"]["train"]["steps"] == 30 and fixed["name"] == "s"
    assert fixed["config"]["loss"]["lambda_freq"] == 0.002
    assert [s.partition("=")[0] for s in fixed["space"]] == [
        "loss.lambda_emb", "loss.lambda_res", "model.blocks", "optim.lr"]

    short = new_settings(parse_args(["--steps", "8"]))
    assert short["config"]["train"]["val_every"] == 8 == short["grace_steps"]
    published = new_settings(parse_args(["--config", "configs/video-k5.yaml"]))
    assert published["config"]["train"]["steps"] == 500_000
    assert published["min_embedding_psnr"] == 30.0
    assert "model.blocks=choice:5,10,15" in published["space"]
