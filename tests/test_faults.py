"""Failure paths, tried the way an attacker or a clumsy user would.

Each case asserts what the user sees (an exit status or an exception, and its message) and
what is left behind. The tables run in seconds; the cases that need an MLflow store or start
Ray are marked slow (CI runs them).

- resume of a sweep whose storage was written by someone else: refused before Ray unpickles
  anything, so a planted ``tuner.pkl`` never runs;
- configs: every size bounded, NaN and infinity refused, a model too large to build refused
  before any allocation, from a mapping, a YAML file and a checkpoint's ``config.json``;
- checkpoints: truncated, bit-flipped, wrong-shaped, NaN-holding or half-copied ones give a
  ``CheckpointError`` naming the file and what is wrong (never a ``SafetensorError``), and
  the newest complete sibling when there is one.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from iicnet.formats import checkpoint
from iicnet.formats.config_file import load as load_yaml
from iicnet.model import IICNet
from iicnet.model.config import MAX_PARAMETERS, Config, ConfigError, from_dict, parameter_count
from iicnet.training import StateError, Trainer, read_state
from tests.fixtures_mlflow import mlflow_server  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parent.parent
TINY = ["model.num_images=2", "model.blocks=1", "model.nf=4", "model.growth=4",
        "data.crop=16", "data.batch_size=2"]


def tiny(*extra: str) -> Config:
    return Config().override([*TINY, *extra])


class CreatesAFile:
    """Unpickling this creates ``path``: the stand-in for code an attacker plants."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


# --- sweep state: nothing unpickled that the sweep did not write ------------------------

