"""Training validation: the held-out split scored by the code of ``iicnet eval``.

Every ``train.val_every`` steps each rank scores its share of the validation split (its
first ``train.val_items`` items, or all; every ``world``-th item from its ``rank``-th) with
:func:`iicnet.app.evaluation.evaluate`, the function ``iicnet eval`` and ``bench/zoo.py``
score with, on a :class:`iicnet.convert.Converter` of the model being trained:
``train.val_crop`` 0 (the default) scores full frames, embedded and restored tile by tile as
``iicnet embed`` / ``iicnet restore`` do, N centre crops of N. The ranks add their sums
together (:meth:`RoundTrip.totals`), so every rank holds the scores of the whole split. So
the number that moves ``@candidate`` is the number ``iicnet eval --split val`` gives.

The metrics (``val/...``): ``embedding_psnr`` / ``_ssim`` (the uint8 embedding against the
reference), ``restored_psnr`` / ``_ssim`` (every restored image, the reference included),
``worst_side_margin_db`` (the smallest margin of an image other than the reference over its
copy baseline, the embedding taken as that image: below 0, an image is not hidden),
``side_items_below_copy`` and ``items``. :func:`validate` also returns the whole
evaluation (per image and its copy baseline) for rank 0 to keep as JSON.
"""

from __future__ import annotations

import itertools
from typing import Any


def validate(trainer, source: str, cfg, rank: int, world: int
             ) -> tuple[dict[str, float], dict[str, Any]]:
    """``(metrics, evaluation)`` of ``trainer``'s model on the ``val`` split of ``source``,
    over all ranks (every rank must call it). Raises ``ValueError`` when the split has no
    item."""
    import torch

    from iicnet.app.evaluation import RoundTrip, evaluate
    from iicnet.convert import DEFAULT_TILE, Converter, ModelSource
    from iicnet.model.config import MAX_CROP
    from iicnet.tasks import evaluation_items
    from iicnet.training import all_reduce_sum

    crop = cfg.train.val_crop
    items_cfg = cfg.override([f"data.crop={crop or MAX_CROP}", "data.loader_workers=0"])
    model = trainer.model
    was_training = model.training
    try:
        converter = Converter(model, cfg, ModelSource("training", "training"),
                              device=trainer.device, tile=0 if crop else DEFAULT_TILE,
                              engine="torch")
        limit = cfg.train.val_items or None
        mine = itertools.islice(evaluation_items(source, items_cfg, "val"), rank, limit, world)
        result = evaluate(converter, mine, tile=converter.tile)
    finally:
        model.train(was_training)
    local = torch.tensor([result.items, *result.lossless.totals()], dtype=torch.float64)
    summed = all_reduce_sum(local).tolist()
    items = round(summed[0])
    if items == 0:
        raise ValueError(f"validation saw no items: the val split of {source} is empty")
    trip = RoundTrip.from_totals(converter.names, summed[1:])
    scores = trip.to_dict()
    worst = trip.worst_side_margin(converter.stack_names[1:])
    metrics = {
        "val/embedding_psnr": scores["embedding"]["psnr"],
        "val/embedding_ssim": scores["embedding"]["ssim"],
        "val/restored_psnr": scores["restored"]["psnr"],
        "val/restored_ssim": scores["restored"]["ssim"],
        "val/side_items_below_copy": float(trip.side_below),
        "val/items": float(items),
    }
    if worst is not None:
        metrics["val/worst_side_margin_db"] = worst
    evaluation = {"measure": cfg.train.val_measure, "step": trainer.step, "items": items,
                  **scores}
    return metrics, evaluation
