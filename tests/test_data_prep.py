"""data_prep end to end: sample datasets -> shards on disk and on a loopback S3 server ->
exactly the expected samples and task windows back; bad files; --strict; resume."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from data_prep.cli import main
from data_prep.images import BadImage, read_image
from data_prep.samples import DAVIS_CLIPS
from iicnet import storage
from iicnet.data import make_dataset, make_loader
from iicnet.formats.shards import read_manifest
from iicnet.model.config import from_dict
from iicnet.storage.atomic import temp_name
from tests.helpers import resize_tmpfs, tmpfs

SAMPLES_PER_SPLIT = {
    "davis": {"train": 4, "val": 2, "test": 2},
    "flickr1024": {"train": 4, "val": 2, "test": 2},
    "div2k": {"train": 3, "val": 2},
    "matting": {"train": 3, "test": 2},
    "folder": {"train": 8, "val": 2, "test": 2},
}


def davis_frames() -> dict[str, list[int]]:
    """Frame counts of the sample clips per split, by the paper's rule for test-dev."""
    test_dev = sorted(DAVIS_CLIPS["DAVIS-2017-test-dev"].items())
    return {
        "train": [*DAVIS_CLIPS["DAVIS-2017-trainval"].values(),
                  *(n for i, (_, n) in enumerate(test_dev) if i % 2 == 0)],
        "val": [n for i, (_, n) in enumerate(test_dev) if i % 2 == 1],
        "test": list(DAVIS_CLIPS["DAVIS-2017-test-challenge"].values()),
    }


def video_windows(k: int, step: int) -> dict[str, int]:
    return {split: sum(max(0, n - step * (k - 1)) for n in frames)
            for split, frames in davis_frames().items()}


# (layout, config overrides, expected windows per split)
TASK_CASES = [
    ("davis", {"data": {"task": "video", "step": 5}, "model": {"num_images": 5}},
     video_windows(5, 5)),
    ("davis", {"data": {"task": "video", "step": 5}, "model": {"num_images": 9}},
     video_windows(9, 5)),
    ("davis", {"data": {"task": "video", "step": 1},
               "model": {"num_images": 3, "downscale": "haar", "order": "hl"}},
     video_windows(3, 1)),
    ("flickr1024", {"data": {"task": "stereo"}, "model": {"num_images": 2}},
     {"train": 4, "val": 2, "test": 2}),
    ("div2k", {"data": {"task": "dualview", "scale": 8}, "model": {"num_images": 2}},
     {"train": 3, "val": 2}),
    ("div2k", {"data": {"task": "dualview", "scale": 2}, "model": {"num_images": 2}},
     {"train": 3, "val": 2}),
    ("div2k", {"data": {"task": "rescaling"},
               "model": {"num_images": 1, "downscale": "squeeze", "order": "hl"}},
     {"train": 3, "val": 2}),
    ("matting", {"data": {"task": "multilayer"}, "model": {"num_images": 3}},
     {"train": 3, "test": 2}),
    ("matting", {"data": {"task": "multilayer", "matte": True}, "model": {"num_images": 4}},
     {"train": 3, "test": 2}),
    ("folder", {"data": {"task": "hiding"}, "model": {"num_images": 3}},
     {"train": 2, "val": 0, "test": 0}),
    ("folder", {"data": {"task": "hiding"}, "model": {"num_images": 2}},
     {"train": 4, "val": 1, "test": 1}),
    ("folder", {"data": {"task": "grayscale"}, "model": {"num_images": 1, "embed_channels": 1}},
     {"train": 8, "val": 2, "test": 2}),
    ("folder", {"data": {"task": "rescaling"},
                "model": {"num_images": 1, "downscale": "squeeze", "order": "hl"}},
     {"train": 8, "val": 2, "test": 2}),
]


def config(overrides: dict, workers: int = 0):
    data = {"crop": 32, "batch_size": 3, "loader_workers": workers, **overrides["data"]}
    return from_dict({"data": data, "model": overrides["model"]})


def count_windows(source: str, cfg, split: str) -> int:
    total = 0
    for images, reference in make_loader(source, cfg, split=split, train=False):
        assert images.shape[1:] == (cfg.model.num_images, 3, 32, 32)
        assert images.shape[0] == reference.shape[0] <= cfg.data.batch_size
        total += images.shape[0]
    return total