@pytest.fixture(scope="module")
def sweep_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One local MLflow store (SQLite) for the module: creating one takes seconds."""
    return tmp_path_factory.mktemp("sweep-cache")


@pytest.fixture
def sweep_env(monkeypatch, tmp_path: Path, sweep_cache: Path):
    """The local MLflow store and a fresh Tune storage folder."""
    monkeypatch.setenv("IICNET_CACHE", str(sweep_cache))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return tmp_path / "ray_results"


def planted_sweep(storage: Path, name: str, *, sealed: bool) -> dict:
    """The files a stopped sweep leaves (settings, Tune state) and its MLflow parent run,
    sealed as ``tune.py`` seals them when ``sealed``."""
    from iicnet import registry
    from ray_jobs import common, tune

    args = tune.parse_args(["--name", name, "--storage", str(storage),
                            *[f"--set={o}" for o in TINY], "--steps", "4"])
    settings = tune.new_settings(args)
    uri = registry.tracking_uri(common.default_tracking()[0])
    settings["parent_run_id"] = registry.start_run(
        uri, settings["experiment"], name, from_dict(settings["config"]),
        tags={tune.SWEEP_TAG: name, "iicnet.kind": "sweep"})
    tune.save_settings(settings, str(storage), None)
    (storage / name / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    (storage / name / "tuner.pkl").write_bytes(pickle.dumps({"what": "Tune's own state"}))
    if sealed:
        tune.seal_state(uri, settings, str(storage), None)
        registry.Tracker(uri, settings["parent_run_id"]).finish("KILLED")
    return settings


@pytest.mark.slow  # a local MLflow store takes 10-20 s to create
def test_resume_refuses_a_planted_tuner_pkl_and_never_runs_it(sweep_env: Path, tmp_path,
                                                                capsys):
    from ray_jobs import tune

    planted_sweep(sweep_env, "s1", sealed=True)
    evidence = tmp_path / "code-ran"
    (sweep_env / "s1" / "tuner.pkl").write_bytes(pickle.dumps(CreatesAFile(evidence)))

    assert tune.main(["--resume", "s1", "--storage", str(sweep_env)]) == 2
    err = capsys.readouterr().err
    assert "--resume s1: the sweep's state in" in err and "changed since" in err
    assert "Traceback" not in err
    assert not evidence.exists(), "the planted pickle was unpickled"
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized(), "Ray was started before the refusal"


@pytest.mark.slow  # a local MLflow store takes 10-20 s to create
def test_resume_refuses_state_that_was_never_sealed(sweep_env: Path, tmp_path, capsys):
    from ray_jobs import tune

    planted_sweep(sweep_env, "s2", sealed=False)
    evidence = tmp_path / "code-ran"
    (sweep_env / "s2" / "tuner.pkl").write_bytes(pickle.dumps(CreatesAFile(evidence)))
    assert tune.main(["--resume", "s2", "--storage", str(sweep_env)]) == 2
    assert "was never sealed" in capsys.readouterr().err
    assert not evidence.exists()


@pytest.mark.slow  # a local MLflow store takes 10-20 s to create
def test_a_sealed_state_passes_and_any_added_file_breaks_the_seal(sweep_env: Path):
    from iicnet import registry
    from ray_jobs import common, tune

    settings = planted_sweep(sweep_env, "s3", sealed=True)
    uri = registry.tracking_uri(common.default_tracking()[0])
    tune.check_sealed(uri, settings, str(sweep_env), None)  # untouched: accepted
    # The trials' Ray Train folders (our sealed checkpoints, Train's JSON) are not covered.
    (sweep_env / "s3" / "train" / "t1").mkdir(parents=True)
    (sweep_env / "s3" / "train" / "t1" / "x.json").write_text("{}")
    tune.check_sealed(uri, settings, str(sweep_env), None)
    trial = sweep_env / "s3" / "trial_0"
    trial.mkdir()
    (trial / "error.pkl").write_bytes(pickle.dumps(CreatesAFile(sweep_env / "ran")))
    with pytest.raises(tune.SweepStateError, match="changed since the sweep last stopped"):
        tune.check_sealed(uri, settings, str(sweep_env), None)


@pytest.mark.slow  # a local MLflow store takes 10-20 s to create
def test_a_new_sweep_never_reuses_an_existing_folder(sweep_env: Path, capsys):
    from ray_jobs import tune

    (sweep_env / "taken").mkdir(parents=True)
    (sweep_env / "taken" / "experiment_state-2099-01-01_00-00-00.json").write_text("{}")
    code = tune.main(["--name", "taken", "--storage", str(sweep_env),
                      *[f"--set={o}" for o in TINY]])
    assert code == 2
    assert "--name taken: " in capsys.readouterr().err
    assert sorted(p.name for p in (sweep_env / "taken").iterdir()) == [
        "experiment_state-2099-01-01_00-00-00.json"]


# --- configs: bounded, finite, and checked before allocation ----------------------------

@pytest.mark.parametrize("raw, message", [
    ({"model": {"nf": 200000, "growth": 200000}}, "model.nf: 200000 exceeds the limit"),
    ({"model": {"blocks": 5000000}}, "model.blocks: 5000000 exceeds the limit of 256"),
    ({"model": {"num_images": 65}}, "model.num_images: 65 exceeds"),
    ({"model": {"image_channels": 17}}, "model.image_channels: 17 exceeds"),
    ({"data": {"crop": 8194}}, "data.crop: 8194 exceeds"),
    ({"data": {"batch_size": 10**6}}, "data.batch_size: 1000000 exceeds"),
    ({"data": {"shuffle_buffer": 10**9}}, "data.shuffle_buffer: 1000000000 exceeds"),
    ({"data": {"loader_workers": 1000}}, "data.loader_workers: 1000 exceeds"),
    ({"data": {"step": 10**5}}, "data.step: 100000 exceeds"),
    ({"train": {"steps": 10**11}}, "train.steps: 100000000000 exceeds"),
    ({"train": {"seed": -1}}, "train.seed: must not be negative"),
    ({"train": {"seed": 2**64}}, "train.seed: 18446744073709551616 exceeds"),
    ({"optim": {"milestones": [1, 10**12]}}, r"optim.milestones\[1\]: 1000000000000 exceeds"),
    ({"optim": {"milestones": list(range(10001))}}, "optim.milestones: 10001 milestones"),
    ({"optim": {"lr": float("nan")}}, "optim.lr: must be a finite number, got nan"),
    ({"optim": {"lr": float("inf")}}, "optim.lr: must be a finite number, got inf"),
    ({"optim": {"lr": 11.0}}, "optim.lr: 11.0 exceeds"),
    ({"optim": {"lr": 10**400}}, "optim.lr: an integer of 1329 bits is out of range"),
    ({"optim": {"beta1": float("nan")}}, "optim.beta1: must be a finite"),
    ({"optim": {"gamma": float("nan")}}, "optim.gamma: must be a finite"),
    ({"optim": {"grad_clip": float("inf")}}, "optim.grad_clip: must be a finite"),
    ({"optim": {"weight_decay": "nan"}}, "optim.weight_decay: must be a finite"),
    ({"loss": {"lambda_res": float("nan")}}, "loss.lambda_res: must be a finite"),
    ({"loss": {"lambda_emb": float("-inf")}}, "loss.lambda_emb: must be a finite"),
    ({"loss": {"lambda_freq": 1e300}}, r"loss.lambda_freq: 1e\+300 exceeds"),
    ({"loss": {"charbonnier_eps": float("nan")}}, "loss.charbonnier_eps: must be a finite"),
    ({"model": {"clamp": float("nan")}}, "model.clamp: must be a finite"),
    ({"model": {"clamp": 1e9}}, "model.clamp: 1000000000.0 exceeds"),
    ({"model": {"relation_residual_scale": float("inf")}}, "model.relation_residual_scale"),
    ({"model": {"nf": 4096, "growth": 4096}}, r"model: 65,341,777,700 parameters \(243.4 GiB"),
])
def test_config_table(raw, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(raw)


def test_the_parameter_estimate_is_exact_and_the_limit_is_checked_before_building():
    for overrides in ([], ["model.downscale=haar", "model.order=hl", "model.nf=8"],
                      ["model.downscale=squeeze", "model.num_images=2", "model.growth=5"]):
        cfg = Config().override(overrides)
        built = sum(p.numel() for p in IICNet(cfg).parameters())
        assert parameter_count(cfg.model) == built, overrides
    # Just over the limit is refused, with the fields that size the model named.
    big = {"model": {"nf": 2048, "growth": 1024, "blocks": 64}}
    assert parameter_count(Config().model.__class__(nf=2048, growth=1024,
                                                    blocks=64)) > MAX_PARAMETERS
    with pytest.raises(ConfigError, match="model.nf=2048, model.growth=1024, model.blocks=64"):
        from_dict(big)


@pytest.mark.parametrize("text, message", [
    ("optim:\n  lr: .nan\n", "optim.lr: must be a finite number"),
    ("loss:\n  lambda_res: .inf\n", "loss.lambda_res: must be a finite number"),
    ("model:\n  blocks: 5000000\n", "model.blocks: 5000000 exceeds"),
    ("[" * 100_000, "not a config file|not valid YAML"),
])
def test_yaml_configs_go_through_the_same_checks(tmp_path: Path, text: str, message: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_yaml(path)
    assert str(err.value).startswith(str(path))


def test_binary_and_oversized_config_files_are_refused(tmp_path: Path):
    binary = tmp_path / "weights.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match="weights.yaml: not a text config file"):
        load_yaml(binary)
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"model:\n  nf: 4\0\n")
    with pytest.raises(ConfigError, match="nul.yaml: not a text config file"):
        load_yaml(nul)
    huge = tmp_path / "huge.yaml"
    huge.write_text("# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="huge.yaml: larger than 1024 KiB"):
        load_yaml(huge)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_yaml(tmp_path)


@pytest.mark.timeout(120)
def test_a_fifo_or_a_device_as_a_config_or_model_file_is_refused_without_blocking(
        tmp_path: Path, capsys, monkeypatch):
    from iicnet.app.cli import main as iicnet
    from ray_jobs.train import main as train

    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)  # nothing ever writes: opening it for reading would wait forever
    with pytest.raises(ConfigError, match="config.yaml: cannot read config .a FIFO, not a "
                       "regular file"):
        load_yaml(fifo)
    with pytest.raises(ConfigError, match="/dev/zero: cannot read config .a device, not a "):
        load_yaml("/dev/zero")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert train(["--config", str(fifo)]) == 2
    assert "config.yaml: cannot read config (a FIFO" in capsys.readouterr().err
    # A model folder whose config.json is a FIFO: not taken for a model, exit 2, no wait.
    model = tmp_path / "model"
    small = Config().override(["model.blocks=1", "model.nf=4", "model.growth=4"])
    checkpoint.save(model, IICNet(small), small)
    (model / checkpoint.CONFIG).unlink()
    os.mkfifo(model / checkpoint.CONFIG)
    assert iicnet(["info", str(model)]) == 2
    assert f"{model}: no model.safetensors with config.json" in capsys.readouterr().err
    with pytest.raises(checkpoint.CheckpointError, match="cannot read .a FIFO"):
        checkpoint.read_json(model / checkpoint.CONFIG)


@pytest.mark.parametrize("config_json, message", [
    ('{"model": {"nf": 200000, "growth": 200000}}', "model.nf: 200000 exceeds"),
    ('{"model": {"blocks": 5000000}}', "model.blocks: 5000000 exceeds"),
    ('{"optim": {"lr": NaN}}', "optim.lr: must be a finite number"),
    ('{"model": {"clamp": Infinity}}', "model.clamp: must be a finite number"),
    ("[" * 100_000, "not valid JSON"),
    ("\xff\xfe", "not valid JSON"),
])
def test_checkpoint_configs_are_checked_before_the_model_is_built(tmp_path: Path,
                                                                  config_json, message):
    cfg = tiny()
    directory = checkpoint.save(tmp_path / "ckpt", IICNet(cfg), cfg)
    (directory / checkpoint.CONFIG).write_text(config_json, encoding="latin-1")
    checkpoint.seal(directory)
    with pytest.raises(checkpoint.CheckpointError, match=message) as err:
        checkpoint.load(directory)
    assert str(directory / checkpoint.CONFIG) in str(err.value)


# --- checkpoints: complete or refused ---------------------------------------------------

def truncate(path: Path, fraction: float = 0.4) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])


def flip_bit(path: Path, offset: int = -9) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    cfg = tiny()
    return checkpoint.save(tmp_path / "step-00000002", IICNet(cfg), cfg)


@pytest.mark.parametrize("damage, message", [
    (lambda d: truncate(d / checkpoint.WEIGHTS), r"model.safetensors is \d+ of \d+ bytes"),
    (lambda d: flip_bit(d / checkpoint.WEIGHTS), "model.safetensors does not match its sha256"),
    (lambda d: (d / checkpoint.WEIGHTS).write_bytes(b""), "model.safetensors is 0 of"),
    (lambda d: (d / checkpoint.MARKER).write_text("{"), "complete.json: not valid JSON"),
    (lambda d: (d / checkpoint.MARKER).write_text("[]"), "not an IICNet completeness marker"),
    (lambda d: (d / checkpoint.MARKER).write_text(json.dumps(
        {"format": "iicnet-checkpoint-files", "files": {"../x": {}}})), "not a file name"),
])
def test_a_damaged_sealed_checkpoint_says_what_is_wrong(saved: Path, damage, message):
    damage(saved)
    with pytest.raises(checkpoint.CheckpointError, match=message) as err:
        checkpoint.load(saved)
    assert str(err.value).startswith(f"{saved}: incomplete or damaged checkpoint: ")


@pytest.mark.parametrize("damage, message", [
    (lambda d: truncate(d / checkpoint.WEIGHTS), "truncated"),
    (lambda d: truncate(d / checkpoint.WEIGHTS, 0.0001), "truncated"),
    (lambda d: (d / checkpoint.WEIGHTS).write_bytes(b"\x08" + b"\0" * 7 + b"not json"),
     "damaged safetensors header"),
    (lambda d: (d / checkpoint.WEIGHTS).write_bytes(b"\xff" * 8 + b"{}"), "shorter than"),
    (lambda d: (d / checkpoint.WEIGHTS).write_bytes(b"{}"), "truncated"),
])
def test_an_unsealed_checkpoint_is_accepted_only_when_its_safetensors_are_whole(
        saved: Path, damage, message):
    (saved / checkpoint.MARKER).unlink()
    model, _ = checkpoint.load(saved)  # an old checkpoint, whole: loads
    assert isinstance(model, IICNet)
    damage(saved)
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.load(saved)


def test_a_flipped_bit_in_an_unsealed_checkpoint_still_never_leaks_safetensor_errors(
        saved: Path):
    (saved / checkpoint.MARKER).unlink()
    weights = saved / checkpoint.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[12] ^= 0x20  # inside the JSON header
    weights.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(saved)


def test_wrong_shapes_and_nan_weights_are_refused(saved: Path):
    state = {k: v.clone() for k, v in IICNet(tiny()).state_dict().items()}
    first = next(iter(state))
    state[first] = torch.zeros(3, 3)
    save_file(state, str(saved / checkpoint.WEIGHTS))
    checkpoint.seal(saved)
    with pytest.raises(checkpoint.CheckpointError, match=f"wrong shape: ..{first} \\(3, 3\\)"):
        checkpoint.load(saved)
    state = {k: v.clone() for k, v in IICNet(tiny()).state_dict().items()}
    state[first].view(-1)[0] = math.nan
    save_file(state, str(saved / checkpoint.WEIGHTS))
    checkpoint.seal(saved)
    with pytest.raises(checkpoint.CheckpointError, match=f"tensor {first} holds NaN"):
        checkpoint.load(saved)


def test_a_half_copied_checkpoint_names_the_last_complete_one(tmp_path: Path):
    """What Ray leaves when its workers die while uploading ``step-N``: the folder under its
    final name with part of the weights and no marker."""
    trainer = Trainer(tiny())
    runs = tmp_path / "run"
    for step in (2, 4):
        (runs / f"step-{step:08d}").mkdir(parents=True)
        trainer.step = step
        trainer.save(runs / f"step-{step:08d}")
    broken = runs / "step-00000006"
    shutil.copytree(runs / "step-00000004", broken)
    (broken / checkpoint.MARKER).unlink()
    truncate(broken / checkpoint.WEIGHTS)
    for load in (checkpoint.load, read_state):
        with pytest.raises(checkpoint.CheckpointError) as err:
            load(broken)
        assert "model.safetensors" in str(err.value) and "truncated" in str(err.value)
        assert str(err.value).endswith(
            f"the last complete checkpoint beside it is {runs / 'step-00000004'}")
    with pytest.raises(StateError):
        Trainer(tiny()).load(broken)
    assert read_state(runs / "step-00000004").step == 4


# --- training runs: resume, failure, a dead driver --------------------------------------

def finished_training_run(storage: Path, name: str, status: str = "FINISHED",
                          tags: dict[str, str] | None = None) -> str:
    """A training run's MLflow run (local store) and storage folder, as a run leaves them."""
    from iicnet import registry
    from ray_jobs import common

    uri = registry.tracking_uri(common.default_tracking()[0])
    run_id = registry.start_run(uri, "iicnet-video", name, tiny(), tags=tags)
    registry.Tracker(uri, run_id).finish(status)
    (storage / name / "step-00000004").mkdir(parents=True)
    return run_id


