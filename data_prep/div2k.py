"""DIV2K: one sample per high-resolution image, with its bicubic low-resolution versions.

Layout: ``--root`` holds ``DIV2K_train_HR/NNNN.png`` (-> train) and ``DIV2K_valid_HR/``
(-> val), and when present ``DIV2K_{train,valid}_LR_bicubic/X{2,4,8}/NNNNx{s}.png``. A sample
is ``image.png`` (the HR image; single-image tasks read this entry from folder and DIV2K
shards alike) plus ``lr_x{s}.png`` for every scale found. Scales not present are generated
at load time by the task (bicubic), so shards keep only source files. A bad HR image skips
the sample; a bad LR image (no decode, or a size other than the HR size / s, rounded either
way) is reported and left out, and that scale is then generated at load time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from data_prep.shards import Item, PrepError, Report, Sample, sample_key

NAME = "div2k"
SCALES = (2, 4, 8)
_SPLITS = {"train": "train", "valid": "val"}


def plan(root: Path, options: argparse.Namespace) -> dict[str, list[Item]]:
    splits: dict[str, list[Item]] = {}
    for part, split in _SPLITS.items():
        hr_dir = root / f"DIV2K_{part}_HR"
        if not hr_dir.is_dir():
            continue
        items = []
        for hr in sorted(p for p in hr_dir.iterdir() if p.suffix.lower() == ".png"):
            files: dict[str, Path | None] = {"hr": hr}
            for scale in SCALES:
                lr = root / f"DIV2K_{part}_LR_bicubic" / f"X{scale}" / f"{hr.stem}x{scale}.png"
                if lr.is_file():
                    files[f"lr_x{scale}"] = lr
            items.append(Item(id=f"{hr_dir.name}/{hr.stem}", files=files, meta={"id": hr.stem}))
        splits[split] = items
    if not splits:
        raise PrepError(f"{root}: no DIV2K_train_HR/ or DIV2K_valid_HR/ folder found")
    return splits


def pack(item: Item, report: Report) -> list[Sample]:
    hr = report.image(item.files["hr"], "HR image")
    if hr is None:
        return []
    entries = {"image.png": hr.data}
    scales = []
    for scale in SCALES:
        lr = report.image(item.files.get(f"lr_x{scale}"), f"x{scale} LR image")
        if lr is None:
            continue
        if abs(lr.height - hr.height / scale) >= 1 or abs(lr.width - hr.width / scale) >= 1:
            report.add(lr.path, f"x{scale} LR size {lr.width}x{lr.height} does not match the HR "
                                f"size {hr.width}x{hr.height} / {scale}; generated instead")
            continue
        entries[f"lr_x{scale}.png"] = lr.data
        scales.append(scale)
    meta = {**item.meta, "height": hr.height, "width": hr.width, "lr_scales": scales}
    return [Sample(key=sample_key(item.id), entries=entries, meta=meta)]
