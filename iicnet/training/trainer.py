"""The training loop's parts, free of Ray: optimiser, schedule, one step, validation, state.

::

    trainer = Trainer(cfg, device)            # IICNet + Adam + MultiStepLR + explosion guard
    trainer.load(directory)                   # optional: resume a training checkpoint
    trainer.wrap(ddp)                         # optional: DistributedDataParallel around it
    for images, reference in batches:         # uint8 (B, K, C, H, W), float (B, C_e, h, w)
        result = trainer.train_step(images, reference)
        if result.exploded:
            event = trainer.rollback(result.exploded)
    trainer.save(directory)                   # weights + optimiser + schedule + step

A training checkpoint is a model checkpoint (:mod:`iicnet.formats.checkpoint`: ``model.safetensors``
and ``config.json``, so it loads as a model too) plus ``optimizer.safetensors`` (Adam's
moment tensors) and ``trainer.json`` (step, learning rates, schedule position, explosion
guard). Nothing is pickled, so loading a checkpoint never runs code from it.

Under ``torch.distributed`` every rank calls the same methods in the same order. The loss is
averaged across ranks *before* the explosion check, so all ranks take the same decision and
either all run the backward pass (whose gradient all-reduce they share) or none does.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn

from iicnet.formats import checkpoint
from iicnet.model import IICNet, Output, to_uint8
from iicnet.model.config import Config, OptimConfig
from iicnet.model.losses import iicnet_loss
from iicnet.model.metrics import psnr, score

OPTIMIZER = "optimizer.safetensors"
STATE = "trainer.json"
STATE_FORMAT = "iicnet-training-state"
STATE_VERSION = 1
LOSS_TERMS = ("total", "emb", "freq", "res")


class TrainingDiverged(RuntimeError):
    """The loss kept exploding after every allowed rollback."""


class StateError(checkpoint.CheckpointError):
    """A training checkpoint is missing a file, is incomplete or damaged, or does not fit the
    trainer loading it."""


def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig,
                    device: torch.device | None = None) -> torch.optim.Adam:
    """Adam with the configured learning rate, betas and (L2) weight decay, as published;
    on a GPU its fused kernel (one launch for all parameters, the same update)."""
    fused = device is not None and device.type == "cuda"
    return torch.optim.Adam(params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                            weight_decay=cfg.weight_decay, fused=fused or None)


def compiled(module: nn.Module, mode: str, device: torch.device) -> nn.Module:
    """``module`` through ``torch.compile`` as ``train.compile`` asks (``off``: as it is)."""
    if mode == "off":
        return module
    if mode == "cuda-graphs" and device.type != "cuda":
        raise ValueError("train.compile=cuda-graphs needs a GPU; use train.compile=default")
    return torch.compile(module, mode="reduce-overhead" if mode == "cuda-graphs" else None)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: any CUDA GPU torch supports bf16 on, or
    a CPU with AVX512-BF16 or AMX (what oneDNN reports)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def uses_bf16(mode: str, device: torch.device) -> bool:
    """``train.amp`` resolved on ``device``: ``auto`` where the hardware has bf16, ``gpu`` on
    CUDA only, ``bf16`` always, ``off`` never."""
    if mode == "auto":
        return native_bf16(device)
    if mode == "gpu":
        return device.type == "cuda"
    return mode == "bf16"


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig
                    ) -> torch.optim.lr_scheduler.MultiStepLR:
    """Multiply the learning rate by ``gamma`` at each milestone (counted in steps)."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=cfg.milestones,
                                                gamma=cfg.gamma)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def noise_seed(seed: int, rank: int, step: int, rollbacks: int) -> int:
    """The seed of one step's training noise: distinct for every (seed, rank, step, rollbacks),
    so ranks draw different noise, a resumed run draws what it would have drawn, and a step
    retried after a rollback draws anew."""
    mixed = ((seed * 1_000_003 + rank) * 1_000_000_007 + step) * 101 + rollbacks
    return mixed % (2**63 - 1)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (a no-op outside ``torch.distributed``)."""
    if world_size() == 1:
        return t
    backend_device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
    reduced = t.to(backend_device)
    dist.all_reduce(reduced)
    return reduced.to(t.device)


@dataclass
class ExplosionGuard:
    """Flags a loss that is not finite, or ``spike_factor`` times the median of recent ones.

    Only losses of steps that were taken enter the history; the first ``min_history`` steps
    after a start or a rollback are only checked for being finite, because the loss falls
    fast at first.
    """

    spike_factor: float = 10.0
    window: int = 100
    min_history: int = 20
    history: deque[float] = field(default_factory=deque)

    def check(self, loss: float) -> str | None:
        """Why ``loss`` counts as an explosion, or None when it does not."""
        if not math.isfinite(loss):
            return f"non-finite loss ({loss})"
        if len(self.history) >= self.min_history:
            median = statistics.median(self.history)
            if loss > self.spike_factor * median:
                return (f"loss spike: {loss:.4g} is more than {self.spike_factor:g}x the median "
                        f"{median:.4g} of the last {len(self.history)} steps")
        return None

    def accept(self, loss: float) -> None:
        self.history.append(loss)
        while len(self.history) > self.window:
            self.history.popleft()

    def reset(self) -> None:
        self.history.clear()


@dataclass
class StepResult:
    losses: dict[str, float]
    """``loss/total``, ``loss/emb``, ``loss/freq``, ``loss/res``, averaged over ranks."""
    lr: float
    """The learning rate this step used."""
    grad_norm: float = float("nan")
    """Gradient norm before clipping (nan when no backward pass ran)."""
    exploded: str | None = None
    """Why the step was not taken (see :class:`ExplosionGuard`); None when it was."""


@dataclass
class TrainingState:
    """A trainer's state on the CPU: what a checkpoint holds and what a rollback returns to."""

    model: dict[str, torch.Tensor]
    optimizer_tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    """JSON: step, rollbacks, optimiser param groups and scalars, schedule, guard history."""

    @property
    def step(self) -> int:
        return int(self.meta["step"])


