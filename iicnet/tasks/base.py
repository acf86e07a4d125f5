"""The task contract, the registry, and what every task shares (decoding, crops, reference).

A *sample* is one decoded shard record (see :mod:`data_prep`): a dict with ``__key__``,
``meta`` (the parsed ``meta.json``) and one ``<entry>.<ext>`` -> bytes item per source image.
A task cuts ``windows(sample)`` training items out of it; ``make`` turns one into::

    images    uint8   (K, C, H, W)       reference image first
    reference float32 (C_e, H/f, W/f)    in [0, 1]; f = 2 with invertible downscaling

The reference is the first image, bilinear-downsampled by 2 when ``model.downscale`` is not
``none`` and turned into BT.601 luma when ``model.embed_channels`` is 1.

Crops: training takes a random ``data.crop`` square at the same place in all K images;
evaluation takes the centre one. A side shorter than the crop is kept whole, cut down to a
multiple of the downscaling factor (so evaluation with a crop larger than the frames gives
full frames, as the tables were measured).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from iicnet.formats.imagefiles import UndecodableImage, open_image
from iicnet.model.config import Config, ConfigError, shapes

Sample = dict[str, Any]
log = logging.getLogger("iicnet.data")
LUMA = torch.tensor([0.299, 0.587, 0.114])
_DECODED = "__decoded__"

_REGISTRY: dict[str, type[Task]] = {}


class SampleError(Exception):
    """A sample cannot be turned into a training item (a missing or undecodable entry)."""


def register(name: str):
    """Class decorator: make a task available to configs as ``data.task: <name>``."""

    def decorate(cls: type[Task]) -> type[Task]:
        if name in _REGISTRY:
            raise ValueError(f"task {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def registered() -> dict[str, type[Task]]:
    return dict(_REGISTRY)


def entry_name(sample: Sample, stem: str) -> str:
    """The key of ``<stem>.<ext>`` in a sample (``left`` -> ``left.png``)."""
    for key in sample:
        if key.partition(".")[0] == stem and not key.startswith("__"):
            return key
    raise SampleError(f"sample {sample.get('__key__')!r} has no {stem!r} entry "
                      f"(entries: {', '.join(k for k in sample if not k.startswith('__'))})")


def decode(sample: Sample, name: str, mode: str = "RGB") -> np.ndarray:
    """Decode an entry (``00003.jpg``, or a stem: ``left``) to an (H, W, 3) or (H, W) uint8
    array, once per sample."""
    entry = name if name in sample else entry_name(sample, name)
    cache = sample.setdefault(_DECODED, {})
    if (entry, mode) not in cache:
        try:
            with open_image(sample[entry]) as image:
                cache[(entry, mode)] = np.asarray(image.convert(mode))
        except UndecodableImage as exc:
            raise SampleError(f"sample {sample.get('__key__')!r}: {entry} does not decode "
                              f"({exc})") from exc
    return cache[(entry, mode)]


def forget(sample: Sample, entries: list[str]) -> None:
    """Drop decoded entries that later windows of this sample no longer need."""
    cache = sample.get(_DECODED, {})
    for entry in entries:
        cache.pop((entry, "RGB"), None)


def crop_size(height: int, width: int, crop: int, factor: int) -> tuple[int, int]:
    """``crop`` on each side, or the whole side when shorter, as a multiple of ``factor``."""
    return min(crop, height - height % factor), min(crop, width - width % factor)


def crop_offset(length: int, size: int, rng: np.random.Generator | None) -> int:
    """Random offset with ``rng`` (training), else the centred one."""
    if rng is None:
        return (length - size) // 2
    return int(rng.integers(0, length - size + 1))


class Task:
    """One published experiment: turns samples of one data layout into (images, reference)."""

    name: ClassVar[str]
    sources: ClassVar[tuple[str, ...]]
    """data_prep layouts this task reads; the first is the one it was published with."""
    group: ClassVar[int] = 1
    """Consecutive shard samples that make one item (hiding: K); the loader merges them into
    ``{"__key__": "a+b+...", "parts": [sample, ...]}``."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.num_images = cfg.model.num_images
        self.factor = shapes(cfg.model).scale
        if cfg.model.image_channels != 3:
            raise ConfigError(f"model.image_channels: the {self.name} task reads RGB images; "
                              f"set 3, got {cfg.model.image_channels}")
        self.check()

    @property
    def source(self) -> str:
        return self.sources[0]

    @property
    def output_names(self) -> list[str]:
        """Names of the K images, in stack order (reference first)."""
        raise NotImplementedError

    def check(self) -> None:
        """Raise ConfigError naming the field when the config does not fit this task."""

    def need_images(self, count: int, why: str) -> None:
        if self.num_images != count:
            raise ConfigError(f"model.num_images: the {self.name} task needs {count} images "
                              f"({why}), got {self.num_images}")

    def windows(self, sample: Sample) -> int:
        """How many items ``make`` can cut from this sample."""
        return 1

    def load(self, sample: Sample, index: int) -> list[np.ndarray]:
        """The K full (H, W, 3) uint8 images of item ``index``, reference first."""
        raise NotImplementedError

    def crop(self, arrays: list[np.ndarray], rng: np.random.Generator | None) -> list[np.ndarray]:
        """The same window of every image (``rng`` None: the centre window)."""
        height, width = arrays[0].shape[:2]
        for array in arrays[1:]:
            if array.shape[:2] != (height, width):
                raise SampleError(f"images of one item differ in size: {array.shape[:2]} vs "
                                  f"{(height, width)}")
        ch, cw = crop_size(height, width, self.cfg.data.crop, self.factor)
        top, left = crop_offset(height, ch, rng), crop_offset(width, cw, rng)
        return [a[top:top + ch, left:left + cw] for a in arrays]

    def make(self, sample: Sample, window_index: int, rng: np.random.Generator | None,
             train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Item ``window_index`` of ``sample``: images (K, C, H, W) uint8, reference float.

        ``train``: a random aligned crop drawn from ``rng`` (a fresh generator when None);
        otherwise the centre crop, and ``rng`` is not used.
        """
        if train and rng is None:
            rng = np.random.default_rng()
        arrays = self.crop(self.load(sample, window_index), rng if train else None)
        images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        return images, self.reference(images[0])

    def check_source(self, source: str, where: str) -> None:
        """Raise ConfigError unless this task reads shards of the ``source`` layout."""
        if source not in self.sources:
            raise ConfigError(f"data.task: the {self.name} task reads "
                              f"{' or '.join(self.sources)} shards, but {where} holds {source} "
                              "shards")

    def grouped(self, samples: Iterator[Sample]) -> Iterator[Sample]:
        """Merge every ``group`` consecutive samples into one (a short tail is dropped)."""
        if self.group == 1:
            yield from samples
            return
        while group := list(itertools.islice(samples, self.group)):
            if len(group) < self.group:
                return
            yield {"__key__": "+".join(s["__key__"] for s in group),
                   "__url__": group[0]["__url__"], "parts": group}

    def items(self, samples: Iterable[Sample], rng: np.random.Generator | None, train: bool,
              with_keys: bool = False) -> Iterator[Any]:
        """Every window of every (grouped) sample through :meth:`make`, as ``(images,
        reference)`` or, ``with_keys``, ``(images, reference, "key#window")``. A sample that
        fails is reported (a warning naming it and its shard) and the rest of it skipped."""
        for sample in self.grouped(iter(samples)):
            try:
                for window in range(self.windows(sample)):
                    images, reference = self.make(sample, window, rng, train)
                    if with_keys:
                        yield images, reference, f"{sample['__key__']}#{window}"
                    else:
                        yield images, reference
            except SampleError as exc:
                log.warning("skipping the rest of sample %s from %s: %s",
                            sample["__key__"], sample["__url__"], exc)

    def reference(self, image: torch.Tensor) -> torch.Tensor:
        """(C, H, W) uint8 -> (C_e, H/f, W/f) float32 in [0, 1]."""
        ref = image.float().div(255.0).unsqueeze(0)
        if self.factor == 2:
            ref = F.interpolate(ref, scale_factor=0.5, mode="bilinear", align_corners=False)
        if self.cfg.model.embed_channels == 1:
            ref = (ref * LUMA.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
        return ref[0]
