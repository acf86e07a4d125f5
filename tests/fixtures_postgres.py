"""A real PostgreSQL server on loopback, for the MLflow tracking server's backend store.

:func:`start_postgres` runs ``initdb`` into a fresh folder and ``postgres`` on 127.0.0.1 at
a free port (trust authentication, loopback only: there is no password to leak), and gives a
:class:`Postgres` that creates databases; ``tests/conftest.py`` makes it the session fixture
``postgres_server``. PostgreSQL refuses to run as root, so
under root the server programs run as the ``postgres`` user the Debian package creates.
``.ci/run`` installs the package where the programs are missing.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

USER = "iicnet"


def server_program(name: str) -> str:
    """``initdb`` / ``postgres``: on PATH, or in Debian's versioned folder (newest first)."""
    found = shutil.which(name)
    if found:
        return found
    versioned = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                       key=lambda p: int(Path(p).parts[4]) if Path(p).parts[4].isdigit() else 0)
    if not versioned:
        raise RuntimeError(f"PostgreSQL's {name} not found: apt-get install -y postgresql "
                           "(.ci/run does this on a fresh machine)")
    return versioned[-1]


def _as_server_user() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@dataclass
class Postgres:
    port: int
    base: Path

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user=USER,
                                      dbname="postgres")
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return self.url(name)


def _accepting(port: int) -> bool:
    import psycopg2

    try:
        psycopg2.connect(host="127.0.0.1", port=port, user=USER, dbname="postgres",
                         connect_timeout=1).close()
        return True
    except psycopg2.OperationalError:
        return False


def start_postgres() -> tuple[subprocess.Popen, Postgres]:
    from tests.conftest import start_on_free_port

    # Not under pytest's tmp folders: those are private to root, and the server runs as postgres.
    base = Path(tempfile.mkdtemp(prefix="iicnet-postgres-"))
    data, log_path = base / "data", base / "server.log"
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
    initdb = subprocess.run([*_as_server_user(), server_program("initdb"), "-D", str(data),
                             "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync"],
                            capture_output=True, text=True)
    if initdb.returncode != 0:
        raise RuntimeError(f"initdb failed:\n{initdb.stdout[-2000:]}{initdb.stderr[-2000:]}")
    postgres = server_program("postgres")
    process, port = start_on_free_port(
        "postgres",
        lambda port: [*_as_server_user(), postgres, "-D", str(data), "-p", str(port),
                      "-h", "127.0.0.1", "-k", str(base), "-c", "fsync=off",
                      "-c", "full_page_writes=off", "-c", "max_connections=200"],
        _accepting, log_path, timeout=60, interval=0.2, start_new_session=True)
    return process, Postgres(port, base)


def stop_postgres(process: subprocess.Popen, server: Postgres) -> None:
    # SIGINT is PostgreSQL's "fast shutdown": it ends the sessions and stops cleanly.
    os.killpg(process.pid, 2)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait()
    shutil.rmtree(server.base, ignore_errors=True)
