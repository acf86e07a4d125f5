"""cluster.yaml is a valid Ray cluster launcher config and installs what pyproject declares."""

import json
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


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
    installs = [c for c in cluster["setup_commands"] if "pip install" in c and "--upgrade pip"
                not in c]
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
    assert cluster["file_mounts"] == {"~/iicnet": "."}
    for local in (".venv", ".iicnet", ".git"):
        assert local in cluster["rsync_exclude"]
