"""The WebDataset loader: splitting across ranks and workers, shuffling, resampling, and
corrupt shards."""

from __future__ import annotations

import io
import itertools
import logging
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from data_prep.cli import main
from iicnet.data import assign_samples, make_dataset, make_loader
from iicnet.formats.shards import Shard, read_manifest
from iicnet.model.config import ConfigError, from_dict

GRAY = {"data": {"task": "grayscale", "crop": 32, "loader_workers": 0},
        "model": {"num_images": 1, "embed_channels": 1}}
VIDEO = {"data": {"task": "video", "step": 5, "crop": 48, "batch_size": 2,
                  "loader_workers": 2, "shuffle_buffer": 16},
         "model": {"num_images": 5}}


def keys(source: str, raw: dict, *, rank: int = 0, world_size: int = 1, workers: int = 0,
         train: bool = False, epoch: int = 0) -> list[str]:
    dataset = make_dataset(source, from_dict(raw), split="train", train=train, rank=rank,
                           world_size=world_size, with_keys=True)
    dataset.epoch = epoch
    loader = DataLoader(dataset, batch_size=None, num_workers=workers)
    return [key for _, _, key in loader]


@pytest.fixture(scope="module")
def seven_images(samples: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """7 images in shards of 3, 3 and 1: neither shards nor samples divide 4 consumers."""
    root = tmp_path_factory.mktemp("seven")
    for path in sorted((samples / "folder" / "train").glob("*.jpg"))[:7]:
        shutil.copy(path, root / path.name)
    out = root.parent / f"{root.name}-shards"
    assert main(["folder", "--root", str(root), "--out", str(out), "--shard-size", "3"]) == 0
    return str(out)


def test_sample_ranges_cover_every_sample_once():
    shards = [Shard("a", 3), Shard("b", 3), Shard("c", 1)]
    plans = [assign_samples(shards, c, 4) for c in range(4)]
    assert plans == [[("a", 0, 1)], [("a", 1, 3)], [("b", 0, 2)], [("b", 2, 3), ("c", 0, 1)]]
    covered = Counter((url, i) for plan in plans for url, lo, hi in plan for i in range(lo, hi))
    assert sorted(covered) == [(s.url, i) for s in shards for i in range(s.samples)]
    assert set(covered.values()) == {1}
    assert sorted(sum(hi - lo for _, lo, hi in plan) for plan in plans) == [1, 2, 2, 2]


@pytest.mark.parametrize("train", [False, True])
def test_two_ranks_with_two_workers_read_each_sample_exactly_once(seven_images, train):
    everything = keys(seven_images, GRAY)
    assert len(everything) == len(set(everything)) == 7
    per_rank = [keys(seven_images, GRAY, rank=r, world_size=2, workers=2, train=train)
                for r in range(2)]
    combined = per_rank[0] + per_rank[1]
    assert sorted(combined) == sorted(everything)
    assert sorted(len(k) for k in per_rank) == [3, 4]


def test_video_windows_split_across_ranks_and_workers(local_shards):
    source = str(local_shards["davis"])
    everything = keys(source, VIDEO)
    per_rank = [keys(source, VIDEO, rank=r, world_size=2, workers=2, train=True)
                for r in range(2)]
    assert len(everything) == 37
    assert sorted(per_rank[0] + per_rank[1]) == sorted(everything)


def test_training_order_changes_with_the_epoch(local_shards):
    source = str(local_shards["davis"])
    first, again, second = (keys(source, VIDEO, train=True, epoch=e) for e in (0, 0, 1))
    assert first == again
    assert first != second and sorted(first) == sorted(second)
    assert first != keys(source, VIDEO)


def test_training_batches_from_worker_processes(local_shards):
    loader = make_loader(str(local_shards["davis"]), from_dict(VIDEO), split="train",
                         train=True)
    sizes = []
    for images, reference in loader:
        assert images.dtype == torch.uint8 and images.shape[1:] == (5, 3, 48, 48)
        assert reference.dtype == torch.float32 and reference.shape[1:] == (3, 48, 48)
        assert 0.0 <= float(reference.min()) and float(reference.max()) <= 1.0
        torch.testing.assert_close(reference, images[:, 0].float() / 255)
        sizes.append(images.shape[0])
    assert sum(sizes) == 37 and set(sizes[:-1]) == {2}
    assert loader.epoch == 1


def test_resampled_mode_streams_past_the_end_of_an_epoch(seven_images):
    dataset = make_dataset(seven_images, from_dict(GRAY), split="train", train=True,
                           resampled=True, with_keys=True)
    drawn = Counter(key for _, _, key in itertools.islice(iter(dataset), 80))
    assert sum(drawn.values()) == 80 and max(drawn.values()) > 1
    assert len(drawn) == 7


def corrupt_copy(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "shards"
    shutil.copytree(source, target)
    return target


@pytest.mark.timeout(120)
@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing"])
def test_a_corrupt_shard_is_reported_and_skipped(local_shards, tmp_path, caplog, damage):
    source = corrupt_copy(local_shards["folder"], tmp_path)
    shard = source / "train-000001.tar"
    if damage == "truncated":
        shard.write_bytes(shard.read_bytes()[:1500])
    elif damage == "garbage":
        shard.write_bytes(b"\x00not a tar at all" * 100)
    else:
        shard.unlink()
    with caplog.at_level(logging.WARNING, logger="iicnet.data"):
        found = keys(str(source), GRAY)
    assert len(found) == 6  # the other three shards of two images each
    assert any("train-000001.tar" in r.getMessage() for r in caplog.records)
    assert len(keys(str(source), GRAY, workers=2)) == 6  # and no hang in worker processes


@pytest.mark.timeout(120)
def test_resampled_mode_gives_up_when_no_shard_is_readable(local_shards, tmp_path):
    source = corrupt_copy(local_shards["flickr1024"], tmp_path)
    for shard in source.glob("train-*.tar"):
        shard.write_bytes(b"garbage")
    cfg = from_dict({"data": {"task": "stereo", "loader_workers": 0},
                     "model": {"num_images": 2}})
    with pytest.raises(RuntimeError, match="gave no samples"):
        next(iter(make_loader(str(source), cfg, split="train", train=True, resampled=True)))


def test_loader_errors_say_what_to_do(local_shards, tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m data_prep"):
        read_manifest(str(tmp_path))
    with pytest.raises(ConfigError, match="stereo task reads flickr1024"):
        make_loader(str(local_shards["davis"]),
                    from_dict({"data": {"task": "stereo"}, "model": {"num_images": 2}}),
                    split="train", train=True)
    with pytest.raises(ValueError, match="no split 'val'.*train, test"):
        make_loader(str(local_shards["matting"]), from_dict(
            {"data": {"task": "multilayer"}, "model": {"num_images": 3}}), split="val",
            train=False)


def _tar_member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x",
                link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def _hostile_shard(path: Path, member: tuple[tarfile.TarInfo, bytes], declared: int | None
                   ) -> None:
    """A shard holding one good sample, then ``member`` (its header's size ``declared``,
    when given, without the bytes: what a forged header claims)."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (("good.png", b"png"), ("good.meta.json", b"{}")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info, data = member
        tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    if declared is not None:  # forge the last header's size field, octal, NUL-terminated
        raw = bytearray(path.read_bytes())
        header = 3 * 512 + 512  # two 1-block members, each a header plus one data block
        raw[header + 124:header + 136] = f"{declared:011o}\0".encode()
        checksum = sum(raw[header:header + 148]) + 8 * 32 + sum(raw[header + 156:header + 512])
        raw[header + 148:header + 156] = f"{checksum:06o}\0 ".encode()
        path.write_bytes(bytes(raw))


@pytest.mark.parametrize("member, declared, says", [
    (_tar_member("../../escaped.png"), None, "an absolute or climbing name"),
    (_tar_member("/tmp/absolute.png"), None, "an absolute or climbing name"),
    (_tar_member("evil.png", tarfile.SYMTYPE, link="/etc/passwd"), None,
     "is a symbolic link"),
    (_tar_member("evil.png", tarfile.LNKTYPE, link="good.png"), None, "is a hard link"),
    (_tar_member("evil.png", tarfile.CHRTYPE), None, "is a device file"),
    (_tar_member("evil.png", tarfile.FIFOTYPE), None, "is a FIFO"),
    (_tar_member("huge.png"), 1 << 32, "declares 4294967296 bytes"),
], ids=["dotdot", "absolute", "symlink", "hardlink", "device", "fifo", "huge-size"])
def test_hostile_tar_members_are_refused_by_name(tmp_path: Path, caplog, member, declared,
                                                 says):
    from iicnet.formats.shards import read_shard

    shard = tmp_path / "shards" / "train-000000.tar"
    shard.parent.mkdir()
    _hostile_shard(shard, member, declared)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with caplog.at_level(logging.WARNING, logger="iicnet.data"):
        samples = list(read_shard(str(shard)))
    # At most the good sample before it is read; the hostile member is named, nothing of it
    # is kept, and nothing is written anywhere.
    assert [s["__key__"] for s in samples] in ([], ["good"])
    (warning,) = [r.getMessage() for r in caplog.records]
    assert f"member {member[0].name!r}" in warning and says in warning, warning
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not Path("/tmp/absolute.png").exists()
