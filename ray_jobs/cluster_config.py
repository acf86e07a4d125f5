"""Render the Ray cluster launcher config from the template and the user's settings.

::

    cp cluster/settings.example.yaml cluster/settings.yaml   # then fill it in
    python -m ray_jobs.cluster_config                         # -> cluster.yaml
    python -m ray_jobs.cluster_config --check                 # optional: check cluster.yaml
    ray up cluster.yaml

The values that belong to one AWS account (region, image, instance profiles, bucket, the
registry's database) live in ``cluster/settings.yaml`` and are written into the config here,
on the laptop, checked first: nothing is left for a node's shell to expand. The Ray version
comes from ``constraints.txt``, so the image runs the Ray that CI tested. Exit code 2 and a
message naming the setting for anything missing, unknown or malformed, or for a
``REPLACE_ME_<what>`` placeholder of the example settings that is still there.

The top-level ``cluster.yaml`` in the repository is the rendering of
``cluster/settings.example.yaml``, placeholders included. A user may instead edit that file
directly; ``--check [FILE]`` then validates it against the launcher schema of the installed
(pinned) Ray and refuses it, naming each setting by its YAML path, while a placeholder is
left. After a change to the template, write the committed file again with::

    python -m ray_jobs.cluster_config --settings cluster/settings.example.yaml \
        --keep-placeholders --no-file-checks
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from ray_jobs.common import REPO

TEMPLATE = REPO / "cluster" / "template.yaml"
SETTINGS = REPO / "cluster" / "settings.yaml"
EXAMPLE = REPO / "cluster" / "settings.example.yaml"
OUTPUT = REPO / "cluster.yaml"
PLACEHOLDER = re.compile(r"\$\{([a-z][a-z0-9_]*)\}")
"""``${lower_case}``: shell variables (``$HOME``, ``${IICNET_X}``) are left alone."""
REPLACE_ME = re.compile(r"REPLACE_ME_[A-Za-z0-9_]+")
"""The example settings' mark for a value the user must supply, e.g. ``REPLACE_ME_bucket``."""

