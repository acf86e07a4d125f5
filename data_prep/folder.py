"""Any folder of images (for hiding, grayscale and rescaling): one sample per image.

Layout: ``--root`` holding ``train/``, ``val/`` (or ``valid``/``validation``) and ``test/``
sub-folders gives those splits; any other root is the single split ``--split``. Images are
found recursively (jpg, png, bmp, webp, tif) and sorted by relative path. A sample is
``image.<ext>`` with ``meta.json`` naming the source path; undecodable images are skipped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from data_prep.images import is_image
from data_prep.shards import Item, PrepError, Report, Sample, sample_key

NAME = "folder"
_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", default="train",
                        help="split name when --root has no train/ val/ test/ folders")


def _images(folder: Path, root: Path) -> list[Item]:
    paths = sorted(p for p in folder.rglob("*") if is_image(p))
    return [Item(id=p.relative_to(root).as_posix(), files={"image": p},
                 meta={"path": p.relative_to(root).as_posix()}) for p in paths]


def plan(root: Path, options: argparse.Namespace) -> dict[str, list[Item]]:
    split_dirs = {p: _SPLITS[p.name.lower()] for p in sorted(root.iterdir())
                  if p.is_dir() and p.name.lower() in _SPLITS}
    splits: dict[str, list[Item]] = {}
    if split_dirs:
        for folder, split in split_dirs.items():
            splits.setdefault(split, []).extend(_images(folder, root))
    else:
        splits[options.split] = _images(root, root)
    if not any(splits.values()):
        raise PrepError(f"{root}: no images found (jpg, png, bmp, webp or tif)")
    return splits


def pack(item: Item, report: Report) -> list[Sample]:
    image = report.image(item.files["image"], "image")
    if image is None:
        return []
    meta = {**item.meta, "height": image.height, "width": image.width}
    return [Sample(key=sample_key(item.id), entries={f"image.{image.suffix}": image.data},
                   meta=meta)]
