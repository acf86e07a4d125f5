"""Typed configuration: one place that lists every knob.

A config is six nested dataclasses (model, loss, optim, data, train, distortion), built from
a mapping
(:func:`from_dict`; YAML files are read by :mod:`iicnet.formats.config_file`).
Every field is checked on load; a bad value raises :class:`ConfigError` naming the field
(``model.blocks``) and what was wrong. A config fully determines a model: two models built
from equal configs have the same architecture and parameter names.
"""

from __future__ import annotations

import dataclasses
import json
import math
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
    channel_order: Literal["rgb", "bgr"] = "rgb"
    """Colour order the weights expect. ``bgr`` only for an imported official model that no
    weight permutation makes RGB (grayscale); :mod:`iicnet.convert` reverses the channels
    around it, while ``IICNet`` itself takes the stack as is."""


@dataclass
class LossConfig:
    """Loss weights (published: 1, 0.001, 3; lambda_res 0.4 for video at half resolution)."""

    lambda_emb: float = 1.0
    lambda_freq: float = 0.001
    lambda_res: float = 3.0
    charbonnier_eps: float = 1e-6
    frame_balance: float = 0.0
    """0 as published; up to 1: weigh each image's restoration term by its share of the
    error (:func:`iicnet.model.losses.restoration_loss`)."""


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
    amp: Literal["auto", "gpu", "bf16", "off"] = "gpu"
    """bf16 autocast of the training forward: ``auto`` on a GPU and on a CPU with native bf16
    (AVX512-BF16 or AMX, as torch reports it), ``gpu`` on a GPU only (float32 on any CPU),
    ``bf16`` always, ``off`` never (float32). The couplings' stream, scales and affine updates
    and the loss stay in float32 (a flow's reverse pass overflows in reduced precision); the
    weights and Adam's state are float32 throughout. ``true``/``false`` (older configs) read
    as ``gpu``/``off``."""
    compile: Literal["off", "default", "cuda-graphs"] = "off"
    """``torch.compile`` the training forward: ``default`` (Inductor), ``cuda-graphs``
    (Inductor with CUDA graphs, ``mode="reduce-overhead"``; GPU only). Same math."""
    channels_last: bool = False
    """Keep the weights, and so every convolution's output, in the channels-last memory
    layout (a GPU's tensor cores prefer it)."""


