"""iicnet.storage against the local disk and a real S3-compatible server on loopback."""

from __future__ import annotations

import io
import tarfile
import time

import pytest

from iicnet import storage


def test_parse_and_join():
    assert storage.parse_s3("s3://bkt/a/b/") == storage.S3Url("bkt", "a/b")
    assert storage.parse_s3("s3://bkt") == storage.S3Url("bkt", "")
    assert storage.join("s3://bkt", "x", "y.tar") == "s3://bkt/x/y.tar"
    assert storage.join("s3://bkt/p/", "/x") == "s3://bkt/p/x"
    assert storage.join("/tmp/d", "x") == "/tmp/d/x"
    with pytest.raises(storage.StorageError, match="no bucket"):
        storage.parse_s3("s3:///key")
    assert storage.is_s3("s3://b/k") and not storage.is_s3("/s3/b")


def test_local_writes_are_atomic_and_listed(tmp_path):
    target = tmp_path / "deep" / "dir" / "file.bin"
    storage.write_bytes(target, b"one")
    storage.write_bytes(target, b"two")
    source = tmp_path / "src.bin"
    source.write_bytes(b"three")
    storage.put_file(source, tmp_path / "deep" / "copy.bin")
    assert storage.read_bytes(target) == b"two"
    assert storage.list_names(tmp_path / "deep") == {"dir/file.bin", "copy.bin"}
    assert not [p for p in tmp_path.rglob("*.tmp")], "no temporary file may be left behind"
    storage.remove(target)
    storage.remove(target)
    assert not storage.exists(target)


def test_s3_round_trip(bucket, tmp_path):
    url = storage.join(bucket, "prefix", "a.txt")
    assert not storage.exists(url)
    storage.write_bytes(url, b"hello")
    local = tmp_path / "big.bin"
    local.write_bytes(bytes(range(256)) * 4096)
    storage.put_file(local, storage.join(bucket, "prefix", "sub", "big.bin"))
    assert storage.exists(url)
    assert storage.read_bytes(url) == b"hello"
    assert storage.list_names(storage.join(bucket, "prefix")) == {"a.txt", "sub/big.bin"}
    with storage.open_read(storage.join(bucket, "prefix", "sub", "big.bin")) as stream:
        assert stream.read() == local.read_bytes()
    storage.remove(url)
    assert storage.list_names(storage.join(bucket, "prefix")) == {"sub/big.bin"}


def test_s3_errors_name_the_url(bucket, s3, monkeypatch):
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        storage.read_bytes(storage.join(bucket, "missing.bin"))
    with pytest.raises(storage.StorageError, match="bucket does not exist"):
        storage.read_bytes("s3://no-such-bucket-here/x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(storage.StorageError, match="AWS_SECRET_ACCESS_KEY"):
        storage.write_bytes(storage.join(bucket, "x"), b"x")


def test_webdataset_reads_s3_through_the_registered_scheme(bucket):
    import webdataset as wds

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for key in ("a", "b", "c"):
            data = key.encode() * 3
            info = tarfile.TarInfo(f"{key}.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    url = storage.join(bucket, "shard-000000.tar")
    storage.write_bytes(url, buffer.getvalue())
    storage.register_gopen()
    dataset = wds.WebDataset(url, shardshuffle=False, empty_check=False)
    assert [(s["__key__"], s["txt"]) for s in dataset] == [
        ("a", b"aaa"), ("b", b"bbb"), ("c", b"ccc")
    ]


@pytest.mark.parametrize("exists", [True, False], ids=["into-a-folder", "new-folder"])
def test_two_writers_adding_to_one_folder_never_mix_their_files(tmp_path, monkeypatch,
                                                                exists):
    """What two ``iicnet restore -o DIR --overwrite`` at once do: each adds its K files; the
    folder ends with one writer's whole set, never some of each."""
    import threading

    from iicnet.storage import atomic

    target = tmp_path / "restored"
    if exists:
        target.mkdir()
        (target / "other.txt").write_text("kept")
    real_replace = atomic.os.replace

    first = {"A": 0.06, "B": 0.035}  # A starts later, then moves faster: the moves overlap
    each = {"A": 0.01, "B": 0.035}
    begun: set[str] = set()

    def slow_replace(source, destination):
        tag = threading.current_thread().name
        time.sleep(each[tag] if tag in begun else first[tag])
        begun.add(tag)
        real_replace(source, destination)

    monkeypatch.setattr(atomic.os, "replace", slow_replace)
    names = [f"{j:02d}-frame.png" for j in range(6)]
    start = threading.Barrier(2)

    def writer(tag: str) -> None:
        with atomic.adding(target) as tmp:
            for name in names:
                (tmp / name).write_text(tag)
            start.wait()

    threads = [threading.Thread(target=writer, args=(tag,), name=tag) for tag in "AB"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    contents = {(target / name).read_text() for name in names}
    assert len(contents) == 1, f"a mix of both writers' files: {contents}"
    assert not [p for p in target.iterdir() if p.name.startswith(".")]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    if exists:
        assert (target / "other.txt").read_text() == "kept"
