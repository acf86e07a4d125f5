"""DAVIS 2017 (480p JPEGs): one sample per video clip.

Layout: ``--root`` holds any of ``DAVIS-2017-trainval``, ``DAVIS-2017-test-dev`` and
``DAVIS-2017-test-challenge``, each with ``JPEGImages/480p/<video>/NNNNN.jpg``. Splits as
the paper: train = all of trainval + the even-indexed test-dev videos (0, 2, ... in name
order), val = the odd-indexed test-dev videos, test = test-challenge. A root that is itself
one DAVIS folder (it has ``JPEGImages/480p``) becomes the single split ``--split`` (default
``train``).

A frame that does not decode, or whose size differs from the clip's most common frame size,
is reported and skipped; it cuts the clip, and each run of good frames becomes its own sample
(``<video>_part1``, ...), so a window never spans a hole in time.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from data_prep.images import SourceImage
from data_prep.shards import Item, PrepError, Report, Sample, sample_key

NAME = "davis"
FRAMES = Path("JPEGImages", "480p")
TRAINVAL, TEST_DEV, TEST_CHALLENGE = (
    "DAVIS-2017-trainval", "DAVIS-2017-test-dev", "DAVIS-2017-test-challenge"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", default="train",
                        help="split name when --root is a single DAVIS folder (default train)")


def _clips(folder: Path) -> list[Item]:
    base = folder / FRAMES
    items = []
    for video in sorted(p for p in base.iterdir() if p.is_dir()):
        frames = sorted(p for p in video.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
        if frames:
            items.append(Item(
                id=f"{folder.name}/{video.name}",
                files={f.name: f for f in frames},
                meta={"subset": folder.name, "video": video.name},
            ))
    return items


def plan(root: Path, options: argparse.Namespace) -> dict[str, list[Item]]:
    if (root / FRAMES).is_dir():
        return {options.split: _clips(root)}
    splits: dict[str, list[Item]] = {"train": [], "val": [], "test": []}
    found = False
    if (root / TRAINVAL / FRAMES).is_dir():
        splits["train"] += _clips(root / TRAINVAL)
        found = True
    if (root / TEST_DEV / FRAMES).is_dir():
        for index, item in enumerate(_clips(root / TEST_DEV)):
            splits["train" if index % 2 == 0 else "val"].append(item)
        found = True
    if (root / TEST_CHALLENGE / FRAMES).is_dir():
        splits["test"] += _clips(root / TEST_CHALLENGE)
        found = True
    if not found:
        raise PrepError(
            f"{root}: no DAVIS folders found; expected {TRAINVAL}, {TEST_DEV} or "
            f"{TEST_CHALLENGE} holding {FRAMES}/<video>/00000.jpg, or {FRAMES} itself"
        )
    return {split: items for split, items in splits.items() if items}


def pack(item: Item, report: Report) -> list[Sample]:
    frames = [report.image(path, "frame") for path in item.files.values()]
    sizes = Counter(f.size for f in frames if f is not None)
    if not sizes:
        return []
    size = sizes.most_common(1)[0][0]
    runs: list[list[SourceImage]] = [[]]
    for frame in frames:
        if frame is not None and frame.size != size:
            report.add(frame.path, f"frame size {frame.width}x{frame.height} differs from the "
                                   f"clip's {size[1]}x{size[0]}")
            frame = None
        if frame is None:
            runs.append([])
        else:
            runs[-1].append(frame)
    runs = [run for run in runs if run]
    samples = []
    for part, run in enumerate(runs, start=1):
        suffix = f"_part{part}" if len(runs) > 1 else ""
        samples.append(Sample(
            key=sample_key(item.id + suffix),
            entries={f"{i:05d}.{f.suffix}": f.data for i, f in enumerate(run)},
            meta={**item.meta, "part": part if suffix else 0, "height": size[0],
                  "width": size[1], "frames": [f.path.name for f in run]},
        ))
    return samples
