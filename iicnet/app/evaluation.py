"""The paper's metrics for a model on a shard set, per image, laid out like its tables.

Each item (the task's evaluation items, ``train=False``: centre crops, or full frames cut to the
model's multiple when the crop is larger than the frames, as the tables were measured) is
encoded to a uint8 embedding and restored from it, batch 1. Scores are per image, RGB (all
three channels, no border crop; :func:`iicnet.model.metrics.score`, the function training
validation uses too), averaged over all items:

- ``embedding``: the embedding against the task's reference (rounded to uint8);
- ``restored``: every restored image against its original, the reference included;
- ``images``: the same per output (``frame_0``, ``left``, ``right``, ...), in the order a
  person gives them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from iicnet.convert import Converter, tile_bounds
from iicnet.model import to_uint8
from iicnet.model.metrics import score


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
class Evaluation:
    task: str
    names: list[str]
    embedding: Score = field(default_factory=Score)
    restored: Score = field(default_factory=Score)
    images: dict[str, Score] = field(default_factory=dict)
    items: int = 0
    setup: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "task": self.task, "items": self.items, "metric": "PSNR (dB) / SSIM, RGB",
            **self.setup,
            "embedding": self.embedding.mean(), "restored": self.restored.mean(),
            "images": {name: self.images[name].mean() for name in self.names},
        }

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
        row = [label, cell(self.embedding), cell(self.restored),
               *(cell(self.images[n]) for n in self.names)]
        return "\n".join([
            "| " + " | ".join(head) + " |",
            "|" + "|".join("---" for _ in head) + "|",
            "| " + " | ".join(row) + " |",
            f"PSNR (dB) / SSIM on RGB, mean over {self.items} items "
            f"({self.restored.count} restored images)",
        ])


def evaluate(converter: Converter, items: Iterable[tuple[torch.Tensor, torch.Tensor]],
             tile: int = 0) -> Evaluation:
    """Score ``converter``'s model on ``(images (K, C, H, W) uint8, reference float)`` items
    (stack order, reference first). ``tile`` > 0 scores the tiled path instead of full
    frames."""
    result = Evaluation(converter.task, converter.names,
                        images={name: Score() for name in converter.names})
    stack_names = [converter.names[position] for position in converter.order]
    m = converter.multiple
    for images, reference in items:
        height, width = images.shape[-2:]
        rows, cols = tile_bounds(height, tile, m), tile_bounds(width, tile, m)
        embedding = converter.encode_stack(images, rows, cols)
        restored = converter.decode_stack(embedding, rows, cols)
        scores = score(images, to_uint8(reference), embedding, restored)
        result.embedding.add(scores.embedding_psnr, scores.embedding_ssim)
        result.restored.add(scores.restored_psnr, scores.restored_ssim)
        for i, name in enumerate(stack_names):
            result.images[name].add(scores.restored_psnr[i], scores.restored_ssim[i])
        result.items += 1
    return result
