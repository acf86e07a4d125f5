"""A Ray head node on loopback, for ``ray job submit`` tests.

``ray_head`` (session) runs ``ray start --head`` on 127.0.0.1 with every port it opens taken
from free ones (other Ray clusters may run on the same machine), token authentication off
(``RAY_AUTH_MODE=disabled``, loopback only) and its own short temp dir. ``ray start`` runs
in a new session, so every daemon and worker of this head shares its process group; the
fixture stops exactly that group (``ray stop`` would stop every Ray on the machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import _free_port


@dataclass(frozen=True)
class RayHead:
    address: str
    """GCS address, ``127.0.0.1:<port>``."""
    dashboard: str
    """Jobs API, ``http://127.0.0.1:<port>``."""
    env: dict[str, str]
    """Environment for ``ray`` commands against this head."""
    temp_dir: Path

    def ray(self) -> str:
        return str(Path(sys.executable).with_name("ray"))


def group_members(pgid: int) -> list[int]:
    """PIDs of the live processes in process group ``pgid``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def stop_group(pgid: int, timeout: float = 5) -> None:
    """SIGTERM process group ``pgid``, then SIGKILL it if anything is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not group_members(pgid):
            return


@pytest.fixture(scope="session")
def ray_head():
    temp = Path(tempfile.mkdtemp(prefix="iicray", dir="/tmp"))  # socket paths must be short
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    ports = {name: _free_port() for name in (
        "port", "dashboard-port", "ray-client-server-port", "node-manager-port",
        "object-manager-port", "dashboard-agent-grpc-port", "dashboard-agent-listen-port",
        "metrics-export-port", "runtime-env-agent-port")}
    ray = str(Path(sys.executable).with_name("ray"))
    command = [ray, "start", "--head", "--num-cpus=2", "--disable-usage-stats",
               "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
               f"--temp-dir={temp}", *(f"--{name}={port}" for name, port in ports.items())]
    log = temp / "ray-start.log"
    with open(log, "wb") as out:
        starter = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        if starter.wait(timeout=180) != 0:
            raise RuntimeError(f"ray start failed:\n{log.read_text()[-3000:]}")
        yield RayHead(f"127.0.0.1:{ports['port']}", f"http://127.0.0.1:{ports['dashboard-port']}",
                      env, temp)
    finally:
        stop_group(starter.pid)
        shutil.rmtree(temp, ignore_errors=True)
