"""Typed configuration: one place that lists every knob.

A config is five nested dataclasses (model, loss, optim, data, train), built from a mapping
(:func:`from_dict`; YAML files are read by :mod:`iicnet.formats.config_file`).
Every field is checked on load; a bad value raises :class:`ConfigError` naming the field
(``model.blocks``) and what was wrong. A config fully determines a model: two models built
from equal configs have the same architecture and parameter names.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal


class ConfigError(ValueError):
    """A config value is missing, unknown or out of range; the message names the field."""


@dataclass
class ModelConfig:
    """Architecture. Defaults are the published video K=5 design."""

    num_images: int = 5
    """K: how many images go into one embedding."""
    image_channels: int = 3
    """C: channels of each input image."""
    embed_channels: int = 3
    """C_e: channels of the embedding image (1 for the grayscale task)."""
    downscale: Literal["none", "haar", "squeeze"] = "none"
    """Invertible downscaling by 2 before the coupling blocks (Haar wavelet or 2x2 squeeze)."""
    order: Literal["ref", "hl"] = "ref"
    """Channel order after downscaling: the reference's sub-bands first, or all low bands first."""
    blocks: int = 10
    """Number of coupling blocks."""
    nf: int = 64
    """Feature width of the relation module."""
    growth: int = 32
    """Growth rate of every dense block."""
    clamp: float = 1.0
    """Scale of the centred sigmoid in the affine coupling (eq. 4)."""
    relation_residual_scale: float = 0.2
    """r_k = x_k + scale * tail_k in the relation module."""
    fused: bool = True
    """Run the K relation heads/tails as single grouped kernels (same weights, same result)."""
    memory_saving: bool = False
    """Recompute activations in the backward pass instead of storing them."""


@dataclass
class LossConfig:
    """Loss weights (published: 1, 0.001, 3; lambda_res 0.4 for video at half resolution)."""

    lambda_emb: float = 1.0
    lambda_freq: float = 0.001
    lambda_res: float = 3.0
    charbonnier_eps: float = 1e-6


@dataclass
class OptimConfig:
    """Adam with a multi-step schedule, as published."""

    lr: float = 2e-4
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 1e-5
    grad_clip: float = 10.0
    milestones: list[int] = field(default_factory=lambda: [100_000, 200_000, 300_000, 400_000])
    gamma: float = 0.5


@dataclass
class DataConfig:
    """What a training sample is: the task, its parameters, crops and batching."""

    task: str = "video"
    """Task name, see ``iicnet.tasks``."""
    step: int = 5
    """Frame step between the K frames of a video window."""
    scale: int = 2
    """Zoom factor of the dual-view task (2, 4 or 8)."""
    matte: bool = False
    """Multi-layer task: add the alpha matte as a fourth image."""
    crop: int = 144
    """Side of the random training crop (validation uses centre crops of this size)."""
    batch_size: int = 2
    shuffle_buffer: int = 256
    loader_workers: int = 2


