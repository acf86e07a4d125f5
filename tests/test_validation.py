"""Training validation is ``iicnet eval``'s measurement (full frames by default), and an alias
moves only on scores measured alike: the number that picks a model is the number a user sees."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from tests.fixtures_mlflow import mlflow_server  # noqa: F401 (fixture)

ITEMS = 2


def trained_like_zoo(name: str, val_crop: int = 0, items: int = ITEMS):
    """A Trainer holding the weights of ``zoo:NAME``, validating ``items`` items."""
    from safetensors.torch import load_file

    from iicnet import zoo
    from iicnet.formats import checkpoint
    from iicnet.training import Trainer

    folder = zoo.folder(name)
    cfg = checkpoint.load_config(folder).override(
        [f"train.val_crop={val_crop}", f"train.val_items={items}", "data.loader_workers=0"])
    trainer = Trainer(cfg)
    trainer.start_from(load_file(str(folder / "model.safetensors")))
    return trainer, cfg


def test_training_validation_is_what_iicnet_eval_reports(davis_shards: Path, capsys):
    from iicnet.app.cli import main
    from iicnet.convert import DEFAULT_TILE
    from ray_jobs import validation

    trainer, cfg = trained_like_zoo("video-k3-s")
    assert trainer.model.training
    metrics, evaluation = validation.validate(trainer, str(davis_shards), cfg, 0, 1)
    assert trainer.model.training, "validation left the model in eval mode"
    assert metrics["val/items"] == ITEMS and evaluation["measure"].startswith("full frames")

    assert main(["eval", "--model", "zoo:video-k3-s", "--data", str(davis_shards),
                 "--split", "val", "--limit", str(ITEMS), "--engine", "torch",
                 "--tile", str(DEFAULT_TILE), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["items"] == ITEMS
    # One measurement: the same items, frames, tiles and scorer give the same numbers.
    assert metrics["val/embedding_psnr"] == pytest.approx(report["embedding"]["psnr"], abs=1e-9)
    assert metrics["val/restored_psnr"] == pytest.approx(report["restored"]["psnr"], abs=1e-9)
    side = [n for n in report["copy"] if n != "frame_0"]
    assert metrics["val/worst_side_margin_db"] == pytest.approx(
        min(report["copy"][n]["margin_db"] for n in side), abs=1e-9)

    # The crop measure still exists and is a different number (smaller images).
    cropped, _ = trained_like_zoo("video-k3-s", val_crop=32)
    crop_metrics, crop_eval = validation.validate(cropped, str(davis_shards), cropped.cfg, 0, 1)
    assert crop_eval["measure"] == f"centre crops of 32, first {ITEMS} items"
    assert crop_metrics["val/restored_psnr"] != pytest.approx(metrics["val/restored_psnr"],
                                                              abs=1e-3)


def test_ranks_sums_add_up_to_the_whole_split(davis_shards: Path):
    """What each of two ranks scores, added (``totals``), is the whole split's evaluation."""
    from iicnet import load
    from iicnet.app.evaluation import RoundTrip, evaluate
    from iicnet.tasks import evaluation_items

    conv = load("zoo:video-k3-s", engine="torch")
    cfg = conv.config.override(["data.crop=96", "data.loader_workers=0"])

    def part(start: int, step: int):
        items = itertools.islice(evaluation_items(str(davis_shards), cfg, "val"), start, 4, step)
        return evaluate(conv, items)

    whole, first, second = part(0, 1), part(0, 2), part(1, 2)
    assert first.items == second.items == 2
    summed = [a + b for a, b in zip(first.lossless.totals(), second.lossless.totals(),
                                    strict=True)]
    merged = RoundTrip.from_totals(conv.names, summed).to_dict()
    expected = whole.lossless.to_dict()
    assert merged["items_with_a_side_image_below_copy"] == \
        expected["items_with_a_side_image_below_copy"]
    for key in ("embedding", "restored"):
        assert merged[key]["psnr"] == pytest.approx(expected[key]["psnr"], abs=1e-9)
    for name in conv.names:
        assert merged["images"][name]["psnr"] == pytest.approx(
            expected["images"][name]["psnr"], abs=1e-9)
        assert merged["copy"][name]["margin_db"] == pytest.approx(
            expected["copy"][name]["margin_db"], abs=1e-9)


def test_the_better_model_on_full_frames_wins_the_alias(mlflow_server, davis_shards: Path,  # noqa: F811
                                                         tmp_path: Path):
    """A version scored on full frames takes ``@candidate`` from one scored on crops, whatever
    the crop number; among full-frame versions, the better full-frame score wins."""
    from iicnet import registry
    from iicnet.formats import checkpoint
    from ray_jobs import validation
    from ray_jobs.registration import register_directory

    name = registry.model_name("video")
    uri = mlflow_server
    claims = {}
    for label, zoo_name, crop in (("crops", "video-k3-m", 32), ("small", "video-k3-s", 0),
                                  ("medium", "video-k3-m", 0), ("small again", "video-k3-s", 0)):
        trainer, cfg = trained_like_zoo(zoo_name, val_crop=crop, items=1)
        scores, _ = validation.validate(trainer, str(davis_shards), cfg, 0, 1)
        directory = tmp_path / label.replace(" ", "-")
        directory.mkdir()
        trainer.save(directory)
        run_id = registry.start_run(uri, "validation-test", label, cfg)
        claims[label] = (scores, register_directory(
            cfg, str(directory), uri, run_id, scores=scores, step=0, data=str(davis_shards)))
        assert checkpoint.load_config(directory).train.val_crop == crop

    crop_scores, first = claims["crops"]
    small_scores, small = claims["small"]
    medium_scores, medium = claims["medium"]
    _, again = claims["small again"]
    # The crop number is the higher one, and still does not keep the alias.
    assert crop_scores["val/restored_psnr"] > small_scores["val/restored_psnr"]
    assert first["claim"].moved and small["claim"].moved
    assert "centre crops of 32" in small["claim"].describe("restored PSNR")
    # zoo:video-k3-m is the better model on full frames (README, bench/results/zoo.json).
    assert medium_scores["val/restored_psnr"] > small_scores["val/restored_psnr"]
    assert medium["claim"].moved
    assert not again["claim"].moved and again["claim"].holder == medium["version"]
    from mlflow import MlflowClient

    holder = MlflowClient(uri).get_model_version_by_alias(name, "candidate")
    assert holder.version == medium["version"]
    assert holder.tags[registry.MEASURED_ON] == "full frames, first 1 item"
