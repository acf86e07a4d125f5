"""The paper's metrics for a model on a shard set, per image, laid out like its tables.

Each item (the task's evaluation items, ``train=False``: centre crops, or full frames cut to the
model's multiple when the crop is larger than the frames, as the tables were measured) is
encoded to a uint8 embedding and restored from it, batch 1. Scores are per image, RGB (all
three channels, no border crop; :func:`iicnet.model.metrics.score`, the function training
validation uses too), averaged over all items:

- ``embedding``: the embedding against the task's reference (rounded to uint8);
- ``restored``: every restored image against its original, the reference included;
- ``images``: the same per output (``frame_0``, ``left``, ``right``, ...), in the order a
  person gives them;
- ``copy``: per output, the copy baseline: the PSNR of the embedding itself taken as that
  image (:func:`as_image`; an identical pair's infinite PSNR is left out of the mean), the
  restored image's margin over it (``margin_db``, mean restored minus mean copy) and the
  number of items where the restored image scores below its copy (``items_below``). A model
  that restores an image little better than its copy has not hidden it, whatever its mean.
  ``items_with_a_side_image_below_copy`` counts the items where any image other than the
  reference did.

With JPEG qualities (``iicnet eval --jpeg Q``), each embedding is also re-encoded as a real
JPEG by Pillow at each quality (:func:`iicnet.formats.embedding_png.reencode_jpeg`, what a
chat app or website does to a shared PNG) and the images are restored from that; ``jpeg``
holds, per quality, the same three scores, ``embedding`` then being the JPEG against the
reference.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from iicnet.convert import Converter, tile_bounds
from iicnet.formats.embedding_png import reencode_jpeg
from iicnet.model import to_uint8
from iicnet.model.metrics import psnr, score


def as_image(embedding: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The embedding ``(C_e, h, w)`` uint8 taken as an image of ``shape`` ``(C, H, W)``: grey
    for a one-channel embedding, enlarged bilinearly where the embedding is smaller."""
    e = embedding.expand(shape[0], -1, -1) if embedding.shape[0] == 1 else embedding
    if e.shape[-2:] != shape[-2:]:
        e = torch.nn.functional.interpolate(e[None].float(), size=tuple(shape[-2:]),
                                            mode="bilinear", align_corners=False)[0]
        e = e.round().clamp(0, 255)
    return e.to(torch.uint8)


@dataclass
class Score:
    psnr: float = 0.0
    ssim: float = 0.0
    count: int = 0

    def add(self, p: torch.Tensor, s: torch.Tensor) -> None:
        self.psnr += float(p.sum())
        self.ssim += float(s.sum())
        self.count += p.numel()

    def mean(self) -> dict[str, float]:
        n = max(self.count, 1)
        return {"psnr": self.psnr / n, "ssim": self.ssim / n}


@dataclass
class RoundTrip:
    """The scores of restoring from one kind of embedding file (the PNG, or a JPEG of it)."""

    names: list[str]
    embedding: Score = field(default_factory=Score)
    restored: Score = field(default_factory=Score)
    images: dict[str, Score] = field(default_factory=dict)
    copies: dict[str, Score] = field(default_factory=dict)
    """Per image, the copy baseline's PSNR (finite values only; SSIM not kept)."""
    below: dict[str, int] = field(default_factory=dict)
    side_below: int = 0

    def __post_init__(self) -> None:
        self.images = self.images or {name: Score() for name in self.names}
        self.copies = self.copies or {name: Score() for name in self.names}
        self.below = self.below or dict.fromkeys(self.names, 0)

    def add(self, images: torch.Tensor, reference: torch.Tensor, embedding: torch.Tensor,
            restored: torch.Tensor, stack_names: list[str]) -> None:
        scores = score(images, reference, embedding, restored)
        self.embedding.add(scores.embedding_psnr, scores.embedding_ssim)
        self.restored.add(scores.restored_psnr, scores.restored_ssim)
        copy = psnr(as_image(embedding, images.shape[-3:])[None].expand_as(images), images)
        side_below = False
        for i, name in enumerate(stack_names):
            self.images[name].add(scores.restored_psnr[i], scores.restored_ssim[i])
            if torch.isfinite(copy[i]):
                self.copies[name].add(copy[i], torch.zeros(()))
                below = bool(scores.restored_psnr[i] < copy[i])
                self.below[name] += below
                side_below |= below and i > 0
        self.side_below += side_below

    def _scores(self) -> list[Score]:
        return [self.embedding, self.restored, *(self.images[n] for n in self.names),
                *(self.copies[n] for n in self.names)]

    def totals(self) -> list[float]:
        """Every sum and count in a fixed order: what processes that scored parts of one
        split add together, element by element, before :meth:`from_totals`."""
        return [v for s in self._scores() for v in (s.psnr, s.ssim, s.count)] + \
            [self.below[n] for n in self.names] + [self.side_below]

    @classmethod
    def from_totals(cls, names: list[str], totals: list[float]) -> RoundTrip:
        """The round trip whose :meth:`totals` are ``totals`` (summed over processes)."""
        trip = cls(list(names))
        values = iter(totals)
        for s in trip._scores():
            s.psnr, s.ssim, s.count = next(values), next(values), round(next(values))
        for name in trip.names:
            trip.below[name] = round(next(values))
        trip.side_below = round(next(values))
        return trip

    def to_dict(self) -> dict:
        return {"embedding": self.embedding.mean(), "restored": self.restored.mean(),
                "images": {name: self.images[name].mean() for name in self.names},
                "copy": {name: self._copy(name) for name in self.names},
                "items_with_a_side_image_below_copy": self.side_below}

    def worst_side_margin(self, side: list[str]) -> float | None:
        """The smallest margin over its copy baseline among the images ``side`` (those other
        than the reference: ``Converter.stack_names[1:]``); None when none has a baseline.
        Below 0, an image is not hidden: taking the embedding as it would do better."""
        margins = [self._copy(name)["margin_db"] for name in side]
        margins = [m for m in margins if m is not None]
        return min(margins) if margins else None

    def _copy(self, name: str) -> dict:
        baseline = self.copies[name]
        if not baseline.count:
            return {"psnr": None, "margin_db": None, "items_below": 0}
        copy = baseline.mean()["psnr"]
        return {"psnr": copy, "margin_db": self.images[name].mean()["psnr"] - copy,
                "items_below": self.below[name]}


