"""ray_jobs/prep.py: the same shards and manifest as ``python -m data_prep``, written by Ray
tasks to a directory or the loopback S3 server, resumed after a crash.

One local Ray per module (2 CPUs, no dashboard); ``main`` runs in this process against it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from data_prep.cli import LAYOUTS
from data_prep.cli import main as data_prep
from iicnet import storage
from iicnet.formats.shards import read_manifest
from ray_jobs.prep import main
from tests.conftest import S3Server

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """A private local Ray; its temp dir (logs included) is yielded."""
    import ray

    temp = Path(tempfile.mkdtemp(prefix="iicprep", dir="/tmp"))  # socket paths must be short
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "disabled")  # loopback only; see shared/STACK.md
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        patch.delenv("RAY_ADDRESS", raising=False)
        ray.init(address="local", num_cpus=2, include_dashboard=False,
                 logging_level=logging.WARNING, _temp_dir=str(temp))
        try:
            yield temp
        finally:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


def shard_stamps(out: Path) -> dict[str, int]:
    """mtime (ns) of every shard and progress record under ``out``."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns
            for p in [*out.glob("*.tar"), *out.glob(".progress/*.json")]}


def without_addresses(manifest: dict) -> dict:
    """PIL's "cannot identify image file <_io.BytesIO object at 0x...>" differs per run."""
    return json.loads(re.sub(r" at 0x[0-9a-f]+", "", json.dumps(manifest)))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_same_manifest_as_data_prep_on_disk(layout, samples, local_shards, tmp_path, capsys):
    out = tmp_path / layout
    assert main([layout, "--root", str(samples / layout), "--out", str(out),
                 "--shard-size", "2"]) == 0
    expected = json.loads((local_shards[layout] / "manifest.json").read_text())
    assert json.loads((out / "manifest.json").read_text()) == expected
    shards = sum(len(s["shards"]) for s in expected["splits"].values())
    assert f"{shards} shards written by Ray tasks, 0 finished shards reused" in \
        capsys.readouterr().err


def test_a_rerun_after_a_crash_writes_only_the_missing_shard(samples, tmp_path, capsys):
    out = tmp_path / "davis"
    args = ["davis", "--root", str(samples / "davis"), "--out", str(out), "--shard-size", "1"]
    assert main(args) == 0
    first = json.loads((out / "manifest.json").read_text())
    stamps = shard_stamps(out)
    assert len(stamps) == 16  # 8 clips: 8 shards, 8 progress records

    # What a crash while writing train-000002.tar leaves: no manifest, no such shard, and
    # the temporary file of its upload.
    (out / "manifest.json").unlink()
    (out / "train-000002.tar").unlink()
    stale = out / ".train-000002.tar.4242.0123abcd.tmp"
    stale.write_bytes(b"half a shard")
    capsys.readouterr()
    assert main(args) == 0
    assert "1 shards written by Ray tasks, 7 finished shards reused" in capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text()) == first
    now = shard_stamps(out)
    assert {name for name in stamps if now[name] != stamps[name]} == {
        "train-000002.tar", ".progress/train-000002.tar.json"}
    assert not stale.exists()

    assert main(args) == 0  # nothing left to do: no task, same manifest
    assert "0 shards written by Ray tasks, 8 finished shards reused" in capsys.readouterr().err
    assert shard_stamps(out) == now


def test_bad_files_are_reported_like_data_prep_and_strict_fails(samples, tmp_path, capsys):
    root = tmp_path / "folder"
    shutil.copytree(samples / "folder", root)
    bad = sorted((root / "train").glob("*.jpg"))[3]
    bad.write_bytes(b"not a JPEG")
    args = ["folder", "--root", str(root), "--shard-size", "3"]

    assert main([*args, "--out", str(tmp_path / "strict"), "--strict"]) == 1
    err = capsys.readouterr().err
    assert f"error: {bad}" in err and "(--strict)" in err
    assert not (tmp_path / "strict" / "manifest.json").exists()

    assert data_prep([*args, "--out", str(tmp_path / "plain")]) == 0
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "ray")]) == 0
    err = capsys.readouterr().err
    assert err.count(f"skipped {bad}: ") == 1
    assert "skipped 1 bad source files" in err
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert without_addresses(manifest) == without_addresses(
        json.loads((tmp_path / "plain" / "manifest.json").read_text()))
    assert [entry["path"] for entry in manifest["skipped"]] == [str(bad)]
    # The strict run's finished shards are reused by the next run into the same folder.
    finished = shard_stamps(tmp_path / "strict")
    assert main([*args, "--out", str(tmp_path / "strict")]) == 0
    assert finished.items() <= shard_stamps(tmp_path / "strict").items()


def test_bad_arguments(tmp_path, capsys):
    assert main(["davis", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 1
    assert "error: --root" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["davis", "--out", str(tmp_path)])
    assert exit_.value.code == 2


def test_same_manifest_on_s3_with_credentials_handed_to_tasks(
        local_ray, samples, local_shards, s3: S3Server, bucket: str, capsys):
    import ray

    @ray.remote
    def endpoint() -> str | None:
        return os.environ.get("AWS_ENDPOINT_URL")

    # This Ray's workers started without the S3 variables: only prep.py can hand them over.
    assert ray.get(endpoint.remote()) != s3.endpoint

    out = storage.join(bucket, "davis")
    assert main(["davis", "--root", str(samples / "davis"), "--out", out,
                 "--shard-size", "2"]) == 0
    assert read_manifest(out) == json.loads(
        (local_shards["davis"] / "manifest.json").read_text())
    served = s3.root / bucket.removeprefix("s3://") / "davis"
    for shard in local_shards["davis"].glob("*.tar"):
        assert (served / shard.name).read_bytes() == shard.read_bytes()
    assert not list(served.rglob("*.tmp"))

    printed = capsys.readouterr()
    assert s3.secret_key not in printed.out + printed.err
    secret = s3.secret_key.encode()
    assert not [p for p in local_ray.rglob("*") if p.is_file() and secret in p.read_bytes()]
    assert ray.get(endpoint.remote()) != s3.endpoint  # set only while a task runs


def test_a_second_ray_prep_into_a_folder_being_written_is_refused(samples, tmp_path, capsys):
    """The Ray front end takes the same lock as ``python -m data_prep``: refused with exit 2
    before any Ray task, and nothing of the first prep's folder touched."""
    from data_prep.shards import LOCK, exclusive

    out = tmp_path / "shards"
    with exclusive(str(out)):  # a first prep (of either front end), still writing
        (out / "train-000000.tar.tmp-1234").write_bytes(b"being written")
        assert main(["davis", "--root", str(samples / "davis"), "--out", str(out),
                     "--shard-size", "4", "--address", "127.0.0.1:1"]) == 2
        err = capsys.readouterr().err
        assert f"{out}: another data prep is writing there (pid {os.getpid()} since" in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK, "train-000000.tar.tmp-1234"]
