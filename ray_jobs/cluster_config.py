"""Render the Ray cluster launcher config from the template and the user's settings.

::

    cp cluster/settings.example.yaml cluster/settings.yaml   # then fill it in
    python -m ray_jobs.cluster_config                         # -> cluster/cluster.yaml
    ray up cluster/cluster.yaml

The values that belong to one AWS account (region, image, instance profiles, bucket, the
registry's database) live in ``cluster/settings.yaml`` and are written into the config here,
on the laptop, checked first: nothing is left for a node's shell to expand. The Ray version
comes from ``constraints.txt``, so the image runs the Ray that CI tested. Exit code 2 and a
message naming the setting for anything missing, unknown or malformed.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from ray_jobs.common import REPO

TEMPLATE = REPO / "cluster" / "template.yaml"
SETTINGS = REPO / "cluster" / "settings.yaml"
EXAMPLE = REPO / "cluster" / "settings.example.yaml"
OUTPUT = REPO / "cluster" / "cluster.yaml"
PLACEHOLDER = re.compile(r"\$\{([a-z][a-z0-9_]*)\}")
"""``${lower_case}``: shell variables (``$HOME``, ``${IICNET_X}``) are left alone."""

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


def check(settings: dict[str, Any], where: str, *, check_files: bool = True
          ) -> dict[str, str]:
    """The settings as the template's values; raises :class:`SettingsError`."""
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
    pgpass = Path(values["pgpass_file"]).expanduser()
    if check_files and not pgpass.is_file():
        raise SettingsError(f"{where}: pgpass_file: {pgpass} does not exist (one line: "
                            "HOST:PORT:DATABASE:USER:PASSWORD, mode 600)")
    values["pgpass_file"] = str(pgpass)
    values["max_workers"] = str(sum(settings[name] for name in COUNTS))
    values["ray_version"] = locked_ray_version()
    return values


def render(template: str, values: dict[str, str]) -> str:
    """``template`` with every ``${name}`` replaced; an unknown name is an error."""
    unknown = sorted(set(PLACEHOLDER.findall(template)) - set(values))
    if unknown:
        raise SettingsError(f"{TEMPLATE}: no value for ${{{unknown[0]}}}")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ray_jobs.cluster_config",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", type=Path, default=SETTINGS)
    parser.add_argument("-o", "--out", type=Path, default=OUTPUT)
    parser.add_argument("--no-file-checks", action="store_true",
                        help="do not require pgpass_file to exist (to inspect the output)")
    args = parser.parse_args(argv)
    try:
        values = check(read_settings(args.settings), str(args.settings),
                       check_files=not args.no_file_checks)
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