@dataclass
class Evaluation:
    task: str
    names: list[str]
    lossless: RoundTrip
    """The scores from the PNG."""
    items: int = 0
    setup: dict = field(default_factory=dict)
    jpeg: dict[int, RoundTrip] = field(default_factory=dict)
    """Per JPEG quality, restoring from a Pillow JPEG of the embedding."""

    @property
    def restored(self) -> Score:
        return self.lossless.restored

    def to_dict(self) -> dict:
        out = {"task": self.task, "items": self.items, "metric": "PSNR (dB) / SSIM, RGB",
               **self.setup, **self.lossless.to_dict()}
        if self.jpeg:
            out["jpeg"] = {str(q): trip.to_dict() for q, trip in sorted(self.jpeg.items(),
                                                                          reverse=True)}
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """A Markdown table in the paper's layout: embedding, restored (all images), then
        each image."""
        def cell(score: Score) -> str:
            m = score.mean()
            return f"{m['psnr']:.3f} / {m['ssim']:.4f}"

        label = self.setup.get("label", self.task)
        head = ["task", "embedding", "restored (all)", *self.names]
        trips = [(label, self.lossless), *((f"{label}, from JPEG Q{quality}", trip) for
                                          quality, trip in sorted(self.jpeg.items(),
                                                                  reverse=True))]
        rows = [[name, cell(trip.embedding), cell(trip.restored),
                 *(cell(trip.images[n]) for n in self.names)] for name, trip in trips]
        note = (" Rows from JPEG: restored from a Pillow JPEG of the embedding at that "
                "quality; their embedding column scores the JPEG." if self.jpeg else "")
        return "\n".join([
            "| " + " | ".join(head) + " |",
            "|" + "|".join("---" for _ in head) + "|",
            *("| " + " | ".join(row) + " |" for row in rows),
            f"PSNR (dB) / SSIM on RGB, mean over {self.items} items "
            f"({self.restored.count} restored images).{note}",
        ])


def evaluate(converter: Converter, items: Iterable[tuple[torch.Tensor, torch.Tensor]],
             tile: int = 0, jpeg: Iterable[int] = ()) -> Evaluation:
    """Score ``converter``'s model on ``(images (K, C, H, W) uint8, reference float)`` items
    (stack order, reference first). ``tile`` > 0 scores the tiled path instead of full
    frames. ``jpeg``: qualities (1..100) at which restoring from a real JPEG of each
    embedding is scored too."""
    qualities = sorted(set(jpeg), reverse=True)
    bad = [q for q in qualities if not 1 <= q <= 100]
    if bad:
        raise ValueError(f"JPEG quality must be in 1..100, got {bad[0]}")
    result = Evaluation(converter.task, converter.names, RoundTrip(converter.names),
                        jpeg={q: RoundTrip(converter.names) for q in qualities})
    lossless = result.lossless
    stack_names = converter.stack_names
    m = converter.multiple
    for images, reference in items:
        height, width = images.shape[-2:]
        rows, cols = tile_bounds(height, tile, m), tile_bounds(width, tile, m)
        embedding = converter.encode_stack(images, rows, cols)
        restored = converter.decode_stack(embedding, rows, cols)
        target = to_uint8(reference)
        lossless.add(images, target, embedding, restored, stack_names)
        for quality, trip in result.jpeg.items():
            pixels = reencode_jpeg(embedding.permute(1, 2, 0).numpy(), quality)
            received = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
            trip.add(images, target, received, converter.decode_stack(received, rows, cols),
                     stack_names)
        result.items += 1
    return result
