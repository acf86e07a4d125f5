"""The rendered cluster config is a valid Ray cluster launcher config, installs what the lock
pins, and takes every account-specific value from the settings (checked on the laptop). The
committed top-level cluster.yaml is the rendering of the example settings, and ``--check``
refuses it until its placeholders are replaced."""

import re
import shutil
import tomllib
from pathlib import Path

import pytest
import ray
import yaml
from packaging.requirements import Requirement

from ray_jobs import cluster_config

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "cluster.yaml"
RENDER_EXAMPLE = ["--settings", str(cluster_config.EXAMPLE), "--keep-placeholders",
                  "--no-file-checks"]
# A value of the right form for each placeholder of the example settings.
PLAUSIBLE = {
    "REPLACE_ME_ami_id": "ami-0a1b2c3d4e5f67890",
    "REPLACE_ME_account_id": "123456789012",
    "REPLACE_ME_bucket": "acme-iicnet",
    "REPLACE_ME_database_host": "iicnet-mlflow.abcdefghijkl.us-west-2.rds.amazonaws.com",
}
# Where the committed cluster.yaml holds a placeholder, by YAML path.
PLACEHOLDER_SETTINGS = {
    **{f"available_node_types.{node}.node_config.{key}": value
       for node in ("head", "gpu_worker", "gpu_worker_spot", "gpu_worker_4x")
       for key, value in (("ImageId", "REPLACE_ME_ami_id"),
                          ("IamInstanceProfile.Arn", "REPLACE_ME_account_id"))},
    "head_setup_commands[0]": "REPLACE_ME_database_host, REPLACE_ME_bucket",
}


def filled(text: str, keep: str | None = None) -> str:
    """``text`` with every placeholder but ``keep`` replaced by a plausible value."""
    for placeholder, value in PLAUSIBLE.items():
        if placeholder != keep:
            text = text.replace(placeholder, value)
    return text


def filled_settings() -> dict:
    settings = yaml.safe_load(filled(cluster_config.EXAMPLE.read_text()))
    assert "REPLACE_ME_" not in yaml.safe_dump(settings)
    return settings


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    out = tmp_path_factory.mktemp("cluster") / "cluster.yaml"
    assert cluster_config.main([*RENDER_EXAMPLE, "-o", str(out)]) == 0
    return yaml.safe_load(out.read_text())


@pytest.fixture(scope="module")
def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_validates_against_the_schema_ray_ships(cluster):
    cluster_config.validate_schema(cluster)  # Ray's schema, then `ray up`'s checks


def test_the_schema_check_refuses_what_ray_refuses(cluster):
    import jsonschema

    broken = {**cluster, "idle_timeout_minutes": "ten"}
    with pytest.raises(jsonschema.ValidationError):
        cluster_config.validate_schema(broken)
    with pytest.raises(jsonschema.ValidationError):
        cluster_config.validate_schema({**cluster, "colour": "blue"})


def test_the_committed_cluster_yaml_passes_the_pinned_rays_schema():
    assert cluster_config.locked_ray_version() == ray.__version__
    cluster_config.validate_schema(yaml.safe_load(COMMITTED.read_text()))


def test_the_committed_cluster_yaml_is_the_rendering_of_the_example(tmp_path):
    out = tmp_path / "cluster.yaml"
    assert cluster_config.main([*RENDER_EXAMPLE, "-o", str(out)]) == 0
    assert COMMITTED.read_text() == out.read_text(), (
        "cluster.yaml is stale; write it again with: python -m ray_jobs.cluster_config "
        "--settings cluster/settings.example.yaml --keep-placeholders --no-file-checks")


def test_the_default_output_is_the_top_level_cluster_yaml(tmp_path, monkeypatch):
    assert cluster_config.OUTPUT == COMMITTED
    monkeypatch.setattr(cluster_config, "OUTPUT", tmp_path / "cluster.yaml")
    assert cluster_config.main(RENDER_EXAMPLE) == 0
    assert (tmp_path / "cluster.yaml").read_text() == COMMITTED.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["cluster.yaml"], "no temporary file left"


def _refused_settings(err: str) -> dict[str, str]:
    """``{YAML path: placeholders}`` from --check's messages."""
    found = re.findall(r"^cluster_config: error: .*?cluster\.yaml: (\S+): placeholders? (.+) "
                       r"left;", err, flags=re.M)
    return dict(found)


def test_check_refuses_the_committed_file_naming_each_placeholder(capsys):
    assert cluster_config.main(["--check"]) == 2
    err = capsys.readouterr().err
    assert _refused_settings(err) == PLACEHOLDER_SETTINGS
    assert "schema" not in err, "the committed file itself is a valid config"


@pytest.mark.parametrize("keep", sorted(PLAUSIBLE))
def test_check_names_the_one_placeholder_left(tmp_path, capsys, keep):
    path = tmp_path / "cluster.yaml"
    path.write_text(filled(COMMITTED.read_text(), keep=keep))
    assert cluster_config.main(["--check", str(path)]) == 2
    refused = _refused_settings(capsys.readouterr().err)
    expected = {where for where, names in PLACEHOLDER_SETTINGS.items() if keep in names}
    assert set(refused) == expected and all(v == keep for v in refused.values())


def test_check_passes_a_filled_copy(tmp_path, capsys):
    path = tmp_path / "cluster.yaml"
    shutil.copy(COMMITTED, path)
    path.write_text(filled(path.read_text()))
    assert "REPLACE_ME_" not in yaml.safe_dump(yaml.safe_load(path.read_text()))
    assert cluster_config.main(["--check", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "no placeholders left" in captured.out


def test_check_refuses_what_the_schema_refuses_by_its_path(tmp_path, capsys):
    path = tmp_path / "cluster.yaml"
    path.write_text(filled(COMMITTED.read_text()).replace(
        "cache_stopped_nodes: false", "cache_stopped_nodes: no-thanks"))
    assert cluster_config.main(["--check", str(path)]) == 2
    assert "provider.cache_stopped_nodes: 'no-thanks' is not of type 'boolean'" in \
        capsys.readouterr().err
    assert cluster_config.main(["--check", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: no such file" in capsys.readouterr().err


def test_rendering_refuses_a_placeholder_left_in_the_settings(tmp_path, capsys):
    out = tmp_path / "cluster.yaml"
    assert cluster_config.main(["--settings", str(cluster_config.EXAMPLE), "-o", str(out),
                                "--no-file-checks"]) == 2
    assert "ami: 'REPLACE_ME_ami_id' still holds the placeholder" in capsys.readouterr().err
    assert not out.exists()


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
    settings = filled_settings()
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
    settings = filled_settings()
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
