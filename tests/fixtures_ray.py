"""Ray nodes on loopback: a head for ``ray job submit`` tests, and more nodes for a cluster
that can lose one.

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


def _parents() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return parents


def node_processes(pgid: int) -> list[int]:
    """The processes of the node started in process group ``pgid``: the group's members and
    all their descendants (Ray starts its workers in sessions of their own)."""
    parents = _parents()
    found = set(group_members(pgid))
    grew = True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in found} - found
        found |= children
        grew = bool(children)
    return sorted(found)


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


def _ports(*names: str) -> dict[str, int]:
    return {name: _free_port() for name in names}


NODE_PORTS = ("node-manager-port", "object-manager-port", "dashboard-agent-grpc-port",
              "dashboard-agent-listen-port", "metrics-export-port", "runtime-env-agent-port")


@dataclass
class Node:
    """A ``ray start`` in its own process group: its raylet, object store and workers."""

    pgid: int
    log: Path

    def processes(self) -> list[int]:
        return node_processes(self.pgid)

    def node_id(self) -> str:
        """Ray's hex id of this node, from its raylet's command line."""
        for pid in self.processes():
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            for arg in args:
                for flag in (b"--node_id=", b"--node-id="):
                    if arg.startswith(flag):
                        return arg[len(flag):].decode()
        raise RuntimeError(f"no process of the node in group {self.pgid} names its node id")

    def runs(self, name: bytes) -> bool:
        """Whether a process of this node has ``name`` in its command line."""
        for pid in self.processes():
            try:
                if name in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return True
            except OSError:
                continue
        return False

    def kill(self) -> None:
        """Lose the node at once: SIGKILL every process of it, as a dead machine would."""
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def start_head(num_cpus: int = 2, resources: str | None = None
               ) -> tuple[RayHead, subprocess.Popen]:
    """``ray start --head`` on loopback (see the module docstring) and its starter process."""
    temp = Path(tempfile.mkdtemp(prefix="iicray", dir="/tmp"))  # socket paths must be short
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    ports = _ports("port", "dashboard-port", "ray-client-server-port", *NODE_PORTS)
    ray = str(Path(sys.executable).with_name("ray"))
    command = [ray, "start", "--head", f"--num-cpus={num_cpus}", "--disable-usage-stats",
               "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
               f"--temp-dir={temp}", *(f"--{name}={port}" for name, port in ports.items())]
    if resources:
        command.append(f"--resources={resources}")
    log = temp / "ray-start.log"
    with open(log, "wb") as out:
        starter = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    if starter.wait(timeout=180) != 0:
        stop_group(starter.pid)
        raise RuntimeError(f"ray start failed:\n{log.read_text()[-3000:]}")
    head = RayHead(f"127.0.0.1:{ports['port']}", f"http://127.0.0.1:{ports['dashboard-port']}",
                   env, temp)
    return head, starter


def start_node(head: RayHead, num_cpus: int, label: str, tries: int = 3) -> Node:
    """Another node of ``head``'s cluster on this machine, with its own ports. A raylet gets
    30 s to register, which a loaded machine can miss: then the node is removed and started
    again."""
    log = head.temp_dir / f"node-{label}.log"
    for _ in range(tries):
        ports = _ports(*NODE_PORTS)
        command = [head.ray(), "start", f"--address={head.address}", f"--num-cpus={num_cpus}",
                   "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                   *(f"--{name}={port}" for name, port in ports.items())]
        with open(log, "ab") as out:
            starter = subprocess.Popen(command, env=head.env, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        if starter.wait(timeout=180) == 0:
            return Node(starter.pid, log)
        Node(starter.pid, log).kill()
    raise RuntimeError(f"ray start (node {label}) failed {tries} times:\n"
                       f"{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def ray_head():
    head, starter = start_head()
    try:
        yield head
    finally:
        stop_group(starter.pid)
        shutil.rmtree(head.temp_dir, ignore_errors=True)