def registered_versions() -> int:
    from mlflow import MlflowClient

    from iicnet import registry
    from ray_jobs import common

    client = MlflowClient(registry.tracking_uri(common.default_tracking()[0]))
    return len(client.search_model_versions("name = 'iicnet-video'"))


@pytest.mark.slow  # a local MLflow store takes 10-20 s to create
def test_resuming_a_finished_run_does_nothing_and_says_so(sweep_env: Path, davis_shards,
                                                          capsys):
    from ray_jobs import train

    run_id = finished_training_run(sweep_env, "done")
    before = registered_versions()
    code = train.main(["--resume", "done", "--storage", str(sweep_env),
                       "--data", str(davis_shards), *[f"--set={o}" for o in TINY]])
    assert code == 0
    assert f"run done has already finished (MLflow run {run_id}); nothing to resume" in (
        capsys.readouterr().out)
    assert registered_versions() == before
    assert [p.name for p in (sweep_env / "done").iterdir()] == ["step-00000004"]


@pytest.mark.slow  # a local MLflow store takes 10-20 s to create
def test_resuming_a_run_whose_driver_lives_is_refused(sweep_env: Path, davis_shards, capsys):
    from iicnet import registry
    from ray_jobs import common, train

    run_id = finished_training_run(sweep_env, "live", status="RUNNING")
    uri = registry.tracking_uri(common.default_tracking()[0])
    registry.Tracker(uri, run_id).tags({train.DRIVER_TAG: json.dumps(train.driver_identity())})
    code = train.main(["--resume", "live", "--storage", str(sweep_env),
                       "--data", str(davis_shards), *[f"--set={o}" for o in TINY]])
    assert code == 2
    err = capsys.readouterr().err
    assert f"--resume live: the run is still live (its driver, pid {os.getpid()}" in err
    assert registry.Tracker(uri, run_id).status() == "RUNNING"