@pytest.mark.parametrize("layout", list(SAMPLES_PER_SPLIT))
def test_layout_shards_to_disk_and_s3_and_reads_back_every_window(
        layout, samples, local_shards, bucket, s3, capsys):
    local = str(local_shards[layout])
    remote = storage.join(bucket, "shards", layout)
    assert main([layout, "--root", str(samples / layout), "--out", remote,
                 "--shard-size", "2"]) == 0
    assert "0 finished shards reused" in capsys.readouterr().err

    manifests = {"disk": read_manifest(local), "s3": read_manifest(remote)}
    for where, manifest in manifests.items():
        assert manifest["source"] == layout, where
        counts = {split: info["samples"] for split, info in manifest["splits"].items()}
        assert counts == SAMPLES_PER_SPLIT[layout], where
        assert manifest["skipped"] == [], where
    for split, info in manifests["disk"]["splits"].items():
        assert [s["sha256"] for s in info["shards"]] == \
            [s["sha256"] for s in manifests["s3"]["splits"][split]["shards"]]
    served = s3.root / bucket.removeprefix("s3://") / "shards" / layout
    assert (served / "manifest.json").exists()
    assert not [p for p in served.rglob("*.tmp")]

    cases = [case for case in TASK_CASES if case[0] == layout]
    for index, (_, overrides, windows) in enumerate(cases):
        for split, expected in windows.items():
            assert count_windows(local, config(overrides), split) == expected, (split, overrides)
        if index == 0:  # through S3 too, decoding in two forked DataLoader workers
            for split, expected in windows.items():
                assert count_windows(remote, config(overrides, workers=2), split) == expected


def copy_clip(samples: Path, tmp_path: Path, video: str = "rocket-zoom") -> tuple[Path, Path]:
    subset = "DAVIS-2017-trainval"
    source = samples / "davis" / subset / "JPEGImages" / "480p" / video
    root = tmp_path / "davis"
    clip_dir = root / subset / "JPEGImages" / "480p" / video
    shutil.copytree(source, clip_dir)
    return root, clip_dir


