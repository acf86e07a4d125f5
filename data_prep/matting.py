"""Matting triplets (Adobe Deep Matting / Real Matting style): one sample per fg + alpha + bg.

Layout: ``--root`` holds split folders (``train``/``Training_set`` -> train, ``val``/
``valid``/``Validation`` -> val, ``test``/``Test_set`` -> test), each with ``fg/``,
``alpha/`` (same file stem as its foreground) and ``bg/``; a root holding ``fg/``,
``alpha/`` and ``bg/`` itself is the single split ``--split``. Foreground ``i`` (in name
order) is composed with backgrounds ``i*n .. i*n+n-1`` (cyclically, ``n = --bg-per-fg``), as
the Adobe benchmark composes each foreground with several backgrounds. Entries are
``fg.<ext>``, ``alpha.<ext>``, ``bg.<ext>`` (a sample is self-contained, so a background
shared by several triplets is stored in each); the composite is made at load time. A missing or
undecodable alpha, or one whose size differs from its foreground, skips the triplet.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from data_prep.images import is_image
from data_prep.shards import Item, PrepError, Report, Sample, sample_key

NAME = "matting"
_SPLITS = {"train": "train", "training_set": "train", "val": "val", "valid": "val",
           "validation": "val", "test": "test", "test_set": "test"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", default="train",
                        help="split name when --root holds fg/ alpha/ bg/ directly")
    parser.add_argument("--bg-per-fg", type=int, default=1,
                        help="backgrounds composed with each foreground (default 1)")


def _triplets(folder: Path, bg_per_fg: int) -> list[Item]:
    def images(name: str) -> list[Path]:
        sub = folder / name
        return sorted(p for p in sub.iterdir() if is_image(p)) if sub.is_dir() else []

    foregrounds, backgrounds = images("fg"), images("bg")
    alphas = {p.stem: p for p in images("alpha")}
    if foregrounds and not backgrounds:
        raise PrepError(f"{folder}: foregrounds but no backgrounds in {folder / 'bg'}")
    items = []
    for i, fg in enumerate(foregrounds):
        for j in range(bg_per_fg):
            bg = backgrounds[(i * bg_per_fg + j) % len(backgrounds)]
            items.append(Item(
                id=f"{folder.name}/{fg.stem}/{bg.stem}",
                files={"fg": fg, "alpha": alphas.get(fg.stem), "bg": bg},
                meta={"fg": fg.name, "bg": bg.name,
                      "expected_alpha": str(folder / "alpha" / f"{fg.stem}.png")},
            ))
    return items


def plan(root: Path, options: argparse.Namespace) -> dict[str, list[Item]]:
    if options.bg_per_fg < 1:
        raise PrepError(f"--bg-per-fg must be at least 1, got {options.bg_per_fg}")
    if (root / "fg").is_dir():
        return {options.split: _triplets(root, options.bg_per_fg)}
    splits: dict[str, list[Item]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        split = _SPLITS.get(folder.name.lower())
        if split is not None and (folder / "fg").is_dir():
            splits.setdefault(split, []).extend(_triplets(folder, options.bg_per_fg))
    if not splits:
        raise PrepError(f"{root}: no matting data found; expected <split>/fg, <split>/alpha "
                        "and <split>/bg (split: train, val, test), or fg/ alpha/ bg/ directly")
    return splits


def pack(item: Item, report: Report) -> list[Sample]:
    if item.files["alpha"] is None:
        report.add(item.files["fg"], f"missing alpha matte {item.meta['expected_alpha']}; "
                                     "triplet skipped")
        return []
    fg = report.image(item.files["fg"], "foreground")
    alpha = report.image(item.files["alpha"], "alpha matte")
    bg = report.image(item.files["bg"], "background")
    if fg is None or alpha is None or bg is None:
        return []
    if alpha.size != fg.size:
        report.add(alpha.path, f"alpha {alpha.width}x{alpha.height} differs from its foreground "
                               f"{fg.width}x{fg.height}; triplet skipped")
        return []
    entries = {f"fg.{fg.suffix}": fg.data, f"alpha.{alpha.suffix}": alpha.data,
               f"bg.{bg.suffix}": bg.data}
    meta = {"fg": item.meta["fg"], "bg": item.meta["bg"], "height": fg.height,
            "width": fg.width}
    return [Sample(key=sample_key(item.id), entries=entries, meta=meta)]