def test_a_dead_driver_is_told_from_a_live_one():
    from ray_jobs import train

    me = train.driver_identity()
    assert train.driver_alive(me) is True
    assert train.driver_alive({**me, "host": "elsewhere"}) is None
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    assert train.driver_alive({**me, "pid": int(done.stdout)}) is False
    if me["start"] is not None:  # a reused pid is a different process
        assert train.driver_alive({**me, "start": "1"}) is False


def test_a_failed_fit_is_summarised_in_one_line():
    # In a process of its own: importing Ray Train V2 into the long-lived test process, after
    # the earlier in-process Ray runs, ended the whole pytest process in full-suite runs.
    probe = """
from ray.train.v2.api.exceptions import WorkerGroupError
from ray_jobs import train
error = WorkerGroupError("Training failed due to worker errors:\\n[Rank 1] Traceback ...",
                         {1: RuntimeError("Traceback (most recent call last):\\n  File x\\n"
                                          "RuntimeError: gloo connection reset")})
print(train.failure_summary(error))
print(train.failure_summary(ValueError("x")))
print(train.failure_summary(None))
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["rank 1: RuntimeError: gloo connection reset",
                                        "ValueError: x", "no checkpoint was reported"]


TRAIN_TINY = ["--set", "model.blocks=1", "--set", "model.nf=4", "--set", "model.growth=4",
              "--set", "data.crop=32", "--set", "data.batch_size=2",
              "--set", "data.loader_workers=0", "--set", "train.log_every=1",
              "--set", "train.val_every=2", "--set", "train.checkpoint_every=2"]


def training_run(tracking: str, name: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string=f"tags.`iicnet.run_name` = '{name}'")
    assert len(runs) == 1
    return client, runs[0]


@pytest.mark.slow
def test_exhausted_restarts_end_in_one_message_and_exit_2(mlflow_server, davis_shards,  # noqa: F811
                                                         tmp_path: Path):
    from tests.helpers import job_env

    env = job_env(tmp_path, mlflow_server, IICNET_FAULT_AT_STEP="3",
                  IICNET_FAULT_MARKER=str(tmp_path / "killed"))
    done = subprocess.run(
        [sys.executable, str(REPO / "ray_jobs" / "train.py"), "--data", str(davis_shards),
         "--storage", str(tmp_path / "results"), "--steps", "6", "--max-failures", "0",
         "--name", "exhausted", *TRAIN_TINY],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    tail = done.stderr.strip().splitlines()[-2:]
    assert done.returncode == 2, done.stderr[-3000:]
    assert tail[0].startswith("error: training failed after 0 restart(s): "), tail
    assert tail[1].startswith("resume from the latest checkpoint: ")
    assert tail[1].endswith(f"/python ray_jobs/train.py --resume exhausted --storage "
                            f"{tmp_path / 'results'}")
    assert "Traceback" not in done.stderr.split("error: training failed")[-1]
    _, run = training_run(mlflow_server, "exhausted")
    assert run.info.status == "FAILED"


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` now (Linux ``/proc``)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@pytest.mark.slow
def test_a_killed_driver_stops_its_workers_and_marks_the_run_killed(
        mlflow_server, davis_shards, tmp_path: Path):  # noqa: F811
    import signal
    import time

    from tests.helpers import job_env

    storage = tmp_path / "results"
    driver = subprocess.Popen(
        [sys.executable, str(REPO / "ray_jobs" / "train.py"), "--data", str(davis_shards),
         "--storage", str(storage), "--steps", "400", "--name", "orphan", *TRAIN_TINY],
        env=job_env(tmp_path, mlflow_server), cwd=REPO, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    started: set[int] = set()
    try:
        deadline = time.monotonic() + 400
        while not (storage / "orphan" / "step-00000002" / checkpoint.MARKER).is_file():
            assert driver.poll() is None and time.monotonic() < deadline, "no checkpoint"
            started |= descendants(driver.pid)
            time.sleep(0.5)
        started |= descendants(driver.pid)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        killed_at = time.monotonic()
        client, run = training_run(mlflow_server, "orphan")
        while run.info.status == "RUNNING" and time.monotonic() < killed_at + 60:
            time.sleep(1)
            run = client.get_run(run.info.run_id)
        assert run.info.status == "KILLED", "the run was not marked within 60 s"
        steps = {m.step for m in client.get_metric_history(run.info.run_id, "loss/total")}
        folders = sorted(p.name for p in (storage / "orphan").glob("step-*"))
        time.sleep(10)
        assert {m.step for m in client.get_metric_history(run.info.run_id,
                                                          "loss/total")} == steps
        assert sorted(p.name for p in (storage / "orphan").glob("step-*")) == folders
        assert max(steps) < 400
        for folder in (storage / "orphan").glob("step-*"):  # complete, or said to be not
            try:
                read_state(folder)
            except checkpoint.CheckpointError as exc:
                assert "incomplete or damaged checkpoint" in str(exc)
    finally:
        for pid in started | descendants(driver.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_restart_skips_an_incomplete_latest_checkpoint_for_the_last_complete_one(
        tmp_path: Path, caplog):
    """What a worker does when Ray hands it a checkpoint that is not whole (no Ray cluster
    needed: a local ``ray.train.Checkpoint`` is a folder)."""
    import ray.train

    from ray_jobs import worker

    trainer = Trainer(tiny())
    runs = tmp_path / "run"
    for step in (2, 4):
        trainer.step = step
        (runs / f"step-{step:08d}").mkdir(parents=True)
        trainer.save(runs / f"step-{step:08d}")
    broken = runs / "step-00000006"
    shutil.copytree(runs / "step-00000004", broken)
    truncate(broken / "optimizer.safetensors")

    resumed = Trainer(tiny())
    with caplog.at_level("WARNING", logger="iicnet.train"):
        worker.resume_from(resumed, ray.train.Checkpoint(str(broken)), rank=0)
    assert resumed.step == 4
    assert f"resuming from the last complete checkpoint, {runs / 'step-00000004'}" in caplog.text
    assert "optimizer.safetensors is" in caplog.text

    for folder in runs.iterdir():
        truncate(folder / checkpoint.WEIGHTS)
    with pytest.raises(checkpoint.CheckpointError, match="no complete checkpoint beside it"):
        worker.resume_from(Trainer(tiny()), ray.train.Checkpoint(str(broken)), rank=0)


def test_a_resume_finds_a_checkpoint_ray_had_not_recorded(tmp_path: Path, caplog):
    """Ctrl-C between a checkpoint's upload and Ray's record of it: Ray hands the resumed
    run no checkpoint, and the worker takes the newest complete one in the run's folder."""
    from ray_jobs import worker

    runs = tmp_path / "run"
    assert not worker.resume_from(Trainer(tiny()), None, rank=0, run=(str(runs), None))
    trainer = Trainer(tiny())
    for step in (3, 6):
        trainer.step = step
        (runs / f"step-{step:08d}").mkdir(parents=True)
        trainer.save(runs / f"step-{step:08d}")
    shutil.copytree(runs / "step-00000006", runs / "step-00000009")
    truncate(runs / "step-00000009" / "optimizer.safetensors")  # the upload was cut short

    resumed = Trainer(tiny())
    with caplog.at_level("INFO", logger="iicnet.train"):
        assert worker.resume_from(resumed, None, rank=0, run=(str(runs), None))
    assert resumed.step == 6
    assert f"resuming from the last complete checkpoint, {runs / 'step-00000006'}" in caplog.text
    assert worker.resume_from(Trainer(tiny()), None, rank=0, run=(str(tmp_path / "none"), None)
                              ) is False