@dataclass
class TrainConfig:
    """The run: length, cadence of validation, checkpoints and logging."""

    steps: int = 500_000
    val_every: int = 1000
    checkpoint_every: int = 5000
    log_every: int = 100
    seed: int = 0
    amp: bool = True
    """bf16 autocast when a GPU is used (ignored on CPU)."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def flat(self) -> dict[str, Any]:
        """``{"model.blocks": 10, ...}``: the form MLflow params and ``--set`` use."""
        return {
            f"{section}.{name}": value
            for section, values in self.to_dict().items()
            for name, value in values.items()
        }

    def override(self, assignments: list[str]) -> Config:
        """Apply ``section.field=value`` strings (values read by :func:`parse_value`); returns a
        new config."""
        data = self.to_dict()
        for item in assignments:
            key, sep, raw = item.partition("=")
            section, dot, name = key.strip().partition(".")
            if not sep or not dot:
                raise ConfigError(f"override {item!r}: expected section.field=value")
            if section not in data:
                raise ConfigError(f"override {item!r}: unknown section {section!r}")
            if name not in data[section]:
                raise ConfigError(f"override {item!r}: unknown field {key.strip()!r}")
            data[section][name] = parse_value(raw)
        return from_dict(data)


_SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}
_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False,
          "null": None, "none": None, "~": None}


def parse_value(raw: str) -> Any:
    """A command-line value: JSON (``3``, ``1e-3``, ``[10, 20]``, ``"x"``), a flow list of
    plain words (``[a, b]``), true/false/null in any case, else the text itself."""
    text = raw.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [parse_value(part) for part in inner.split(",")] if inner else []
    return _WORDS.get(text.lower(), text)


def _check_value(path: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (list, types.GenericAlias) or hint is list:
        (item,) = typing.get_args(hint) or (Any,)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_check_value(f"{path}[{i}]", v, item) for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def _build_section(name: str, cls: type, raw: Any) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a mapping of fields, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{name}.{unknown[0]}: unknown field (known: {', '.join(sorted(known))})"
        )
    values = {k: _check_value(f"{name}.{k}", v, hints[k]) for k, v in raw.items()}
    return cls(**values)


def _validate(cfg: Config) -> None:
    m, lo, o, d, t = cfg.model, cfg.loss, cfg.optim, cfg.data, cfg.train
    positive = {
        "model.num_images": m.num_images, "model.image_channels": m.image_channels,
        "model.embed_channels": m.embed_channels, "model.blocks": m.blocks, "model.nf": m.nf,
        "model.growth": m.growth, "data.step": d.step, "data.crop": d.crop,
        "data.batch_size": d.batch_size, "data.shuffle_buffer": d.shuffle_buffer,
        "train.steps": t.steps, "train.val_every": t.val_every,
        "train.checkpoint_every": t.checkpoint_every, "train.log_every": t.log_every,
        "optim.lr": o.lr, "loss.charbonnier_eps": lo.charbonnier_eps,
    }
    for path, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{path}: must be positive, got {value!r}")
    for path, value in {"loss.lambda_emb": lo.lambda_emb, "loss.lambda_freq": lo.lambda_freq,
                        "loss.lambda_res": lo.lambda_res, "optim.weight_decay": o.weight_decay,
                        "optim.grad_clip": o.grad_clip, "model.clamp": m.clamp,
                        "data.loader_workers": d.loader_workers}.items():
        if value < 0:
            raise ConfigError(f"{path}: must not be negative, got {value!r}")
    for path, value in {"optim.beta1": o.beta1, "optim.beta2": o.beta2,
                        "optim.gamma": o.gamma}.items():
        if not 0 <= value < 1 and not (path == "optim.gamma" and value == 1):
            raise ConfigError(f"{path}: must lie in [0, 1), got {value!r}")
    if sorted(o.milestones) != o.milestones:
        raise ConfigError(f"optim.milestones: must be increasing, got {o.milestones!r}")
    total = m.num_images * m.image_channels
    if m.downscale != "none":
        total *= 4
    if total % m.embed_channels:
        raise ConfigError(
            f"model.embed_channels: {m.embed_channels} does not divide the {total} channels "
            "entering the channel squeeze"
        )
    if m.embed_channels > m.image_channels:
        raise ConfigError(
            f"model.embed_channels: {m.embed_channels} exceeds model.image_channels "
            f"({m.image_channels}); the embedding looks like the reference image"
        )
    if total == split_point(m):
        raise ConfigError(
            "model: the coupling split leaves no bottom half; use more images or downscaling "
            f"(num_images={m.num_images}, downscale={m.downscale!r}, order={m.order!r})"
        )
    if d.scale not in (2, 4, 8):
        raise ConfigError(f"data.scale: must be 2, 4 or 8, got {d.scale!r}")
    factor = 2 if m.downscale != "none" else 1
    if d.crop % factor:
        raise ConfigError(f"data.crop: {d.crop} is not a multiple of the downscaling factor 2")


def split_point(m: ModelConfig) -> int:
    """Channel index m~ where each coupling block splits its input (as in the authors' code)."""
    if m.downscale == "none":
        return m.embed_channels
    if m.order == "ref":
        return m.embed_channels * 4
    return m.num_images * m.image_channels


def from_dict(raw: Any, source: str = "config") -> Config:
    """Build and validate a :class:`Config` from a nested mapping (missing fields default)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with sections {', '.join(_SECTIONS)}")
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(
            f"{unknown[0]}: unknown section in {source} (known: {', '.join(_SECTIONS)})"
        )
    sections = {
        name: _build_section(name, typing.get_type_hints(Config)[name], raw.get(name))
        for name in _SECTIONS
    }
    cfg = Config(**sections)
    _validate(cfg)
    return cfg
