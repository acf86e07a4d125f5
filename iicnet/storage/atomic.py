"""Writing local files and folders so that nobody ever sees half of one.

Every local writer in the project goes through one of these three context managers: the work is done
under a hidden temporary name beside the target and renamed onto it only when the block
finishes; a block that raises (or a process that is killed) leaves the target as it was and
only, at worst, a hidden ``.NAME.*.tmp`` beside it.

::

    with replacing(path) as tmp:        # a file
        write(tmp)
    with publishing(directory) as tmp:  # a folder, replaced whole
        write_files_into(tmp)
    with adding(directory) as tmp:      # files added to a folder, all of them or none
        write_files_into(tmp)
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temp_name(path: str | Path) -> Path:
    """A fresh hidden name next to ``path`` (its folder is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file name; rename it onto ``path`` when the block succeeds."""
    tmp = temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def publishing(directory: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder; when the block succeeds it becomes ``directory``
    (an existing one is swapped out and removed only after the new one is in place)."""
    directory = Path(directory)
    tmp = temp_name(directory)
    tmp.mkdir()
    try:
        yield tmp
        if directory.exists():
            old = temp_name(directory)
            directory.rename(old)
            tmp.rename(directory)
            shutil.rmtree(old)
        else:
            tmp.rename(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def adding(directory: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder; when the block succeeds its files are moved into
    ``directory`` (created if missing; other files there are kept, same names replaced).
    A block that raises adds nothing. Two processes adding to one folder at once never mix
    their files: the moves happen under an exclusive lock on the folder, so the last one
    to finish leaves its whole set."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory}: exists and is not a folder")
    tmp = temp_name(directory / "staging" if directory.is_dir() else directory)
    tmp.mkdir()
    try:
        yield tmp
        if not directory.exists():
            try:
                tmp.rename(directory)  # the whole folder at once
                return
            except OSError:  # another process made it meanwhile: add to it
                pass
        with locked(directory):
            for item in sorted(tmp.iterdir()):
                os.replace(item, directory / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``directory`` itself for the block (waiting for it)."""
    import fcntl

    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