def test_a_restart_skips_a_folder_whose_upload_was_killed_in_its_first_part(
        s3, bucket: str, tmp_path: Path, caplog):
    """A node lost while rank 0 uploads a checkpoint to ``rclone serve s3``: the folder is
    listed (rclone keeps the temporary file of the cut multipart upload in it) but holds no
    object. A restart, whether Ray recorded that folder or not, takes the one before."""
    import time

    import pyarrow.fs
    import ray.train

    from iicnet.storage.arrow import ray_storage
    from ray_jobs import worker

    folder, filesystem = ray_storage(f"{bucket}/results/run")
    trainer = Trainer(tiny())
    trainer.step = 2
    (tmp_path / "step").mkdir()
    trainer.save(tmp_path / "step")
    pyarrow.fs.copy_files(str(tmp_path / "step"), f"{folder}/step-00000002",
                          destination_filesystem=filesystem)
    cut = f"{folder}/step-00000004"
    upload = (f"import sys, time; sys.path.insert(0, {str(REPO)!r})\n"
              "from iicnet.storage.arrow import ray_storage\n"
              f"_, fs = ray_storage({bucket + '/results/run'!r})\n"
              f"out = fs.open_output_stream({cut + '/weights.safetensors'!r})\n"
              "while True:\n    out.write(bytes(1 << 20)); time.sleep(0.01)\n")
    uploader = subprocess.Popen([sys.executable, "-c", upload])
    on_disk = s3.root / bucket.removeprefix("s3://") / "results" / "run" / "step-00000004"
    try:
        deadline = time.monotonic() + 120
        while not any(on_disk.glob(".rclone_temp_multipart_*")):
            assert uploader.poll() is None and time.monotonic() < deadline, "no upload began"
            time.sleep(0.2)
    finally:
        uploader.kill()
        uploader.wait()
    assert worker.step_folders(folder, filesystem)[0] == cut
    assert filesystem.get_file_info(cut).type == pyarrow.fs.FileType.NotFound

    for latest in (None, ray.train.Checkpoint(cut, filesystem=filesystem)):
        resumed = Trainer(tiny())
        caplog.clear()
        with caplog.at_level("WARNING", logger="iicnet.train"):
            assert worker.resume_from(resumed, latest, rank=0, run=(folder, filesystem))
        assert resumed.step == 2
        assert f"{cut} holds no file" in caplog.text
        assert f"last complete checkpoint, {folder}/step-00000002" in caplog.text


