"""Running the same training again, as a user of ``make run`` does: Ctrl-C says how to resume
and the next run resumes; a finished recipe is reused, not retrained; the alias moves only to
a version that scores better."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures_mlflow import mlflow_server  # noqa: F401 (fixture)
from tests.helpers import job_env
from tests.test_train_ray import REPO, TINY, mlflow_run

STEPS = 60
EVERY = 20


def versions(tracking: str, name: str = "iicnet-video") -> list[str]:
    from mlflow import MlflowClient

    return sorted(v.version for v in MlflowClient(tracking).search_model_versions(
        f"name = '{name}'"))


def first_checkpoint(storage: Path, process: subprocess.Popen, timeout: float = 300) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        found = sorted(storage.glob("*/step-*/complete.json"))
        if found:
            return found[0].parent
        time.sleep(0.5)
    process.kill()
    out, err = process.communicate()
    raise AssertionError(f"no checkpoint before the run ended:\n{out[-3000:]}\n{err[-3000:]}")


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def newest_step(storage: Path, name: str) -> int:
    return max(int(p.parent.name.split("-")[1])
               for p in (storage / name).glob("step-*/complete.json"))


def checkpoint_after(storage: Path, name: str, step: int, process: subprocess.Popen,
                     timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if list((storage / name).glob("step-*/complete.json")) and \
                newest_step(storage, name) > step:
            return
        time.sleep(0.3)
    process.kill()
    out, err = process.communicate()
    raise AssertionError(f"no checkpoint after step {step}:\n{out[-3000:]}\n{err[-3000:]}")


@pytest.mark.slow
def test_ctrl_c_and_sigterm_checkpoint_resume_the_recorded_recipe_then_reuse(
        mlflow_server, davis_shards: Path, tmp_path: Path):  # noqa: F811
    storage = tmp_path / "results"
    args = [sys.executable, str(REPO / "ray_jobs" / "train.py"), "--data", str(davis_shards),
            "--steps", str(STEPS), "--storage", str(storage), "--experiment", "rerun-test",
            *TINY, "--set", "train.val_every=30", "--set", "train.log_every=5",
            "--set", f"train.checkpoint_every={EVERY}"]
    env = job_env(tmp_path, mlflow_server)
    paced = {**env, "IICNET_FAULT_STEP_S": "0.1"}  # so that a signal lands between checkpoints

    # Ctrl-C in a terminal reaches the whole foreground process group. A shell that starts
    # a job in the background leaves SIGINT ignored, which Python then keeps: restore it,
    # as a terminal's foreground job has it.
    first = subprocess.Popen(args, env=paced, cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True,
                             preexec_fn=_default_sigint)
    name = first_checkpoint(storage, first).parent.name
    time.sleep(1)
    os.killpg(first.pid, signal.SIGINT)
    out, err = first.communicate(timeout=180)
    assert first.returncode == 130, f"{out[-3000:]}\n{err[-3000:]}"
    # A checkpoint of the step it was at, not only the newest periodic one.
    stopped = newest_step(storage, name)
    assert f"stop requested by the driver: checkpoint at step {stopped}" in out, out[-3000:]
    assert f"interrupted: run {name} stopped after a checkpoint of the step it was at; " \
           f"newest checkpoint: step-{stopped:08d}" in err
    again_line = f"ray_jobs/train.py --resume {name} --storage {storage}"
    assert again_line in err
    # Ray's own processes may print tracebacks as they go down (forwarded, "(Actor pid=..)"
    # prefixed lines); the driver itself prints none.
    assert not [line for line in err.splitlines() if line.startswith("Traceback")], err
    _, run = mlflow_run(mlflow_server, name)
    assert run.info.status == "KILLED"
    assert versions(mlflow_server) == []

    # The resume line exactly as printed goes on with the run's own recipe (steps, cadence,
    # data, experiment), and SIGTERM (ray job stop, a container stop) gets what Ctrl-C got.
    resumed = subprocess.Popen([sys.executable, *again_line.split()], env=paced, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    checkpoint_after(storage, name, stopped, resumed)
    time.sleep(0.5)
    resumed.send_signal(signal.SIGTERM)
    out, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 143, f"{out[-3000:]}\n{err[-3000:]}"
    assert f"run {name} goes on with its recorded recipe" in out and "changed by" not in out
    assert f"run {name}: video task, 2 worker(s) on CPU, {STEPS} steps" in out
    terminated = newest_step(storage, name)
    assert terminated > stopped
    assert f"stop requested by the driver: checkpoint at step {terminated}" in out
    assert f"terminated (SIGTERM): run {name} stopped after a checkpoint" in err
    # Its periodic checkpoints kept the recorded cadence (the default config's is 200).
    periodic = {int(p.name.split("-")[1]) for p in (storage / name).glob("step-*")}
    assert {s for s in periodic if s > stopped and s != terminated} <= set(range(0, STEPS, EVERY))
    _, run = mlflow_run(mlflow_server, name)
    assert run.info.status == "KILLED"

    # An architecture change on resume is refused before anything starts.
    refused = subprocess.run([sys.executable, *again_line.split(), "--set", "model.nf=8"],
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "keeps its architecture" in refused.stderr
    assert "model.nf: 4 -> 8" in refused.stderr

    again = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, f"{again.stdout[-3000:]}\n{again.stderr[-3000:]}"
    assert f"resuming run {name} (killed earlier)" in again.stdout
    client, run = mlflow_run(mlflow_server, name)
    assert run.info.status == "FINISHED"
    resumed_from = [m.value for m in
                    client.get_metric_history(run.info.run_id, "train/resumed_from")]
    assert sorted(resumed_from) == [stopped, terminated]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss/total")]
    assert sorted(steps) == list(range(5, STEPS + 1, 5)), "each step logged once"
    assert versions(mlflow_server) == ["1"]
    assert "@candidate -> version 1 (the first)" in again.stdout

    third = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True,
                           timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"was trained already: run {name}, registered as models:/iicnet-video/1" \
        in third.stdout
    assert versions(mlflow_server) == ["1"]


def test_the_alias_moves_only_to_a_better_version(mlflow_server, tmp_path: Path):  # noqa: F811
    from iicnet import registry
    from iicnet.formats import checkpoint
    from tests.test_convert import tiny_model

    name = "alias-test"
    directory = checkpoint.save(tmp_path / "ckpt", *tiny_model())
    run_id = registry.start_run(mlflow_server, "alias-test", "alias-run",
                                checkpoint.load_config(directory))
    model_uri = registry.log_model(mlflow_server, run_id, directory)

    def add(score: str | None, force: bool = False) -> registry.AliasClaim:
        tags = {} if score is None else {"val/restored_psnr": score}
        version = registry.register(mlflow_server, model_uri, name, alias=None, tags=tags)
        return registry.claim_alias(mlflow_server, name, "candidate", version,
                                    "val/restored_psnr", force=force)

    first = add("20.0")
    assert first.moved and first.holder is None
    worse = add("15.5")
    assert not worse.moved and worse.holder == "1" and worse.holder_score == 20.0
    assert "@candidate stays on version 1" in worse.describe("restored PSNR")
    unscored = add(None)
    assert not unscored.moved
    better = add("21.25")
    assert better.moved and better.version == "4" and better.holder == "1"
    forced = add("3.0", force=True)
    assert forced.moved
    from mlflow import MlflowClient

    assert MlflowClient(mlflow_server).get_model_version_by_alias(name, "candidate").version \
        == "5"


def test_promote_moves_champion_only_to_a_better_version(mlflow_server, tmp_path: Path,  # noqa: F811
                                                         capsys, monkeypatch):
    from iicnet import registry
    from iicnet.app.cli import main
    from iicnet.formats import checkpoint
    from tests.test_convert import tiny_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    name = "promote-test"
    directory = checkpoint.save(tmp_path / "ckpt", *tiny_model())
    run_id = registry.start_run(mlflow_server, name, "promote-run",
                                checkpoint.load_config(directory))
    model_uri = registry.log_model(mlflow_server, run_id, directory)
    for score in ("18.0", "17.0"):
        registry.register(mlflow_server, model_uri, name, tags={"val/restored_psnr": score})

    assert main(["promote", f"models:/{name}/1", "--to", "champion"]) == 0
    assert "@champion -> version 1" in capsys.readouterr().out
    assert main(["promote", f"models:/{name}@candidate", "--to", "champion"]) == 3
    out = capsys.readouterr().out
    assert "@champion stays on version 1" in out and "--force" in out
    assert main(["promote", f"models:/{name}@candidate", "--to", "champion", "--force"]) == 0
    assert "@champion moved to version 2" in capsys.readouterr().out
    assert main(["promote", f"models:/{name}@nosuch", "--to", "champion"]) == 2
    assert "cannot resolve the alias" in capsys.readouterr().err
    code = main(["info", f"models:/{name}@champion"])
    assert code == 0 and "promote-test version 2" in capsys.readouterr().out
    assert main(["info", model_uri]) == 0 and model_uri.startswith("models:/m-")
