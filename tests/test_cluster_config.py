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


def test_installs_match_pyproject(cluster, pyproject):
    installs = _pip_installs(cluster)
    project = [s for s in installs if "iicnet" in s]
    assert project, "the project itself must be installed on every node"
    extras = set(re.search(r"\[(.*)\]", project[0]).group(1).split(","))
    assert extras <= set(pyproject["project"]["optional-dependencies"])
    ray_pin = Requirement(next(s for s in installs if s.startswith("ray[")))
    declared = {Requirement(r).name: Requirement(r)
                for r in pyproject["project"]["optional-dependencies"]["ray"]}
    assert ray_pin.extras <= declared["ray"].extras | {"default", "train", "tune"}
    pinned = next(iter(ray_pin.specifier)).version
    assert declared["ray"].specifier.contains(pinned), "pin must satisfy pyproject"
    assert pinned == ray.__version__, "cluster Ray must match the Ray that submits jobs"


def test_synced_tree_skips_local_state(cluster):
    assert cluster["file_mounts"] == {"~/iicnet": "."}
    for local in (".venv", ".iicnet", ".git"):
        assert local in cluster["rsync_exclude"]
