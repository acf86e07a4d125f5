"""Flickr1024 stereo pairs: one sample per pair (``left.<ext>``, ``right.<ext>``).

Layout: ``--root`` holds the official split folders, ``Train*`` (``Train`` or the
``Train_1``, ``Train_2``, ... of some mirrors) -> train, ``Validation`` -> val, ``Test`` ->
test, each with ``NNNN_L.png`` / ``NNNN_R.png``. A root holding the pairs directly is the
single split ``--split``. A view whose partner is missing, that does not decode, or whose
size differs from its partner's is reported and the pair skipped.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from data_prep.images import IMAGE_SUFFIXES
from data_prep.shards import Item, PrepError, Report, Sample, sample_key

NAME = "flickr1024"
_VIEW = re.compile(r"^(?P<pair>.+)_(?P<view>[LR])$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", default="train",
                        help="split name when --root holds the pairs directly (default train)")


def _pairs(folder: Path) -> list[Item]:
    views: dict[str, dict[str, Path]] = {}
    for path in sorted(folder.iterdir()):
        match = _VIEW.match(path.stem)
        if match and path.suffix.lower() in IMAGE_SUFFIXES:
            views.setdefault(match["pair"], {})[match["view"]] = path
    items = []
    for pair, found in sorted(views.items()):
        expected = {v: folder / f"{pair}_{v}{next(iter(found.values())).suffix}" for v in "LR"}
        items.append(Item(
            id=f"{folder.name}/{pair}",
            files={"left": found.get("L"), "right": found.get("R")},
            meta={"folder": folder.name, "pair": pair,
                  "expected": {v: str(p) for v, p in expected.items()}},
        ))
    return items


def _split_of(name: str) -> str | None:
    lowered = name.lower()
    if lowered.startswith("train"):
        return "train"
    return {"validation": "val", "test": "test"}.get(lowered)


def plan(root: Path, options: argparse.Namespace) -> dict[str, list[Item]]:
    splits: dict[str, list[Item]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        split = _split_of(folder.name)
        if split is not None:
            splits.setdefault(split, []).extend(_pairs(folder))
    if not splits:
        direct = _pairs(root)
        if not direct:
            raise PrepError(f"{root}: no Flickr1024 pairs found; expected Train*/, Validation/ "
                            "and Test/ holding NNNN_L.png / NNNN_R.png, or the pairs themselves")
        splits[options.split] = direct
    return splits


def pack(item: Item, report: Report) -> list[Sample]:
    expected = item.meta["expected"]
    for role, view in (("left", "L"), ("right", "R")):
        if item.files[role] is None:
            partner = item.files["right" if role == "left" else "left"]
            report.add(partner, f"missing {role} view {expected[view]}; pair skipped")
            return []
    left = report.image(item.files["left"], "left view")
    right = report.image(item.files["right"], "right view")
    if left is None or right is None:
        return []
    if left.size != right.size:
        report.add(right.path, f"right view {right.width}x{right.height} differs from the left "
                               f"view {left.width}x{left.height}; pair skipped")
        return []
    meta = {"folder": item.meta["folder"], "pair": item.meta["pair"],
            "height": left.height, "width": left.width}
    return [Sample(
        key=sample_key(item.id),
        entries={f"left.{left.suffix}": left.data, f"right.{right.suffix}": right.data},
        meta=meta,
    )]
