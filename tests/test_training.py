"""The training library without Ray: optimiser, schedule, step, state round trip, rollback."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from iicnet.formats import checkpoint
from iicnet.model import to_uint8
from iicnet.model.config import Config
from iicnet.model.metrics import psnr, ssim
from iicnet.training import (
    OPTIMIZER,
    STATE,
    ExplosionGuard,
    StateError,
    Trainer,
    TrainingDiverged,
    image_grid,
    preview,
    read_state,
    validate,
)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads spin against each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = ["model.num_images=2", "model.blocks=1", "model.nf=4", "model.growth=4",
        "data.crop=16", "data.batch_size=2"]


def tiny(*extra: str) -> Config:
    return Config().override([*TINY, *extra])


def batch(seed: int = 0, b: int = 2, k: int = 2, size: int = 16):
    """Smooth random images (learnable in a few steps), reference = the first image."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(b, k, 3, size // 4, size // 4, generator=gen)
    images = torch.nn.functional.interpolate(low.flatten(0, 1), size=(size, size),
                                             mode="bilinear", align_corners=False)
    images = to_uint8(images.reshape(b, k, 3, size, size))
    return images, images[:, 0].float() / 255


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_optimizer_and_schedule_follow_the_config():
    trainer = Trainer(tiny("optim.lr=0.001", "optim.beta1=0.8", "optim.weight_decay=0.01",
                           "optim.milestones=[2, 4]", "optim.gamma=0.5"))
    group = trainer.optimizer.param_groups[0]
    assert isinstance(trainer.optimizer, torch.optim.Adam)
    assert (group["lr"], group["betas"], group["weight_decay"]) == (0.001, (0.8, 0.999), 0.01)
    images, reference = batch()
    lrs = [trainer.train_step(images, reference).lr for _ in range(5)]
    assert lrs == pytest.approx([0.001, 0.001, 0.0005, 0.0005, 0.00025])
    assert trainer.step == 5


def test_steps_lower_the_loss_and_clip_the_gradient():
    trainer = Trainer(tiny("optim.lr=0.002", "optim.grad_clip=0.5"))
    images, reference = batch()
    results = [trainer.train_step(images, reference) for _ in range(15)]
    assert set(results[0].losses) == {"loss/total", "loss/emb", "loss/freq", "loss/res"}
    assert all(r.exploded is None for r in results)
    assert results[-1].losses["loss/total"] < 0.95 * results[0].losses["loss/total"]
    assert results[0].grad_norm > 0.5
    clipped = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in trainer.model.parameters()
                            if p.grad is not None))
    assert clipped == pytest.approx(0.5, rel=1e-3)


def test_training_state_round_trip(tmp_path: Path):
    cfg = tiny("optim.milestones=[3]")
    trainer = Trainer(cfg)
    for seed in range(4):
        trainer.train_step(*batch(seed))
    trainer.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [checkpoint.WEIGHTS, checkpoint.CONFIG, OPTIMIZER, STATE, checkpoint.MARKER])
    meta = json.loads((tmp_path / STATE).read_text())
    assert meta["step"] == 4 and meta["scheduler"]["last_epoch"] == 4
    model, loaded_cfg = checkpoint.load(tmp_path)  # a training checkpoint is a model too
    assert loaded_cfg == cfg

    resumed = Trainer(cfg)
    resumed.load(tmp_path)
    assert resumed.step == 4 and resumed.lr == trainer.lr == pytest.approx(cfg.optim.lr / 2)
    for key, value in trainer.optimizer.state_dict()["state"].items():
        for name, tensor in value.items():
            assert torch.equal(resumed.optimizer.state_dict()["state"][key][name], tensor)
    images, reference = batch(9)
    torch.manual_seed(1)
    a = trainer.train_step(images, reference)
    torch.manual_seed(1)
    b = resumed.train_step(images, reference)
    assert a.losses == b.losses
    for key, value in weights(trainer).items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_fine_tuning_starts_from_the_weights_with_a_fresh_optimiser_and_schedule():
    cfg = tiny("optim.milestones=[3]")
    trained = Trainer(cfg)
    for seed in range(4):
        trained.train_step(*batch(seed))
    tuned = Trainer(cfg.override(["train.seed=7"]))
    tuned.start_from(weights(trained))
    assert tuned.step == 0 and tuned.lr == cfg.optim.lr and not tuned.optimizer.state
    for key, value in weights(trained).items():
        assert torch.equal(tuned.model.state_dict()[key], value), key
    assert tuned.last_good.meta["step"] == 0  # a rollback returns to the given weights
    with pytest.raises(RuntimeError, match="size mismatch"):
        Trainer(tiny("model.nf=8")).start_from(weights(trained))


