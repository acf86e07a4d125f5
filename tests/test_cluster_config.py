"""The rendered cluster config is a valid Ray cluster launcher config, installs what the lock
pins, and takes every account-specific value from the settings (checked on the laptop)."""

import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from packaging.requirements import Requirement

from ray_jobs import cluster_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    out = tmp_path_factory.mktemp("cluster") / "cluster.yaml"
    assert cluster_config.main(["--settings", str(cluster_config.EXAMPLE), "-o", str(out),
                                "--no-file-checks"]) == 0
    return yaml.safe_load(out.read_text())


@pytest.fixture(scope="module")
def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_validates_against_the_schema_ray_ships(cluster):
    schema_path = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(cluster, schema)
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cluster))  # what `ray up` checks, defaults filled in


def test_node_types_are_consistent(cluster):
    types = cluster["available_node_types"]
    assert cluster["head_node_type"] in types
    workers = {k: v for k, v in types.items() if k != cluster["head_node_type"]}
    assert any(v["node_config"]["InstanceType"].startswith(("g", "p")) for v in workers.values())
    for name, spec in workers.items():
        assert 0 <= spec["min_workers"] <= spec["max_workers"] <= cluster["max_workers"], name
        assert "IamInstanceProfile" in spec["node_config"], f"{name} needs S3 access"
    assert 0 < cluster["idle_timeout_minutes"] <= 30


def _pip_installs(cluster) -> list[str]:
    specs = []
    for cmd in cluster["setup_commands"]:
        if "pip install" in cmd:
            specs += re.findall(r'"([^"]+)"', cmd)
    return specs


def _locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            pins[requirement.name.lower()] = next(iter(requirement.specifier)).version
    return pins


def test_installs_match_pyproject_and_the_lock(cluster, pyproject):
    installs = [c for c in cluster["setup_commands"] if "pip install" in c]
    assert installs and all('-c "$HOME/iicnet/constraints.txt"' in c for c in installs), \
        "every node installs through the lock"
    specs = _pip_installs(cluster)
    project = [s for s in specs if "iicnet[" in s]
    assert project, "the project itself must be installed on every node"
    extras = set(re.search(r"\[(.*)\]", project[0]).group(1).split(","))
    assert extras <= set(pyproject["project"]["optional-dependencies"])
    ray_spec = Requirement(next(s for s in specs if s.startswith("ray[")))
    declared = {Requirement(r).name: Requirement(r)
                for r in pyproject["project"]["optional-dependencies"]["ray"]}
    assert ray_spec.extras <= declared["ray"].extras | {"default", "train", "tune"}
    assert not ray_spec.specifier, "the Ray version comes from constraints.txt alone"
    locked = _locked()
    assert declared["ray"].specifier.contains(locked["ray"]), "the lock must satisfy pyproject"
    for line in pyproject["project"]["dependencies"]:
        requirement = Requirement(line)
        assert requirement.specifier.contains(locked[requirement.name.lower()], prereleases=True), \
            f"constraints.txt's {requirement.name} does not satisfy pyproject's {requirement}"


def test_the_environment_that_submits_jobs_is_the_locked_one():
    # `make` installs through constraints.txt, so the Ray submitting jobs is the cluster's Ray
    assert _locked()["ray"] == ray.__version__


def test_synced_tree_skips_local_state(cluster):
    assert cluster["file_mounts"]["~/iicnet"] == "."
    for local in (".venv", ".iicnet", ".git", "cluster/settings.yaml"):
        assert local in cluster["rsync_exclude"]


def test_every_value_comes_from_the_settings_and_the_lock(cluster):
    settings = yaml.safe_load(cluster_config.EXAMPLE.read_text())
    text = yaml.safe_dump(cluster)
    assert "${" not in text.replace("${IICNET", ""), "nothing left for a node's shell to expand"
    assert cluster["provider"]["region"] == settings["region"]
    images = {t["node_config"]["ImageId"] for t in cluster["available_node_types"].values()}
    assert images == {settings["ami"]}
    profiles = {name: t["node_config"]["IamInstanceProfile"]["Arn"]
                for name, t in cluster["available_node_types"].items()}
    assert profiles.pop("head") == settings["head_instance_profile_arn"]
    assert set(profiles.values()) == {settings["worker_instance_profile_arn"]}
    ray_version = cluster_config.locked_ray_version()
    assert cluster["docker"]["worker_image"] == f"rayproject/ray:{ray_version}-py311-gpu"
    assert f"'s3://{settings['bucket']}/mlflow'" in " ".join(cluster["head_setup_commands"])
    assert f"'{settings['mlflow_database']}'" in " ".join(cluster["head_setup_commands"])
    assert cluster["max_workers"] == sum(settings[n] for n in cluster_config.COUNTS)
    spot = cluster["available_node_types"]["gpu_worker_spot"]["node_config"]
    assert spot["InstanceMarketOptions"]["MarketType"] == "spot"
    for name, spec in cluster["available_node_types"].items():
        if name != "head":
            assert spec["resources"]["CPU"] >= 4 * spec["resources"]["GPU"], \
                f"{name}: CPUs for data loading beside each GPU"


@pytest.mark.parametrize("change, message", [
    ({"ami": "latest_dlami"}, "ami: 'latest_dlami' is not an image id"),
    ({"bucket": "s3://my-iicnet"}, "bucket: 's3://my-iicnet' is not an S3 bucket name"),
    ({"mlflow_database": "postgresql+psycopg2://mlflow:hunter2@db:5432/mlflow"},
     "mlflow_database holds a password"),
    ({"max_gpu_workers": -1}, "max_gpu_workers: -1 is not a count"),
    ({"colour": "blue"}, "unknown setting 'colour'"),
    ({"region": None}, "region: None is not an AWS region"),
])
def test_bad_settings_are_refused_by_name(tmp_path, capsys, change, message):
    settings = yaml.safe_load(cluster_config.EXAMPLE.read_text())
    settings.update(change)
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(settings))
    out = tmp_path / "cluster.yaml"
    assert cluster_config.main(["--settings", str(path), "-o", str(out),
                                "--no-file-checks"]) == 2
    err = capsys.readouterr().err
    assert message in err and "hunter2" not in err
    assert not out.exists()


def test_a_missing_password_file_is_named(tmp_path, capsys):
    settings = yaml.safe_load(cluster_config.EXAMPLE.read_text())
    settings["pgpass_file"] = str(tmp_path / "nowhere")
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(settings))
    assert cluster_config.main(["--settings", str(path), "-o", str(tmp_path / "c.yaml")]) == 2
    assert f"pgpass_file: {tmp_path / 'nowhere'} does not exist" in capsys.readouterr().err


def test_the_spot_watcher_reads_the_interruption_notice_and_its_deadline():
    import importlib.util

    from tests.test_node_loss import FakeMetadata

    spec = importlib.util.spec_from_file_location("spot_watcher",
                                                  ROOT / "cluster" / "spot_watcher.py")
    watcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(watcher)
    metadata = FakeMetadata()
    assert watcher.notice(metadata.url) is None
    metadata.interrupt(90)
    found = watcher.notice(metadata.url)
    assert found["action"] == "terminate"
    assert 85 <= watcher.seconds_left(found) <= 90
    assert watcher.seconds_left({"action": "terminate"}) == 120
    assert watcher.seconds_left({"time": "2020-01-01T00:00:00Z"}) == 0
    with pytest.raises(SystemExit) as exit_:
        watcher.main(["--address", "127.0.0.1:1", "--interval", "0"])
    assert exit_.value.code == 2