COUNTS = ("max_gpu_workers", "max_spot_gpu_workers", "max_gpu_workers_4x")
CHECKS: dict[str, tuple[str, str]] = {
    "region": (r"[a-z]{2}(-[a-z]+)+-\d", "an AWS region such as us-west-2"),
    "availability_zones": (r"[a-z]{2}(-[a-z]+)+-\d[a-z](,[a-z]{2}(-[a-z]+)+-\d[a-z])*",
                           "comma-separated zones such as us-west-2a,us-west-2b"),
    "ami": (r"ami-[0-9a-f]{8,17}", "an image id such as ami-0123456789abcdef0"),
    "ssh_user": (r"[a-z_][a-z0-9_-]*", "a user name such as ubuntu"),
    "head_instance_profile_arn": (r"arn:aws:iam::\d{12}:instance-profile/[\w+=,.@/-]+",
                                  "an instance profile ARN"),
    "worker_instance_profile_arn": (r"arn:aws:iam::\d{12}:instance-profile/[\w+=,.@/-]+",
                                    "an instance profile ARN"),
    "bucket": (r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", "an S3 bucket name (no s3://)"),
    "mlflow_database": (r"postgresql(\+psycopg2)?://[^:@/\s']+@[^/\s']+/[^/\s']+",
                        "postgresql+psycopg2://USER@HOST:PORT/DATABASE, without a password"),
    "pgpass_file": (r"[^\s']+", "a path on this machine"),
}


class SettingsError(ValueError):
    """A setting is missing, unknown or malformed; the message names it."""


def locked_ray_version(constraints: Path = REPO / "constraints.txt") -> str:
    for line in constraints.read_text().splitlines():
        if line.lower().startswith("ray=="):
            return line.split("==", 1)[1].strip()
    raise SettingsError(f"{constraints}: no ray== pin")


def read_settings(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise SettingsError(f"{path}: no such file; copy {EXAMPLE.relative_to(REPO)} there "
                            "and fill it in") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise SettingsError(f"{path}: expected a mapping of settings")
    return raw


def check(settings: dict[str, Any], where: str, *, check_files: bool = True,
          keep_placeholders: bool = False) -> dict[str, str]:
    """The settings as the template's values; raises :class:`SettingsError`.

    A value holding a ``REPLACE_ME_`` placeholder is refused, or, with ``keep_placeholders``
    (to render the example settings), passed through unchecked."""
    known = set(CHECKS) | set(COUNTS)
    unknown = sorted(set(settings) - known)
    if unknown:
        raise SettingsError(f"{where}: unknown setting {unknown[0]!r} (known: "
                            f"{', '.join(sorted(known))})")
    missing = sorted(known - set(settings))
    if missing:
        raise SettingsError(f"{where}: setting {missing[0]!r} is missing")
    values: dict[str, str] = {}
    for name, (pattern, meaning) in CHECKS.items():
        value = settings[name]
        left = REPLACE_ME.search(value) if isinstance(value, str) else None
        if left and keep_placeholders:
            values[name] = value
            continue
        if left:
            raise SettingsError(f"{where}: {name}: {value!r} still holds the placeholder "
                                f"{left.group()}; replace it (expected {meaning})")
        if not isinstance(value, str) or not re.fullmatch(pattern, value):
            if name == "mlflow_database" and isinstance(value, str) and re.search(
                    r"://[^@/]*:[^@/]*@", value):
                raise SettingsError(f"{where}: mlflow_database holds a password; put it in "
                                    "the file named by pgpass_file instead")
            raise SettingsError(f"{where}: {name}: {value!r} is not {meaning}")
        values[name] = value
    for name in COUNTS:
        value = settings[name]
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 1000:
            raise SettingsError(f"{where}: {name}: {value!r} is not a count from 0 to 1000")
        values[name] = str(value)
    # Written as given: Ray expands ``~`` in a file mount's local path on the laptop, and the
    # rendering of the example settings stays the same on every machine.
    pgpass = Path(values["pgpass_file"]).expanduser()
    if check_files and not pgpass.is_file():
        raise SettingsError(f"{where}: pgpass_file: {pgpass} does not exist (one line: "
                            "HOST:PORT:DATABASE:USER:PASSWORD, mode 600)")
    values["max_workers"] = str(sum(settings[name] for name in COUNTS))
    values["ray_version"] = locked_ray_version()
    return values


def render(template: str, values: dict[str, str]) -> str:
    """``template`` with every ``${name}`` replaced; an unknown name is an error."""
    unknown = sorted(set(PLACEHOLDER.findall(template)) - set(values))
    if unknown:
        raise SettingsError(f"{TEMPLATE}: no value for ${{{unknown[0]}}}")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def validate_schema(config: dict[str, Any]) -> None:
    """Raise unless ``config`` is a launcher config the installed Ray accepts: the file as
    written against the schema Ray ships, then what ``ray up`` checks once it has filled in
    its defaults. Raises ``jsonschema.ValidationError``, ``ValueError`` or ``RuntimeError``."""
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(copy.deepcopy(config)))


def yaml_path(parts: list[str | int]) -> str:
    """``["provider", "region"]`` -> ``provider.region``; list items as ``name[0]``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def placeholders_left(node: Any, parts: list[str | int] | None = None
                      ) -> list[tuple[str, list[str]]]:
    """``(YAML path, placeholders)`` for every value of ``node`` still holding a
    ``REPLACE_ME_`` placeholder, in the file's order."""
    parts = parts or []
    if isinstance(node, dict):
        items = list(node.items())
    elif isinstance(node, list):
        items = list(enumerate(node))
    else:
        found = REPLACE_ME.findall(node) if isinstance(node, str) else []
        return [(yaml_path(parts), found)] if found else []
    return [left for key, value in items for left in placeholders_left(value, [*parts, key])]


def check_cluster_file(path: Path) -> list[str]:
    """What is wrong with the launcher config at ``path``, one line each (empty: ready)."""
    try:
        config = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return [f"{path}: no such file"]
    except yaml.YAMLError as exc:
        return [f"{path}: not valid YAML ({exc})"]
    if not isinstance(config, dict):
        return [f"{path}: expected a mapping (a Ray cluster launcher config)"]
    import jsonschema
    import ray

    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)  # its notes on defaults
    problems = []
    if ray.__version__ != locked_ray_version():
        problems.append(f"the installed Ray is {ray.__version__}, not the pinned "
                        f"{locked_ray_version()} (constraints.txt), so its schema is not the "
                        "cluster's; install through the lock (make venv)")
    try:
        validate_schema(config)
    except jsonschema.ValidationError as exc:
        where = yaml_path(list(exc.absolute_path)) or "(top level)"
        problems.append(f"{path}: {where}: {exc.message} (Ray {ray.__version__}'s launcher "
                        "schema)")
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        problems.append(f"{path}: refused by Ray {ray.__version__}'s launcher checks: {exc!r}")
    for where, found in placeholders_left(config):
        names = list(dict.fromkeys(found))
        problems.append(f"{path}: {where}: placeholder{'s' if len(names) > 1 else ''} "
                        f"{', '.join(names)} left; replace with your account's value")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ray_jobs.cluster_config",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", type=Path,
                        help="default: cluster/settings.yaml")
    parser.add_argument("-o", "--out", type=Path, help="default: cluster.yaml, at the top level")
    parser.add_argument("--no-file-checks", action="store_true",
                        help="do not require pgpass_file to exist (to inspect the output)")
    parser.add_argument("--keep-placeholders", action="store_true",
                        help="render REPLACE_ME_ values as they are (to write the committed "
                             "cluster.yaml from the example settings)")
    parser.add_argument("--check", nargs="?", type=Path, const=OUTPUT, metavar="CLUSTER_YAML",
                        help="render nothing: check a cluster file against the pinned Ray's "
                             "launcher schema and for REPLACE_ME_ placeholders (default: "
                             "the top-level cluster.yaml)")
    args = parser.parse_args(argv)
    if args.check is not None:
        if args.settings or args.out or args.keep_placeholders or args.no_file_checks:
            parser.error("--check takes only the file to check")
        problems = check_cluster_file(args.check)
        for problem in problems:
            print(f"cluster_config: error: {problem}", file=sys.stderr)
        if problems:
            return 2
        print(f"{args.check}: a valid launcher config for Ray {locked_ray_version()}, no "
              f"placeholders left; next: ray up {args.check}")
        return 0
    args.settings = args.settings or SETTINGS
    args.out = args.out or OUTPUT
    try:
        values = check(read_settings(args.settings), str(args.settings),
                       check_files=not args.no_file_checks,
                       keep_placeholders=args.keep_placeholders)
        text = render(TEMPLATE.read_text(), values)
        yaml.safe_load(text)
    except (SettingsError, yaml.YAMLError) as exc:
        print(f"cluster_config: error: {exc}", file=sys.stderr)
        return 2
    from iicnet.storage.atomic import replacing

    with replacing(args.out) as tmp:
        tmp.write_text(text)
    print(f"{args.out}: Ray {values['ray_version']}, up to {values['max_workers']} workers in "
          f"{values['region']}; next: ray up {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