def test_reading_a_state_names_the_missing_file(tmp_path: Path):
    trainer = Trainer(tiny())
    trainer.save(tmp_path)
    (tmp_path / OPTIMIZER).unlink()
    with pytest.raises(StateError, match=OPTIMIZER):
        read_state(tmp_path)
    (tmp_path / STATE).write_text(json.dumps({"format": "other"}))
    trainer.save(tmp_path)
    (tmp_path / STATE).write_text(json.dumps({"format": "other", "version": 1}))
    with pytest.raises(StateError, match=f"{STATE} is 33 of [0-9]+ bytes"):
        read_state(tmp_path)
    checkpoint.seal(tmp_path)
    with pytest.raises(StateError, match="format 'other'"):
        read_state(tmp_path)


def test_a_non_finite_loss_rolls_back_with_a_lower_learning_rate(tmp_path: Path):
    trainer = Trainer(tiny("optim.lr=0.001"), max_rollbacks=2)
    trainer.train_step(*batch(0))
    trainer.save(tmp_path)
    good = weights(trainer)
    trainer.train_step(*batch(1))
    trainer.train_step(*batch(2))
    images, reference = batch(3)
    reference[0, 0, 0, 0] = float("nan")
    before = weights(trainer)
    result = trainer.train_step(images, reference)
    assert result.exploded and "non-finite loss" in result.exploded
    assert all(torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())

    event = trainer.rollback(result.exploded)
    assert event == {"event": "rollback", "reason": result.exploded, "failed_step": 4,
                     "resumed_step": 1, "lr": pytest.approx(0.0005), "rollbacks": 1}
    assert trainer.step == 1 and trainer.lr == pytest.approx(0.0005)
    assert all(torch.equal(v, good[k]) for k, v in trainer.model.state_dict().items())
    # Again before the next checkpoint: lower again, from the same weights.
    assert trainer.rollback("again")["lr"] == pytest.approx(0.00025)
    with pytest.raises(TrainingDiverged, match="optim.lr"):
        trainer.rollback("and again")
    assert trainer.train_step(*batch(4)).exploded is None


def test_a_non_finite_gradient_skips_the_update():
    trainer = Trainer(tiny())
    first = next(trainer.model.parameters())
    first.register_hook(lambda grad: grad * float("nan"))
    before = weights(trainer)
    result = trainer.train_step(*batch())
    assert result.exploded and "gradient" in result.exploded and trainer.step == 0
    assert all(torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())


def test_the_guard_flags_spikes_against_the_running_median():
    guard = ExplosionGuard(spike_factor=5.0, window=10, min_history=3)
    assert guard.check(1e9) is None  # no history yet: only finiteness is checked
    for loss in (10.0, 12.0, 11.0):
        guard.accept(loss)
    assert guard.check(50.0) is None
    assert "spike" in guard.check(60.0)
    assert "non-finite" in guard.check(float("inf"))
    for _ in range(20):
        guard.accept(1.0)
    assert len(guard.history) == 10 and "spike" in guard.check(6.0)


def test_validation_scores_the_rounded_embedding_per_image():
    trainer = Trainer(tiny())
    batches = [batch(0), batch(1, b=1)]
    result = validate(trainer.model, batches)
    images = torch.cat([b[0] for b in batches])
    reference = to_uint8(torch.cat([b[1] for b in batches]))
    embedding = trainer.model.encode(images)
    restored = trainer.model.decode(embedding)
    assert result.items == 3 and trainer.model.training
    assert result.means() == pytest.approx({
        "val/embedding_psnr": float(psnr(embedding, reference).mean()),
        "val/embedding_ssim": float(ssim(embedding, reference).mean()),
        "val/restored_psnr": float(psnr(restored, images).mean()),
        "val/restored_ssim": float(ssim(restored, images).mean()),
    })
    grid = image_grid(**result.example)
    assert grid.shape == (2 * 16 + 4, 3 * 16 + 2 * 4, 3) and grid.dtype.name == "uint8"


