"""DAVIS-like clips from the large real photographs that Debian's wallpaper packages install.

``python -m data_prep photos --out DIR`` writes ``DIR/davis`` in the DAVIS 2017 layout (then
``python -m data_prep davis --root DIR/davis --out SHARDS`` packs it). Each clip is a camera
moving and zooming over one photograph with a soft-edged foreground cut from another moving
on its own path, at DAVIS-like speed: the motion model of :mod:`data_prep.samples`, here with
a view scale drawn per clip, so the clips show whole landscapes as well as close details.
The photograph is shrunk to the clip's scale first (Lanczos), so frames are free of
aliasing, as a camera's are.

The photographs (:data:`PHOTOS`: 36 of 1.4 to 23 megapixels, chosen by eye from the packages'
images as photographs, not drawn art) are not part of this repository: ``make photos`` (or
``apt-get install --no-install-recommends`` the packages in :data:`PACKAGES`) installs them,
each package's licence in ``/usr/share/doc/PACKAGE/copyright``. Whole photographs are held
out: the :data:`VAL` and :data:`TEST` ones appear (as background or foreground) only in the
val and test clips, so no held-out scene is ever seen in training.

Splits, through ``data_prep davis``'s rule (train = trainval + even test-dev, val = odd
test-dev, test = test-challenge): ``DAVIS-2017-trainval`` holds the training clips,
``DAVIS-2017-test-dev`` alternates one more training clip and one validation clip (so its
odd-indexed clips are exactly the validation ones), ``DAVIS-2017-test-challenge`` the test
clips.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from data_prep import samples
from data_prep.shards import PrepError

VERSION = "1"
"""Changes whenever the clips this builder makes change."""
ROOT = Path("/usr/share")
PACKAGES = ("lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04", "mate-backgrounds",
            "plasma-workspace-wallpapers")


@dataclass(frozen=True)
class Photo:
    name: str
    path: str
    """Under :data:`ROOT`."""
    package: str
    licence: str
    """As the package's copyright file gives it for this file."""


def _lomiri(file: str, licence: str, package: str = "lomiri-wallpapers-16.04") -> Photo:
    return Photo(file.split("_by_")[0].lower(), f"backgrounds/{file}", package, licence)


def _mate(file: str) -> Photo:
    return Photo(file.removesuffix(".jpg").lower(), f"backgrounds/mate/nature/{file}",
                 "mate-backgrounds", "GPL-2+")


def _plasma(scene: str, size: str) -> Photo:
    return Photo(scene.lower(), f"wallpapers/{scene}/contents/images/{size}.jpg",
                 "plasma-workspace-wallpapers", "GPL-2+")


PHOTOS: tuple[Photo, ...] = (
    _lomiri("aitzgorri_by_Aitzol_Berasategi.jpg", "CC-BY-4.0"),
    _lomiri("Bridge_by_Sander_Klootwijk.jpg", "CC-BY-SA-4.0"),
    _lomiri("Dragonfly_by_Bolly.jpg", "CC-BY-SA-4.0"),
    _lomiri("free_by_Peter_Nerlich.jpg", "CC-BY-SA-4.0"),
    _lomiri("friends_by_Aitzol_Berasategi.jpg", "CC-BY-4.0"),
    _lomiri("life_by_Aitzol_Berasategi.jpg", "CC-BY-4.0"),
    _lomiri("picosdeeuropa_by_Aitzol_Berasategi.jpg", "CC-BY-4.0"),
    _lomiri("sunset_by_Aitzol_Berasategi.jpg", "CC-BY-4.0"),
    _lomiri("Picture_0B_by_freespace.jpg", "CC-BY-SA-4.0"),
    _lomiri("Picture_1A_by_freespace.jpg", "CC-BY-SA-4.0"),
    _lomiri("Wine_by_Jakkub_Mede.jpg", "CC-BY-SA-4.0"),
    _lomiri("seeding_by_Clements_Engelhardt.jpg", "CC-BY-SA-4.0"),
    _lomiri("Kleiber_by_Lukas_Baubkus.jpg", "CC-BY-SA-4.0", "lomiri-wallpapers-20.04"),
    *(_mate(f) for f in ("Aqua.jpg", "Blinds.jpg", "Dune.jpg", "FreshFlower.jpg",
                         "Garden.jpg", "GreenMeadow.jpg", "LadyBird.jpg", "RainDrops.jpg",
                         "Storm.jpg", "TwoWings.jpg", "Wood.jpg", "YellowFlower.jpg")),
    *(_plasma(scene, "2560x1600") for scene in (
        "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow",
        "FallenLeaf", "Grey", "Kite", "OneStandsOut", "Path", "summer_1am")),
)
VAL = ("bridge", "storm", "eveningglow", "ladybird")
TEST = ("picosdeeuropa", "dune", "path", "kite")
"""Held-out photographs: a mix of landscapes, water, close-ups and texture in each."""
TRAIN_CLIPS_PER_PHOTO = 3
HELD_OUT_CLIPS_PER_PHOTO = 2
TRAIN_FRAMES = 25
"""Frames of a training clip: 15 windows of K=3 at step 5, 5 of K=5."""
HELD_OUT_FRAMES = 21
"""One K=5 window at step 5, as the sample clips."""
ZOOM_RANGE = (1.0, 4.0)
"""The view shows 1/(1.4 zoom) of the photograph's tighter side; drawn log-uniformly."""