class Trainer:
    """IICNet with its optimiser, schedule and explosion guard, stepping on uint8 batches.

    ``model`` is the bare :class:`IICNet` (what is saved); ``net`` is what the training
    forward runs through, the same module or a DDP wrapper of it (see :meth:`wrap`).
    """

    def __init__(self, cfg: Config, device: torch.device | str = "cpu", *,
                 guard: ExplosionGuard | None = None, rollback_lr_factor: float = 0.5,
                 max_rollbacks: int = 5):
        self.cfg = cfg
        self.device = torch.device(device)
        torch.manual_seed(cfg.train.seed)
        self.model = IICNet(cfg).to(self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # training crops are all one size
        if cfg.train.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.net: nn.Module = compiled(self.model, cfg.train.compile, self.device)
        self.optimizer = build_optimizer(self.model.parameters(), cfg.optim, self.device)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim)
        self.guard = guard or ExplosionGuard()
        self.rollback_lr_factor = rollback_lr_factor
        self.max_rollbacks = max_rollbacks
        self.step = 0
        self.rollbacks = 0
        self.last_good = self.capture()

    @property
    def amp(self) -> bool:
        """Whether the training forward runs under bf16 autocast (see ``train.amp``)."""
        return uses_bf16(self.cfg.train.amp, self.device)

    @property
    def precision(self) -> str:
        """What the run computes in: ``bf16 autocast`` or ``float32``, for the console and
        the run's tags."""
        return "bf16 autocast" if self.amp else "float32"

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def wrap(self, wrapper: Callable[[nn.Module], nn.Module]) -> None:
        """Run the training forward through ``wrapper(model)`` (e.g. DDP); call after load."""
        self.net = compiled(wrapper(self.model), self.cfg.train.compile, self.device)

    def noise(self, rank_: int | None = None) -> torch.Generator:
        """The generator of this step's quantisation (and distortion) noise, on this rank
        (``rank_`` overrides it): each rank draws its own, so N ranks train on N noise
        samples, not one; the model's initialisation (the global seed) stays the same on all
        ranks. Seeded by :func:`noise_seed`, so it needs no place in the checkpoint."""
        generator = torch.Generator(self.device)
        generator.manual_seed(noise_seed(self.cfg.train.seed, rank() if rank_ is None else rank_,
                                         self.step, self.rollbacks))
        return generator

    def train_step(self, images: torch.Tensor, reference: torch.Tensor) -> StepResult:
        """One optimiser step on ``images`` uint8 (B, K, C, H, W), ``reference`` float
        (B, C_e, h, w); skipped, with the reason in ``exploded``, when the loss explodes."""
        self.net.train()
        x = images.to(self.device, non_blocking=True).float().div_(255)
        ref = reference.to(self.device, non_blocking=True).float()
        lr = self.lr
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out = self.net(x, self.noise())
        out = Output(out.embedding.float(), out.quantized.float(), out.restored.float())
        terms = iicnet_loss(out, x, ref, self.cfg.loss)
        values = torch.stack([getattr(terms, name).detach().float() for name in LOSS_TERMS])
        values = all_reduce_sum(values) / world_size()
        losses = {f"loss/{n}": float(v) for n, v in zip(LOSS_TERMS, values.tolist())}
        reason = self.guard.check(losses["loss/total"])
        if reason is not None:
            return StepResult(losses, lr, exploded=reason)
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        clip = self.cfg.optim.grad_clip or math.inf
        norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        if not math.isfinite(norm):
            # Gradients are all-reduced, so every rank sees the same norm and skips together.
            self.optimizer.zero_grad(set_to_none=True)
            return StepResult(losses, lr, norm, exploded=f"non-finite gradient norm ({norm})")
        self.optimizer.step()
        self.scheduler.step()
        self.guard.accept(losses["loss/total"])
        self.step += 1
        return StepResult(losses, lr, norm)

    def rollback(self, reason: str) -> dict[str, Any]:
        """Return to the last good state with the learning rate lowered; the event to log.

        Raises :class:`TrainingDiverged` after ``max_rollbacks`` rollbacks.
        """
        if self.rollbacks >= self.max_rollbacks:
            raise TrainingDiverged(
                f"step {self.step + 1}: {reason}, and the learning rate was already lowered "
                f"{self.rollbacks} times (optim.lr is {self.cfg.optim.lr:g}): lower optim.lr "
                "or optim.grad_clip"
            )
        failed_step = self.step + 1
        rollbacks = self.rollbacks + 1
        self.restore(self.last_good)
        self.rollbacks = rollbacks
        for group in self.optimizer.param_groups:
            group["lr"] *= self.rollback_lr_factor
        self.scheduler.base_lrs = [lr * self.rollback_lr_factor for lr in self.scheduler.base_lrs]
        self.guard.reset()
        # A second explosion before the next checkpoint lowers the rate again, not to the same.
        self.last_good = self.capture()
        return {"event": "rollback", "reason": reason, "failed_step": failed_step,
                "resumed_step": self.step, "lr": self.lr, "rollbacks": self.rollbacks}

    def capture(self) -> TrainingState:
        """A CPU copy of everything needed to continue training from here."""
        model = {k: v.detach().to("cpu", copy=True).contiguous()
                 for k, v in self.model.state_dict().items()}
        opt = self.optimizer.state_dict()
        tensors: dict[str, torch.Tensor] = {}
        scalars: dict[str, dict[str, Any]] = {}
        for index, entries in opt["state"].items():
            for name, value in entries.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{index}.{name}"] = value.detach().to("cpu", copy=True).contiguous()
                else:
                    scalars.setdefault(str(index), {})[name] = value
        sched = self.scheduler.state_dict()
        meta = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "step": self.step,
            "rollbacks": self.rollbacks,
            "optimizer": {"param_groups": [_jsonable(g) for g in opt["param_groups"]],
                          "scalars": scalars},
            # milestones and gamma come from the config; the rest is the schedule's position.
            "scheduler": {k: v for k, v in sched.items() if k not in ("milestones", "gamma")},
            "guard": list(self.guard.history),
        }
        return TrainingState(model, tensors, meta)

    def restore(self, state: TrainingState) -> None:
        """Put the trainer back into ``state`` (from :meth:`capture` or :meth:`load`);
        StateError when it does not fit this trainer."""
        try:
            self._restore(state)
        except StateError:
            raise
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateError(f"the training state does not fit this trainer ({exc})") from None

    def _restore(self, state: TrainingState) -> None:
        try:
            missing, unexpected = self.model.load_state_dict(state.model, strict=False)
        except RuntimeError as exc:
            raise StateError(f"weights do not fit this model ({exc})") from None
        if missing or unexpected:
            raise StateError(f"weights do not fit this model (missing: {missing[:3]}, "
                             f"unexpected: {unexpected[:3]})")
        meta = state.meta
        groups = [dict(g) for g in meta["optimizer"]["param_groups"]]
        for group in groups:
            group["betas"] = tuple(group["betas"])
        per_param: dict[int, dict[str, Any]] = {}
        for key, value in state.optimizer_tensors.items():
            index, _, name = key.partition(".")
            per_param.setdefault(int(index), {})[name] = value
        for index, values in meta["optimizer"]["scalars"].items():
            per_param.setdefault(int(index), {}).update(values)
        try:
            self.optimizer.load_state_dict({"state": per_param, "param_groups": groups})
        except (ValueError, KeyError) as exc:
            raise StateError(f"optimizer state does not fit this model ({exc})") from exc
        sched = self.scheduler.state_dict()
        sched.update(meta["scheduler"])
        self.scheduler.load_state_dict(sched)
        self.step = int(meta["step"])
        self.rollbacks = int(meta["rollbacks"])
        self.guard.reset()
        for loss in meta["guard"]:
            self.guard.accept(float(loss))

    def save(self, directory: str | Path) -> TrainingState:
        """Write a training checkpoint into an existing directory; it becomes the state a
        rollback returns to. Returns that state."""
        directory = Path(directory)
        state = self.capture()
        checkpoint.write_model_files(directory, self.model, self.cfg)
        save_file(state.optimizer_tensors, str(directory / OPTIMIZER),
                  metadata={"format": STATE_FORMAT})
        (directory / STATE).write_text(json.dumps(state.meta, indent=1))
        # Last: Ray copies the folder itself, and this marker is what proves a copy whole.
        checkpoint.seal(directory)
        self.last_good = state
        return state

    def start_from(self, weights: dict[str, torch.Tensor]) -> None:
        """Begin from another model's weights (fine-tuning): the same architecture, loaded
        strictly; the optimiser, the schedule and the step count stay fresh."""
        self.model.load_state_dict({k: v.to(self.device) for k, v in weights.items()})
        self.last_good = self.capture()

    def load(self, directory: str | Path) -> None:
        """Continue from a training checkpoint written by :meth:`save`."""
        state = read_state(directory)
        self.restore(state)
        self.last_good = state


