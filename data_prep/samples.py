"""Small sample datasets in the official layouts, made from real photographs.

``python -m data_prep samples --out DIR`` writes, from the colour photographs that ship with
scikit-image (astronaut, coffee, chelsea, rocket, hubble_deep_field, retina,
immunohistochemistry and the real stereo_motorcycle pair), offline, in about 5 s and 15 MB:

- ``DIR/davis``: ``DAVIS-2017-{trainval,test-dev,test-challenge}/JPEGImages/480p/<video>/
  NNNNN.jpg`` at DAVIS's 854x480. Each clip is a camera moving and zooming over one photo
  with a soft-edged foreground cut from another photo moving on its own path (parallax), at
  a speed per frame that does not depend on the clip's length (``PATH_FRAMES``).
  The trainval clips have 45 and 30 frames, so video windows up to K=9 at step 5 (41 frames)
  exist in train; the test-dev and test-challenge clips have 21 frames, one K=5 window at
  step 5 each (val and test): 201 JPEG frames (quality 80), about 9.5 MB.
- ``DIR/flickr1024``: ``Train/``, ``Validation/``, ``Test/`` with ``NNNN_L.png`` /
  ``NNNN_R.png``: the real motorcycle pair (halved) plus pairs of three layers shifted by
  depth-dependent disparities (2, 5 and 10 pixels).
- ``DIR/div2k``: ``DIV2K_{train,valid}_HR/NNNN.png`` (512x384) with bicubic
  ``DIV2K_*_LR_bicubic/X2`` and ``X4`` (X8 is absent on purpose: loading generates it).
- ``DIR/matting``: ``train/`` and ``test/`` with ``fg/``, ``alpha/`` (soft mattes) and ``bg/``.
- ``DIR/folder``: ``train/``, ``val/``, ``test/`` JPEG photographs and crops of them.

The counts below are what tests check the shards and loaders against.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from iicnet.storage.atomic import replacing

VERSION = "2"
"""Changes whenever the sample datasets change (2: DAVIS clips at PATH_FRAMES speed), so a
cache of an older build is rebuilt (:func:`ray_jobs.common.sample_shards`)."""
DAVIS_SIZE = (854, 480)
DAVIS_CLIPS: dict[str, dict[str, int]] = {
    "DAVIS-2017-trainval": {"astronaut-drift": 45, "rocket-zoom": 30},
    "DAVIS-2017-test-dev": {"coffee-pan": 21, "hubble-tilt": 21, "immuno-drift": 21,
                            "retina-zoom": 21},
    "DAVIS-2017-test-challenge": {"chelsea-pan": 21, "motorcycle-pan": 21},
}
"""Subset -> video -> frame count."""
FLICKR_PAIRS = {"Train": 4, "Validation": 2, "Test": 2}
STEREO_SIZE = (360, 240)
DIV2K_IMAGES = {"train": 3, "valid": 2}
DIV2K_SIZE = (512, 384)
DIV2K_LR_SCALES = (2, 4)
MATTING_TRIPLETS = {"train": 3, "test": 2}
FOLDER_IMAGES = {"train": 8, "val": 2, "test": 2}

_ORDER = ("hubble", "rocket", "astronaut", "coffee", "immuno", "retina", "chelsea",
          "motorcycle")


def photos() -> dict[str, Image.Image]:
    """The colour photographs of scikit-image that load offline, by short name."""
    from skimage import data

    left, _, _ = data.stereo_motorcycle()
    arrays = {
        "hubble": data.hubble_deep_field(), "rocket": data.rocket(),
        "astronaut": data.astronaut(), "coffee": data.coffee(),
        "immuno": data.immunohistochemistry(), "retina": data.retina(),
        "chelsea": data.chelsea(), "motorcycle": left,
    }
    return {name: Image.fromarray(np.ascontiguousarray(a)) for name, a in arrays.items()}


def save(image: Image.Image, path: Path, **options) -> None:
    with replacing(path) as tmp:
        image.save(tmp, format="JPEG" if path.suffix == ".jpg" else "PNG", **options)


def _view(photo: Image.Image, size: tuple[int, int], centre: tuple[float, float],
          zoom: float) -> Image.Image:
    """A ``size`` (w, h) window of ``photo`` around ``centre`` (fractions of the photo).

    ``zoom`` 1 shows 1/1.4 of the photo along its tighter side, leaving room to move; the
    window is clamped to stay inside the photo.
    """
    w, h = size
    pw, ph = photo.size
    scale = max(w / pw, h / ph) * 1.4 * zoom
    half_w, half_h = w / 2 / scale, h / 2 / scale
    cx = min(max(centre[0] * pw, half_w), pw - half_w)
    cy = min(max(centre[1] * ph, half_h), ph - half_h)
    return photo.transform(size, Image.Transform.AFFINE,
                           (1 / scale, 0, cx - half_w, 0, 1 / scale, cy - half_h),
                           resample=Image.Resampling.BILINEAR)


def _soft_mask(size: tuple[int, int], shape: int) -> Image.Image:
    """A feathered matte: an ellipse, a rounded box or three overlapping discs."""
    w, h = size
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    box = (w * 0.1, h * 0.1, w * 0.9, h * 0.9)
    if shape % 3 == 0:
        draw.ellipse(box, fill=255)
    elif shape % 3 == 1:
        draw.rounded_rectangle(box, radius=min(w, h) // 5, fill=255)
    else:
        for fx, fy in ((0.35, 0.4), (0.62, 0.38), (0.5, 0.65)):
            r = min(w, h) * 0.27
            draw.ellipse((w * fx - r, h * fy - r, w * fx + r, h * fy + r), fill=255)
    return mask.filter(ImageFilter.GaussianBlur(max(2, min(w, h) // 40)))


def _cutout(photo: Image.Image, side: int) -> Image.Image:
    """The central square of a photo, ``side`` pixels wide."""
    pw, ph = photo.size
    s = min(pw, ph)
    square = photo.crop(((pw - s) // 2, (ph - s) // 2, (pw + s) // 2, (ph + s) // 2))
    return square.resize((side, side), Image.Resampling.BILINEAR)


PATH_FRAMES = 125
"""Frames a clip takes to cover its whole path (``t`` from 0 to 1): motion per frame does not
depend on the clip's length. Between frames 5 apart (the video step) the foreground moves
about 20-30 pixels and the camera up to about 15, the order of real DAVIS 480p clips; the
longest clip (45 frames) covers the first 36% of the path."""


def clip_frames(bg: Image.Image, fg: Image.Image, frames: int, seed: int, zoom: float = 1.0):
    """Frames of a clip: the camera pans and zooms over ``bg`` (``zoom``: how close, see
    :func:`_view`); ``fg`` moves on its own."""
    w, h = DAVIS_SIZE
    phase = seed * 0.9
    sprite = _cutout(fg, 220)
    matte = _soft_mask(sprite.size, seed)
    for f in range(frames):
        t = f / PATH_FRAMES
        centre = (0.5 + 0.12 * math.cos(phase + 2.2 * t), 0.5 + 0.1 * math.sin(phase + 1.7 * t))
        frame = _view(bg, DAVIS_SIZE, centre, zoom * (1.0 + 0.15 * t))
        side = int(180 + 50 * t)
        x = int(w * (0.15 + 0.55 * t) + 40 * math.sin(phase + 4 * t))
        y = int(h * 0.25 + 60 * math.cos(phase + 3 * t))
        frame.paste(sprite.resize((side, side)), (x, y), matte.resize((side, side)))
        yield frame


def build_davis(out: Path, images: dict[str, Image.Image]) -> Path:
    for subset, clips in DAVIS_CLIPS.items():
        for n, (video, frames) in enumerate(clips.items()):
            bg = images[video.split("-")[0]]
            fg = images[_ORDER[(_ORDER.index(video.split("-")[0]) + 3) % len(_ORDER)]]
            folder = out / subset / "JPEGImages" / "480p" / video
            for f, frame in enumerate(clip_frames(bg, fg, frames, seed=n + len(subset))):
                save(frame, folder / f"{f:05d}.jpg", quality=80)
    return out


def _stereo_pair(images: dict[str, Image.Image], index: int) -> tuple[Image.Image, Image.Image]:
    """Three layers (far, middle, near) shifted by 2, 5 and 10 pixels between the views."""
    w, h = STEREO_SIZE
    margin = 16
    names = [_ORDER[(index + k) % len(_ORDER)] for k in range(3)]
    strip = _view(images[names[0]], (w + 2 * margin, h), (0.3 + 0.1 * index, 0.5), 1.1)
    left = strip.crop((margin, 0, margin + w, h))
    right = strip.crop((margin + 2, 0, margin + 2 + w, h))
    for layer, (name, disparity, side) in enumerate(((names[1], 5, 120), (names[2], 10, 90))):
        sprite = _cutout(images[name], side)
        matte = _soft_mask(sprite.size, index + layer)
        x, y = 40 + 150 * layer + 7 * index, 30 + 60 * layer
        left.paste(sprite, (x, y), matte)
        right.paste(sprite, (x - disparity, y), matte)
    return left, right


def build_flickr1024(out: Path, images: dict[str, Image.Image]) -> Path:
    index = 0
    for folder, count in FLICKR_PAIRS.items():
        for n in range(1, count + 1):
            if folder == "Train" and n == 1:
                from skimage import data

                left, right, _ = data.stereo_motorcycle()
                half = (left.shape[1] // 2, left.shape[0] // 2)
                pair = tuple(Image.fromarray(v).resize(half, Image.Resampling.LANCZOS)
                             for v in (left, right))
            else:
                pair = _stereo_pair(images, index)
                index += 1
            for view, image in zip("LR", pair, strict=True):
                save(image, out / folder / f"{n:04d}_{view}.png")
    return out


def build_div2k(out: Path, images: dict[str, Image.Image]) -> Path:
    number = {"train": 1, "valid": 801}
    k = 0
    for part, count in DIV2K_IMAGES.items():
        for n in range(count):
            name = f"{number[part] + n:04d}"
            hr = _view(images[_ORDER[k % len(_ORDER)]], DIV2K_SIZE, (0.5, 0.45), 1.0)
            k += 1
            save(hr, out / f"DIV2K_{part}_HR" / f"{name}.png")
            for s in DIV2K_LR_SCALES:
                lr = hr.resize((hr.width // s, hr.height // s), Image.Resampling.BICUBIC)
                save(lr, out / f"DIV2K_{part}_LR_bicubic" / f"X{s}" / f"{name}x{s}.png")
    return out


def build_matting(out: Path, images: dict[str, Image.Image]) -> Path:
    k = 0
    for split, count in MATTING_TRIPLETS.items():
        for n in range(count):
            fg_name = _ORDER[(k + 6) % len(_ORDER)]
            bg_name = _ORDER[(k + 1) % len(_ORDER)]
            fg = _cutout(images[fg_name], 256)
            save(fg, out / split / "fg" / f"{fg_name}.png")
            save(_soft_mask(fg.size, k), out / split / "alpha" / f"{fg_name}.png")
            bg = _view(images[bg_name], (320, 320), (0.5, 0.5), 1.0)
            save(bg, out / split / "bg" / f"{n:03d}_{bg_name}.jpg", quality=90)
            k += 1
    return out


def build_folder(out: Path, images: dict[str, Image.Image]) -> Path:
    k = 0
    for split, count in FOLDER_IMAGES.items():
        for n in range(count):
            name = _ORDER[k % len(_ORDER)]
            photo = images[name]
            if split == "train":
                image = photo.copy()
                image.thumbnail((384, 384), Image.Resampling.LANCZOS)
            else:
                image = _view(photo, (288, 224), (0.3 + 0.4 * n, 0.4), 1.3)
            save(image, out / split / f"{n:02d}_{name}.jpg", quality=90)
            k += 1
    return out


def build(out: Path) -> dict[str, Path]:
    """Build every sample dataset under ``out``; returns layout name -> its root."""
    images = photos()
    builders = {"davis": build_davis, "flickr1024": build_flickr1024, "div2k": build_div2k,
                "matting": build_matting, "folder": build_folder}
    return {name: builder(Path(out) / name, images) for name, builder in builders.items()}