def available(root: Path = ROOT) -> tuple[list[Photo], list[str]]:
    """The photographs installed under ``root``, and the paths of those missing."""
    found, missing = [], []
    for photo in PHOTOS:
        (found if (root / photo.path).is_file() else missing).append(photo)
    return found, [str(root / p.path) for p in missing]


def _load(photo: Photo, root: Path, factor_of) -> Image.Image:
    """The photograph as RGB, shrunk (Lanczos) by ``factor_of(width, height)`` when that is
    below 1."""
    path = root / photo.path
    try:
        with Image.open(path) as image:
            factor = min(1.0, factor_of(*image.size))
            size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
            image.draft("RGB", size)
            rgb = image.convert("RGB")
    except OSError as exc:
        raise PrepError(f"{path}: cannot read this photograph ({exc})") from None
    return rgb if rgb.size == size else rgb.resize(size, Image.Resampling.LANCZOS)


def _clip(bg_photo: Photo, fg_photo: Photo, root: Path, frames: int, seed: int):
    """A clip's frames: the sample clips' motion over ``bg_photo`` at a drawn scale."""
    zoom = math.exp(random.Random(seed).uniform(*map(math.log, ZOOM_RANGE)))
    w, h = samples.DAVIS_SIZE
    # The view maps the photo by max(w/pw, h/ph) * 1.4 * zoom (samples._view): shrunk by
    # that factor first, the photo is viewed at about 1:1.
    background = _load(bg_photo, root, lambda pw, ph: max(w / pw, h / ph) * 1.4 * zoom)
    foreground = _load(fg_photo, root, lambda pw, ph: 320 / min(pw, ph))
    yield from samples.clip_frames(background, foreground, frames, seed=seed, zoom=zoom)


def _save_clip(folder: Path, frames) -> None:
    for index, frame in enumerate(frames):
        samples.save(frame, folder / f"{index:05d}.jpg", quality=90)


def build(out: Path, root: Path = ROOT, progress=print) -> Path:
    """Write ``out/davis``; returns that folder. PrepError when photographs are missing."""
    found, missing = available(root)
    if missing:
        raise PrepError(
            f"{len(missing)} of {len(PHOTOS)} photographs are not installed (first: "
            f"{missing[0]}); install them with `make photos` (apt-get install "
            f"--no-install-recommends {' '.join(PACKAGES)})")
    by_name = {p.name: p for p in found}
    held = set(VAL) | set(TEST)
    train = [p for p in found if p.name not in held]
    davis = Path(out) / "davis"
    jobs: list[tuple[str, str, Photo, Photo, int]] = []
    for split, names, per_photo in (("val", VAL, HELD_OUT_CLIPS_PER_PHOTO),
                                    ("test", TEST, HELD_OUT_CLIPS_PER_PHOTO),
                                    ("train", [p.name for p in train], TRAIN_CLIPS_PER_PHOTO)):
        for i, name in enumerate(names):
            for c in range(per_photo):
                partner = names[(i + 1 + c) % len(names)]
                jobs.append((split, f"{name}-{c}", by_name[name], by_name[partner],
                             len(jobs)))
    trains = [j for j in jobs if j[0] == "train"]
    vals = [j for j in jobs if j[0] == "val"]
    # test-dev: train, val, train, val, ... by name order, so davis's odd indices are val.
    test_dev = [job for pair in zip(trains[:len(vals)], vals) for job in pair]
    placed = ([("DAVIS-2017-trainval", j, TRAIN_FRAMES) for j in trains[len(vals):]]
              + [("DAVIS-2017-test-dev", j, TRAIN_FRAMES if j[0] == "train" else HELD_OUT_FRAMES)
                 for j in test_dev]
              + [("DAVIS-2017-test-challenge", j, HELD_OUT_FRAMES)
                 for j in jobs if j[0] == "test"])
    for n, (subset, (split, clip, bg, fg, seed), frames) in enumerate(placed):
        prefix = f"{n:03d}-" if subset.endswith("test-dev") else ""
        folder = davis / subset / "JPEGImages" / "480p" / f"{prefix}{clip}"
        if folder.is_dir() and len(list(folder.glob("*.jpg"))) == frames:
            continue  # a rerun resumes
        _save_clip(folder, _clip(bg, fg, root, frames, seed))
        progress(f"[{n + 1}/{len(placed)}] {subset}/{folder.name} ({split}, {frames} frames)")
    (davis / "SOURCES.txt").write_text(sources_text(found))
    return davis


def sources_text(photos: list[Photo]) -> str:
    lines = [f"IICNet photo clips, version {VERSION}: built from these photographs "
             "(Debian packages; licences as in /usr/share/doc/PACKAGE/copyright)", ""]
    for p in photos:
        split = "val" if p.name in VAL else "test" if p.name in TEST else "train"
        lines.append(f"{split:5} {p.package:28} {p.licence:13} {ROOT / p.path}")
    return "\n".join(lines) + "\n"