def read_state(directory: str | Path, device: torch.device | str = "cpu") -> TrainingState:
    """The :class:`TrainingState` of a training checkpoint directory (nothing unpickled)."""
    directory = Path(directory)
    for name in (checkpoint.WEIGHTS, OPTIMIZER, STATE):
        if not (directory / name).is_file():
            raise StateError(f"{directory}: no {name}; not an IICNet training checkpoint")
    try:
        checkpoint.verify(directory)
        meta = checkpoint.read_json(directory / STATE)
        if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT \
                or meta.get("version") != STATE_VERSION:
            found = meta if isinstance(meta, dict) else {}
            raise StateError(f"{directory / STATE}: format {found.get('format')!r} version "
                             f"{found.get('version')!r}, expected {STATE_FORMAT!r} "
                             f"{STATE_VERSION}")
        return TrainingState(checkpoint.load_tensors(directory / checkpoint.WEIGHTS, device),
                             checkpoint.load_tensors(directory / OPTIMIZER, device), meta)
    except StateError:
        raise
    except checkpoint.CheckpointError as exc:
        raise StateError(str(exc)) from None


def _jsonable(group: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in group.items()}


METRICS = ("embedding_psnr", "embedding_ssim", "restored_psnr", "restored_ssim")


@dataclass
class Validation:
    """Sums of per-image scores; ``sums`` is ``[Σ emb psnr, Σ emb ssim, n emb, Σ restored
    psnr, Σ restored ssim, n restored]`` in float64, so ranks can add theirs together."""

    sums: torch.Tensor = field(default_factory=lambda: torch.zeros(6, dtype=torch.float64))
    example: dict[str, torch.Tensor] | None = None
    """The first item seen: ``images``, ``reference``, ``embedding``, ``restored`` (uint8)."""

    def means(self) -> dict[str, float]:
        s = self.sums.tolist()
        if s[2] == 0:
            raise ValueError("validation saw no items: the validation split is empty or "
                             "smaller than the number of ranks")
        return {"val/embedding_psnr": s[0] / s[2], "val/embedding_ssim": s[1] / s[2],
                "val/restored_psnr": s[3] / s[5], "val/restored_ssim": s[4] / s[5]}

    @property
    def items(self) -> int:
        return int(self.sums[2])