def test_bad_frames_are_reported_skipped_counted_and_cut_the_clip(samples, tmp_path, capsys):
    root, clip_dir = copy_clip(samples, tmp_path)
    truncated = clip_dir / "00010.jpg"
    truncated.write_bytes(truncated.read_bytes()[:3000])
    resized = clip_dir / "00020.jpg"
    Image.open(resized).resize((640, 360)).save(resized)
    out = tmp_path / "out"

    assert main(["davis", "--root", str(root), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"skipped {truncated}: frame does not decode" in err
    assert f"skipped {resized}: frame size 640x360 differs from the clip's 854x480" in err
    assert "skipped 2 bad source files" in err

    manifest = read_manifest(str(out))
    assert {b["path"] for b in manifest["skipped"]} == {str(truncated), str(resized)}
    # Reasons are the same in every run: no object addresses from the decoder's messages.
    assert not any(" at 0x" in b["reason"] for b in manifest["skipped"]), manifest["skipped"]
    assert manifest["splits"]["train"]["samples"] == 3  # frames 0-9, 11-19, 21-29
    cfg = from_dict({"data": {"task": "video", "step": 1, "crop": 32, "loader_workers": 0},
                     "model": {"num_images": 3}})
    windows = sum(len(images) for images, _ in make_loader(str(out), cfg, split="train",
                                                            train=False))
    assert windows == (10 - 2) + (9 - 2) + (9 - 2)


def test_strict_fails_on_the_first_bad_file_and_writes_no_manifest(samples, tmp_path, capsys):
    root, clip_dir = copy_clip(samples, tmp_path)
    bad = clip_dir / "00003.jpg"
    bad.write_bytes(bad.read_bytes()[:2000])
    out = tmp_path / "out"
    assert main(["davis", "--root", str(root), "--out", str(out), "--strict"]) == 1
    err = capsys.readouterr().err
    assert f"error: {bad}: frame does not decode" in err and "(--strict)" in err
    assert not (out / "manifest.json").exists()


def test_strict_exit_status_from_the_command_line(samples, tmp_path):
    root = tmp_path / "folder"
    shutil.copytree(samples / "folder" / "val", root)
    bad = sorted(root.glob("*.jpg"))[0]
    bad.write_bytes(bad.read_bytes()[:500])
    command = [sys.executable, "-m", "data_prep", "folder", "--root", str(root),
               "--out", str(tmp_path / "out")]
    done = subprocess.run([*command, "--strict"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and str(bad) in done.stderr
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and f"skipped {bad}" in done.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["samples"] == 1
    assert manifest["skipped"][0]["path"] == str(bad)


def test_missing_right_view_skips_the_pair(samples, tmp_path, capsys):
    root = tmp_path / "flickr"
    shutil.copytree(samples / "flickr1024" / "Train", root / "Train")
    (root / "Train" / "0003_R.png").unlink()
    out = tmp_path / "out"
    assert main(["flickr1024", "--root", str(root), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    expected = root / "Train" / "0003_R.png"
    assert f"skipped {root / 'Train' / '0003_L.png'}: missing right view {expected}" in err
    manifest = read_manifest(str(out))
    assert manifest["splits"]["train"]["samples"] == 3
    assert len(manifest["skipped"]) == 1


def test_rerun_reuses_finished_shards_and_resumes_after_a_crash(samples, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["folder", "--root", str(samples / "folder"), "--out", str(out), "--shard-size", "2"]
    assert main(args) == 0
    first = json.loads((out / "manifest.json").read_text())
    shards = sorted(out.glob("*.tar"))
    assert len(shards) == 6
    stamps = {p.name: p.stat().st_mtime_ns for p in shards}
    capsys.readouterr()

    assert main(args) == 0
    assert "0 shards written, 6 finished shards reused" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in shards} == stamps

    # A crash after train-000002.tar was renamed but before its record and the manifest
    # were written, while train-000003.tar was still a temporary file.
    (out / "manifest.json").unlink()
    (out / ".progress" / "train-000002.tar.json").unlink()
    stale = temp_name(out / "train-000003.tar")
    stale.write_bytes(b"half a shard")
    assert main(args) == 0
    assert "1 shards written, 5 finished shards reused" in capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text()) == first
    changed = {p.name for p in shards if p.stat().st_mtime_ns != stamps[p.name]}
    assert changed == {"train-000002.tar"}
    assert not stale.exists()


def test_rerun_to_s3_reuses_finished_shards(samples, bucket, capsys):
    out = storage.join(bucket, "div2k")
    args = ["div2k", "--root", str(samples / "div2k"), "--out", out, "--shard-size", "2"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 0
    assert "0 shards written, 3 finished shards reused" in capsys.readouterr().err
    assert read_manifest(out)["splits"]["train"]["samples"] == 3


def test_a_root_without_the_layout_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["davis", "--root", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 1
    assert "no DAVIS folders found" in capsys.readouterr().err


def test_long_and_odd_file_names_become_distinct_tar_keys(samples, tmp_path):
    root = tmp_path / "photos"
    source = sorted((samples / "folder" / "train").glob("*.jpg"))[:3]
    names = ["a" * 90 + ".x.jpg", "a" * 90 + "_x.jpg", "été 2024.jpg"]
    for path, name in zip(source, names, strict=True):
        (root / "deep" / ("nested_" * 8)).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / "deep" / ("nested_" * 8) / name)
    out = tmp_path / "out"
    assert main(["folder", "--root", str(root), "--out", str(out)]) == 0
    cfg = from_dict({"data": {"task": "grayscale", "crop": 32, "loader_workers": 0},
                     "model": {"num_images": 1, "embed_channels": 1}})
    found = [key for _, _, key in make_dataset(str(out), cfg, split="train", train=False,
                                               with_keys=True)]
    assert len(set(found)) == 3
    assert all(len(key) <= 80 for key in found)


def test_an_undecodable_file_gives_the_same_reason_in_every_run(tmp_path):
    not_an_image = tmp_path / "00000.jpg"
    not_an_image.write_bytes(b"plain text, not a JPEG")
    reasons = set()
    for _ in range(2):
        with pytest.raises(BadImage) as caught:
            read_image(not_an_image)
        reasons.add(str(caught.value))
    (reason,) = reasons
    assert reason.startswith("does not decode (") and "0x" not in reason, reason


def test_a_full_disk_stops_with_exit_2_and_a_rerun_with_space_resumes(samples, tmp_path):
    """A real full disk (a small tmpfs): one message naming the shard and the reason, exit 2,
    only whole shards under final names, no manifest; given room, a rerun reuses them."""
    with tmpfs(tmp_path / "small", "size=160k") as small:
        out = small / "out"
        command = [sys.executable, "-m", "data_prep", "folder", "--root",
                   str(samples / "folder"), "--out", str(out), "--shard-size", "1"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "No space left on device" in errors[0]
        failed = errors[0].split()[1].rstrip(":")
        assert failed.startswith(str(out)) and failed.endswith(".tar")
        assert not (out / "manifest.json").exists() and not Path(failed).exists()
        kept = sorted(p.name for p in out.glob("*.tar"))
        assert kept, "the disk should hold some shards before it fills"
        assert not [p for p in out.rglob(".*.tmp")]
        for name in kept:  # each kept shard is whole: its record's sha256 matches
            record = json.loads((out / ".progress" / f"{name}.json").read_text())
            assert storage.sha256(out / name) == record["sha256"]
        stamps = {name: (out / name).stat().st_mtime_ns for name in kept}

        resize_tmpfs(small, "8m")
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert f"{len(kept)} finished shards reused" in done.stderr
        assert {name: (out / name).stat().st_mtime_ns for name in kept} == stamps
        manifest = read_manifest(str(out))
        listed = [s["name"] for split in manifest["splits"].values() for s in split["shards"]]
        assert sorted(listed) == sorted(p.name for p in out.glob("*.tar")) and len(listed) == 12


def test_a_second_prep_into_a_folder_being_written_is_refused(samples, tmp_path, capsys):
    from data_prep.shards import LOCK, exclusive

    out = tmp_path / "shards"
    args = ["davis", "--root", str(samples / "davis"), "--out", str(out), "--shard-size", "4"]
    with exclusive(str(out)):  # a first prep, still writing
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"{out}: another data prep is writing there (pid " in err
        assert "give another --out" in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK], "the second wrote nothing"
    # Two real preps at once: one writes, the other is refused or finds it done; never a mix.
    command = [sys.executable, "-m", "data_prep", *args]
    both = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in both]
    assert sorted(code for code, _ in results) in ([0, 0], [0, 2]), results
    for code, err in results:
        assert code == 0 or "another data prep is writing there" in err, err
    manifest = read_manifest(str(out))
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            assert storage.sha256(out / shard["name"]) == shard["sha256"]