def _tar_samples(path: Path) -> list[str]:
    """The sample keys of a shard, reading every member to its end (a cut tar raises)."""
    import tarfile

    keys = []
    with tarfile.open(path) as tar:
        for member in tar:
            data = tar.extractfile(member)
            assert data is not None and len(data.read()) == member.size, f"{path}: {member}"
            keys.append(member.name.split(".", 1)[0])
    return sorted(set(keys))


def test_prep_survives_kill_9_at_random_points(samples: Path, tmp_path: Path):
    """kill -9 of data prep at random moments, five times, then a run to the end: every
    sample once, no partial tar under a shard's name, no manifest before the end."""
    import random
    import signal
    import time

    seed = int(os.environ.get("IICNET_FAULT_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    clips = tmp_path / "davis" / "JPEGImages" / "480p"
    clips.mkdir(parents=True)
    sources = sorted((samples / "davis").glob("*/JPEGImages/480p/*"))
    for copy in range(6):  # 48 clips, 16 shards: long enough to be killed mid-way
        for clip in sources:
            (clips / f"c{copy}-{clip.name}").symlink_to(clip)
    def prep(folder: Path) -> list[str]:
        return [sys.executable, "-m", "data_prep", "davis", "--root", str(tmp_path / "davis"),
                "--out", str(folder), "--shard-size", "3", "--workers", "1"]

    out = tmp_path / "shards"
    command = prep(out)
    began = time.monotonic()
    reference = subprocess.run(prep(tmp_path / "reference"), cwd=REPO, capture_output=True,
                               text=True)
    assert reference.returncode == 0, reference.stderr
    duration = time.monotonic() - began
    began = time.monotonic()  # a run with nothing left to write: start-up and planning
    assert subprocess.run(prep(tmp_path / "reference"), cwd=REPO,
                          capture_output=True).returncode == 0
    idle = time.monotonic() - began
    per_round = max(duration - idle, 0.5) / 5  # each killed run writes about a fifth
    expected = {n: _tar_samples(tmp_path / "reference" / n)
                for n in sorted(p.name for p in (tmp_path / "reference").glob("*.tar"))}
    kills = []
    for _ in range(5):
        job = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        delay = idle + rng.uniform(0.1, 1.0) * per_round
        time.sleep(delay)
        finished = job.poll() is not None
        job.send_signal(signal.SIGKILL)
        job.wait()
        shards = sorted(out.glob("*.tar")) if out.exists() else []
        kills.append(f"{delay:.2f} s: {len(shards)} shards{' (had finished)' if finished else ''}")
        if not finished:
            assert not (out / "manifest.json").exists(), f"seed {seed}: an early manifest"
        for shard in shards:  # a visible shard is whole and is the reference's shard
            assert _tar_samples(shard) == expected[shard.name], f"seed {seed}: {shard.name}"
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    names = sorted(s["name"] for split in manifest["splits"].values() for s in split["shards"])
    assert names == sorted(expected)
    got = [key for name in names for key in _tar_samples(out / name)]
    want = [key for keys in expected.values() for key in keys]
    assert sorted(got) == sorted(want) and len(set(got)) == len(got) == 48, f"seed {seed}"
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")], "temporary files left"
    print(f"\nprep kill -9 loop (seed {seed}, a full run {duration:.1f} s, {idle:.1f} s of "
          "it start-up): " + "; ".join(kills)
          + f"; then {(done.stdout + done.stderr).strip().splitlines()[-1]}")