def test_the_validation_preview_shows_each_image_with_its_psnr():
    import numpy as np
    from PIL import Image, ImageDraw

    from iicnet.training.trainer import CAPTION_BAND

    n, gap, band = 128, 4, CAPTION_BAND
    trainer = Trainer(tiny())
    images, reference = batch(3, b=1, size=n)
    picture = preview(trainer.model, images[0], reference[0], names=["first", "second"])
    assert picture.shape == (2 * (n + band) + gap, 3 * n + 2 * gap, 3)
    example = validate(trainer.model, [(images, reference)]).example
    plain = image_grid(**example, captions=[["", "", ""], ["", "", ""]])
    # the tiles are the round trip's pictures; the bands under them carry the captions
    for rows in (slice(0, n), slice(n + band + gap, 2 * n + band + gap)):
        assert (picture[rows] == plain[rows]).all()
    restored = psnr(example["restored"], example["images"]).tolist()
    expected = Image.fromarray(plain.copy())
    ImageDraw.Draw(expected).text((n + gap + 2, 2 * n + band + gap + 2),
                                  f"restored {restored[0]:.2f} dB", fill=(0, 0, 0))
    second = (slice(2 * n + band + gap, None), slice(n + gap, 2 * n + gap))
    assert (picture[second] != 255).any()
    assert (picture[second] == np.asarray(expected)[second]).all(), \
        "the second tile's caption is its restored PSNR"


def _ddp_worker(rank: int, world: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        trainer = Trainer(tiny())
        init = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        noise = torch.rand(64, generator=trainer.noise())
        trainer.wrap(torch.nn.parallel.DistributedDataParallel)
        trainer.train_step(*batch(rank))
        images, reference = batch(10 + rank)
        if rank == 1:
            reference[0, 0, 0, 0] = float("nan")  # only one rank's loss explodes
        result = trainer.train_step(images, reference)
        event = trainer.rollback(result.exploded) if result.exploded else None
        after = trainer.train_step(*batch(20 + rank))  # DDP steps on after a skipped backward
        flat = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        torch.save({"event": event, "after": after.exploded, "step": trainer.step,
                    "weights": flat, "init": init, "noise": noise}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_agree_on_an_explosion_under_ddp(tmp_path: Path):
    init = f"file://{tmp_path / 'rendezvous'}"
    out = str(tmp_path / "result")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.start_processes(_ddp_worker, args=(2, init, out), nprocs=2, join=True,
                       start_method="fork")
    results = [torch.load(f"{out}.{rank}") for rank in range(2)]
    for r in results:
        assert r["event"] is not None and r["event"]["resumed_step"] == 0
        assert r["after"] is None and r["step"] == 1
    assert torch.equal(results[0]["weights"], results[1]["weights"])
    # One initialisation on every rank, but each rank its own quantisation noise.
    assert torch.equal(results[0]["init"], results[1]["init"])
    assert not torch.equal(results[0]["noise"], results[1]["noise"])


def test_each_rank_and_step_draws_its_own_noise_and_a_resumed_run_draws_its_own(
        tmp_path: Path):
    trainer = Trainer(tiny())

    def draw(rank: int | None = None) -> torch.Tensor:
        return torch.rand(64, generator=trainer.noise(rank))

    assert torch.equal(draw(0), draw(0)) and torch.equal(draw(), draw(0))
    assert not torch.equal(draw(0), draw(1))
    first = draw()
    trainer.train_step(*batch(0))
    assert not torch.equal(draw(), first), "a new draw each step"

    trainer.save(tmp_path)
    for seed in (1, 2):
        trainer.train_step(*batch(seed))
    resumed = Trainer(tiny())
    resumed.load(tmp_path)
    for seed in (1, 2):
        resumed.train_step(*batch(seed))
    for name, value in weights(trainer).items():
        assert torch.equal(value, weights(resumed)[name]), name