@dataclass
class DistortionConfig:
    """What the embedding goes through between the encoder and the inverse pass in training
    (``off``: nothing; the published models). Encoding and decoding never distort."""

    kind: Literal["off", "jpeg"] = "off"
    """``jpeg``: a differentiable JPEG (``iicnet.model.modules.jpeg``) of the quantised
    embedding, so the model learns to restore from a re-encoded PNG."""
    quality: list[int] = field(default_factory=lambda: [50, 95])
    """[low, high]: the JPEG quality of each training sample, drawn uniformly from low..high."""
    rounding: Literal["ste", "cubic"] = "ste"
    """How the DCT coefficients are rounded: straight-through (exact forward, identity
    gradient) or the cubic approximation (smooth forward and gradient)."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distortion: DistortionConfig = field(default_factory=DistortionConfig)

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


_LEGACY_BOOLS = {"train.amp": {True: "gpu", False: "off"}}
"""Fields that were booleans once: what their old values mean now."""


def _check_value(path: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if isinstance(value, bool) and path in _LEGACY_BOOLS:
            value = _LEGACY_BOOLS[path][value]
        if isinstance(value, bool) and ("on" if value else "off") in allowed:
            value = "on" if value else "off"  # YAML 1.1 and parse_value read off/on as booleans
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
        try:
            value = float(value)
        except OverflowError:  # an int beyond the float range
            raise ConfigError(f"{path}: {_show(value)} is out of range") from None
        if not math.isfinite(value):
            raise ConfigError(f"{path}: must be a finite number, got {value!r}")
        return value
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


MAX_PARAMETERS = 1 << 30
"""Largest model a config may describe: 2**30 parameters, 4 GiB of float32 weights alone
(the published design has about 6.8 million)."""

MAX_CROP = 8192
"""The largest ``data.crop``: evaluating with it scores whole frames up to this size."""

UPPER = {
    "model.num_images": 64, "model.image_channels": 16, "model.embed_channels": 16,
    "model.blocks": 256, "model.nf": 4096, "model.growth": 4096, "model.clamp": 100.0,
    "model.relation_residual_scale": 100.0,
    "loss.lambda_emb": 1e6, "loss.lambda_freq": 1e6, "loss.lambda_res": 1e6,
    "loss.charbonnier_eps": 1.0, "loss.frame_balance": 1.0,
    "optim.lr": 10.0, "optim.weight_decay": 1.0, "optim.grad_clip": 1e9,
    "data.step": 10_000, "data.crop": MAX_CROP, "data.batch_size": 4096,
    "data.shuffle_buffer": 1_000_000, "data.loader_workers": 256,
    "train.steps": 10**10, "train.val_every": 10**10, "train.checkpoint_every": 10**10,
    "train.log_every": 10**10, "train.seed": 2**63 - 1,
}
"""Inclusive upper bound of each numeric field. A field not named here (an integer or a list
of integers) is bounded by :data:`DEFAULT_UPPER`, so no size is ever unbounded; a number
beyond these is a typo or an attack, not an experiment."""
DEFAULT_UPPER = 10**10


def _check_bounds(cfg: Config) -> None:
    """Every number finite (floats are checked as they are read) and at most its bound."""
    for path, value in cfg.flat().items():
        limit = UPPER.get(path, DEFAULT_UPPER)
        for i, item in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(item, bool) or not isinstance(item, int | float):
                continue
            where = f"{path}[{i}]" if isinstance(value, list) else path
            if item > limit:
                raise ConfigError(f"{where}: {_show(item)} exceeds the limit of {limit:g}")
            if item < -DEFAULT_UPPER:
                raise ConfigError(f"{where}: {_show(item)} is below the limit of "
                                  f"{-DEFAULT_UPPER:g}")


def _show(value: int | float) -> str:
    """``repr`` of a number, short for a huge integer (whose decimal form Python may even
    refuse to write)."""
    if isinstance(value, int) and abs(value) > 10**30:
        return f"an integer of {value.bit_length()} bits"
    return repr(value)


def _dense_parameters(c_in: int, c_out: int, growth: int) -> int:
    """Weights and biases of a 5-convolution 3x3 dense block (``modules/dense_block.py``)."""
    hidden = sum(((c_in + i * growth) * 9 + 1) * growth for i in range(4))
    return hidden + ((c_in + 4 * growth) * 9 + 1) * c_out


def parameter_count(m: ModelConfig) -> int:
    """The number of parameters ``IICNet`` builds for ``m``, computed without building it
    (so a config can be refused before any memory is allocated)."""
    k, c, nf, g = m.num_images, m.image_channels, m.nf, m.growth
    relation = (k * (_dense_parameters(c, nf, g) + _dense_parameters(nf, c, g))
                + k * 2 * (nf * nf + nf) + k * (k * nf * 9 * nf + nf))
    channels = k * c * (4 if m.downscale != "none" else 1)
    split = split_point(m)
    block = (_dense_parameters(channels - split, split, g)
             + 2 * _dense_parameters(split, channels - split, g))
    downscale = channels * channels if m.downscale != "none" else 0
    return 2 * relation + m.blocks * block + downscale


def _validate(cfg: Config) -> None:
    m, lo, o, d, t = cfg.model, cfg.loss, cfg.optim, cfg.data, cfg.train
    _check_bounds(cfg)
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
                        "loss.lambda_res": lo.lambda_res, "loss.frame_balance": lo.frame_balance,
                        "optim.weight_decay": o.weight_decay,
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
    if t.seed < 0:
        raise ConfigError(f"train.seed: must not be negative, got {t.seed!r}")
    if len(o.milestones) > 10_000:
        raise ConfigError(f"optim.milestones: {len(o.milestones)} milestones exceed the limit "
                          "of 10000")
    params = parameter_count(m)
    if params > MAX_PARAMETERS:
        raise ConfigError(
            f"model: {params:,} parameters ({params * 4 / 2**30:.1f} GiB of float32 weights) "
            f"exceed the limit of {MAX_PARAMETERS:,} (model.nf={m.nf}, model.growth="
            f"{m.growth}, model.blocks={m.blocks}, model.num_images={m.num_images}, "
            f"model.image_channels={m.image_channels})")


def split_point(m: ModelConfig) -> int:
    """Channel index m~ where each coupling block splits its input (as in the authors' code)."""
    if m.downscale == "none":
        return m.embed_channels
    if m.order == "ref":
        return m.embed_channels * 4
    return m.num_images * m.image_channels


def _validate_distortion(cfg: Config) -> None:
    dist, m = cfg.distortion, cfg.model
    q = dist.quality
    if len(q) != 2 or not 1 <= q[0] <= q[1] <= 100:
        raise ConfigError(f"distortion.quality: expected [low, high] with 1 <= low <= high <= "
                          f"100, got {q!r}")
    if dist.kind == "jpeg" and m.embed_channels not in (1, 3):
        raise ConfigError(f"distortion.kind: jpeg codes 1- or 3-channel images, but "
                          f"model.embed_channels is {m.embed_channels}")


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
    _validate_distortion(cfg)
    return cfg