@torch.no_grad()
def validate(model: IICNet, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device | str = "cpu") -> Validation:
    """Score ``model`` the way the paper's tables were made, on this process's batches.

    The embedding is rounded to uint8 (``encode``) and the images are restored from that
    rounded embedding (``decode``); :func:`iicnet.model.metrics.score` scores them, as
    ``iicnet eval`` does.
    """
    was_training = model.training
    model.eval()
    result = Validation()
    try:
        for images, reference in batches:
            images = images.to(device)
            embedding = model.encode(images).cpu()
            restored = model.decode(embedding.to(device)).cpu()
            images, target = images.cpu(), to_uint8(reference.cpu())
            b, k = images.shape[:2]
            scores = score(images, target, embedding, restored)
            result.sums += torch.tensor([
                scores.embedding_psnr.sum(), scores.embedding_ssim.sum(), b,
                scores.restored_psnr.sum(), scores.restored_ssim.sum(), b * k,
            ], dtype=torch.float64)
            if result.example is None:
                result.example = {"images": images[0], "reference": target[0],
                                  "embedding": embedding[0], "restored": restored[0]}
    finally:
        model.train(was_training)
    return result


def image_grid(images: torch.Tensor, reference: torch.Tensor, embedding: torch.Tensor,
               restored: torch.Tensor, gap: int = 4,
               captions: list[list[str]] | None = None) -> np.ndarray:
    """One item as an (H', W', 3) uint8 picture, two rows of K+1 tiles::

        reference   original 1 .. original K
        embedding   restored 1 .. restored K

    ``images``/``restored`` (K, C, H, W), ``reference``/``embedding`` (C_e, h, w), all uint8;
    a smaller embedding is enlarged (nearest) and a 1-channel one shown in grey.
    ``captions``: two rows of K+1 lines, printed under the tiles.
    """
    k, _, h, w = images.shape
    band = CAPTION_BAND if captions else 0

    def tile(t: torch.Tensor) -> torch.Tensor:
        t = t.expand(3, -1, -1) if t.shape[0] == 1 else t
        if t.shape[-2:] != (h, w):
            t = nn.functional.interpolate(t[None].float(), size=(h, w), mode="nearest")[0]
        return t.to(torch.uint8)

    rows = [[reference, *images.unbind(0)], [embedding, *restored.unbind(0)]]
    canvas = torch.full((3, 2 * (h + band) + gap, (k + 1) * w + k * gap), 255, dtype=torch.uint8)
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            top, left = r * (h + band + gap), c * (w + gap)
            canvas[:, top:top + h, left:left + w] = tile(picture)
    picture = canvas.permute(1, 2, 0).numpy()
    if not captions:
        return picture
    from PIL import Image, ImageDraw

    image = Image.fromarray(picture)
    draw = ImageDraw.Draw(image)
    for r, row in enumerate(captions):
        for c, text in enumerate(row):
            draw.text((c * (w + gap) + 2, r * (h + band + gap) + h + 2), text, fill=(0, 0, 0))
    return np.asarray(image)


CAPTION_BAND = 14
"""Pixels under each tile of a captioned grid for one line of PIL's default font."""

PREVIEW_CROP = 256
"""Side of the centre crop a training run's validation picture shows (a size at which a
person can judge the result in the MLflow UI); smaller images are shown whole."""


def preview(model: IICNet, images: torch.Tensor, reference: torch.Tensor,
            device: torch.device | str = "cpu", names: list[str] | None = None) -> np.ndarray:
    """A captioned picture of one item (``images`` (K, C, H, W), ``reference`` as the task
    gives them): the reference and the K images, then the rounded embedding and the images
    restored from it, each with its PSNR in dB (the embedding's against the reference)."""
    example = validate(model, [(images[None], reference[None])], device).example
    assert example is not None
    restored = psnr(example["restored"], example["images"]).tolist()
    names = names or [f"image {j + 1}" for j in range(len(restored))]
    captions = [["reference", *names],
                [f"embedding {float(psnr(example['embedding'], example['reference'])):.2f} dB",
                 *(f"restored {value:.2f} dB" for value in restored)]]
    return image_grid(**example, captions=captions)
