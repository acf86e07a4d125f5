"""The README's first-hour commands, run exactly as printed from a fresh shell.

A fresh shell: ``env -i`` (no activated venv, no ``MLFLOW_TRACKING_URI``, a plain ``PATH``),
``bash -c <line>`` in a folder laid out like the repository after ``make run``: ``.venv`` (the
real one, linked) and ``.iicnet`` written by ``ray_jobs/train.py`` run as ``make run`` runs it,
only shorter (4 steps of a narrower network instead of 900).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY = ["--steps", "4", "--set", "model.blocks=1", "--set", "model.nf=4", "--set",
        "model.growth=4", "--set", "data.batch_size=2", "--set", "train.val_every=4",
        "--set", "train.checkpoint_every=4"]


def first_hour_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- first-hour -->\s*```bash\n(.*?)```\s*<!-- /first-hour -->", text,
                      re.S)
    assert block, "README.md lost its first-hour block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_the_readme_opens_with_the_two_commands():
    text = (REPO / "README.md").read_text()
    first = re.search(r"```bash\n(.*?)```", text, re.S).group(1).splitlines()
    assert [line.split()[:2] for line in first] == [["make", "run"], ["make", "test"]]


@pytest.mark.slow
def test_first_hour_commands_run_as_printed(tmp_path: Path):
    home = tmp_path / "repo"
    home.mkdir()
    (home / ".venv").symlink_to(Path(sys.prefix))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}
    env.update(IICNET_CACHE=str(home / ".iicnet"), RAY_USAGE_STATS_ENABLED="0",
               MLFLOW_DISABLE_TELEMETRY="true", RAY_AUTH_MODE="disabled")
    trained = subprocess.run([sys.executable, str(REPO / "ray_jobs" / "train.py"), *TINY],
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert trained.returncode == 0, f"{trained.stdout[-3000:]}\n{trained.stderr[-3000:]}"
    use_it = [line for line in trained.stdout.splitlines() if "use it:" in line]
    assert use_it and "iicnet info models:/iicnet-video@candidate" in use_it[0]
    assert "MLFLOW_TRACKING_URI" not in use_it[0]

    fresh = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    for command in first_hour_commands():
        done = subprocess.run(["env", "-i", *(f"{k}={v}" for k, v in fresh.items()), "bash",
                               "-c", command], cwd=home, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        assert "Traceback" not in done.stderr and "command not found" not in done.stderr
    assert sorted(p.name for p in (home / "restored").iterdir()) == [
        "00-frame_-1.png", "01-frame_0.png", "02-frame_+1.png"]
    assert not (home / "mlflow.db").exists() and not (home / "mlruns").exists()

    elsewhere = subprocess.run(
        ["env", "-i", *(f"{k}={v}" for k, v in fresh.items()), str(home / ".venv/bin/iicnet"),
         "info", "models:/iicnet-video@candidate"], cwd=tmp_path, capture_output=True,
        text=True, timeout=300)
    assert elsewhere.returncode == 2
    assert "no .iicnet/mlflow.db (what make run writes)" in elsewhere.stderr
    assert str(tmp_path) in elsewhere.stderr and not (tmp_path / "mlflow.db").exists()
