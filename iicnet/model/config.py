"""Typed configuration: one place that lists every knob.

A config is six nested dataclasses (model, loss, optim, data, train, distortion), built from
a mapping
(:func:`from_dict`; YAML files are read by :mod:`iicnet.formats.config_file`).
Every field is checked on load; a bad value raises :class:`ConfigError` naming the field
(``model.blocks``) and what was wrong. A field's type (its annotation), bounds (:func:`knob`)
and meaning (the docstring under it) are declared together, on the field. A config fully
determines a model: two models built from equal configs have the same architecture and
parameter names, whose shapes :func:`shapes` derives.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal


class ConfigError(ValueError):
    """A config value is missing, unknown or out of range; the message names the field."""


DEFAULT_UPPER = 10**10
"""Upper bound of a numeric field that names none (and the negative of every field's lower
limit), so no size is ever unbounded; a number beyond a bound is a typo or an attack, not an
experiment."""

LOWER = {"positive": "must be positive", "non-negative": "must not be negative",
         "unit": "must lie in [0, 1)", "unit-or-one": "must lie in [0, 1)"}
"""The lower rules a field may name, and how a value that breaks one is described
(``unit-or-one`` also allows exactly 1)."""


MAX_CROP = 8192
"""The largest ``data.crop``: evaluating with it scores whole frames up to this size."""


def knob(default: Any, *, upper: float = DEFAULT_UPPER, lower: str | None = None,
         legacy: dict[bool, str] | None = None) -> Any:
    """A config field with its rules beside it (its type is the annotation, its meaning the
    docstring under it): ``upper`` the inclusive upper bound, ``lower`` one of
    :data:`LOWER`, ``legacy`` what the booleans of a field that was once a boolean mean now."""
    if lower is not None and lower not in LOWER:
        raise ValueError(f"lower: {lower!r} is not one of {', '.join(LOWER)}")
    return field(default=default, metadata={"upper": upper, "lower": lower, "legacy": legacy})


@dataclass
class ModelConfig:
    """Architecture. Defaults are the published video K=5 design."""

    num_images: int = knob(5, upper=64, lower="positive")
    """K: how many images go into one embedding."""
    image_channels: int = knob(3, upper=16, lower="positive")
    """C: channels of each input image."""
    embed_channels: int = knob(3, upper=16, lower="positive")
    """C_e: channels of the embedding image (1 for the grayscale task)."""
    downscale: Literal["none", "haar", "squeeze"] = "none"
    """Invertible downscaling by 2 before the coupling blocks (Haar wavelet or 2x2 squeeze)."""
    order: Literal["ref", "hl"] = "ref"
    """Channel order after downscaling: the reference's sub-bands first, or all low bands first."""
    blocks: int = knob(10, upper=256, lower="positive")
    """Number of coupling blocks."""
    nf: int = knob(64, upper=4096, lower="positive")
    """Feature width of the relation module."""
    growth: int = knob(32, upper=4096, lower="positive")
    """Growth rate of every dense block."""
    clamp: float = knob(1.0, upper=100.0, lower="non-negative")
    """Scale of the centred sigmoid in the affine coupling (eq. 4)."""
    relation_residual_scale: float = knob(0.2, upper=100.0)
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

    lambda_emb: float = knob(1.0, upper=1e6, lower="non-negative")
    lambda_freq: float = knob(0.001, upper=1e6, lower="non-negative")
    lambda_res: float = knob(3.0, upper=1e6, lower="non-negative")
    charbonnier_eps: float = knob(1e-6, upper=1.0, lower="positive")
    frame_balance: float = knob(0.0, upper=1.0, lower="non-negative")
    """0 as published; up to 1: weigh each image's restoration term by its share of the
    error (:func:`iicnet.model.losses.restoration_loss`)."""


@dataclass
class OptimConfig:
    """Adam with a multi-step schedule, as published."""

    lr: float = knob(2e-4, upper=10.0, lower="positive")
    beta1: float = knob(0.9, lower="unit")
    beta2: float = knob(0.999, lower="unit")
    weight_decay: float = knob(1e-5, upper=1.0, lower="non-negative")
    grad_clip: float = knob(10.0, upper=1e9, lower="non-negative")
    milestones: list[int] = field(default_factory=lambda: [100_000, 200_000, 300_000, 400_000])
    gamma: float = knob(0.5, lower="unit-or-one")


@dataclass
class DataConfig:
    """What a training sample is: the task, its parameters, crops and batching."""

    task: str = "video"
    """Task name, see ``iicnet.tasks``."""
    step: int = knob(5, upper=10_000, lower="positive")
    """Frame step between the K frames of a video window."""
    scale: int = 2
    """Zoom factor of the dual-view task (2, 4 or 8)."""
    matte: bool = False
    """Multi-layer task: add the alpha matte as a fourth image."""
    crop: int = knob(144, upper=MAX_CROP, lower="positive")
    """Side of the random training crop (validation uses centre crops of this size)."""
    batch_size: int = knob(2, upper=4096, lower="positive")
    shuffle_buffer: int = knob(256, upper=1_000_000, lower="positive")
    loader_workers: int = knob(2, upper=256, lower="non-negative")


@dataclass
class TrainConfig:
    """The run: length, cadence of validation, checkpoints and logging."""

    steps: int = knob(500_000, upper=10**10, lower="positive")
    val_every: int = knob(1000, upper=10**10, lower="positive")
    val_crop: int = knob(0, upper=MAX_CROP, lower="non-negative")
    """What validation scores, every ``val_every`` steps: ``0`` the full frames of the
    validation split (each cut to the model's multiple, embedded and restored tile by tile
    as ``iicnet embed`` and ``iicnet restore`` do), N its centre crops of N pixels. Scored
    by the code of ``iicnet eval``; registered versions record which (:attr:`val_measure`),
    and an alias moves on a comparison of like with like only."""
    val_items: int = knob(0, upper=10**9, lower="non-negative")
    """Validate on the first N items of the validation split, in shard order, as ``iicnet
    eval --split val --limit N`` scores them (0: every item)."""
    checkpoint_every: int = knob(5000, upper=10**10, lower="positive")
    log_every: int = knob(100, upper=10**10, lower="positive")
    seed: int = knob(0, upper=2**63 - 1, lower="non-negative")
    amp: Literal["auto", "gpu", "bf16", "off"] = knob("gpu", legacy={True: "gpu", False: "off"})
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

    @property
    def val_measure(self) -> str:
        """What validation scores, in words: ``full frames`` or ``centre crops of N``."""
        what = f"centre crops of {self.val_crop}" if self.val_crop else "full frames"
        n = self.val_items
        return f"{what}, first {n} item{'s' * (n != 1)}" if n else what


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


def _check_value(path: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
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


def _legacy(f: dataclasses.Field, value: Any) -> Any:
    """An old boolean of a field that is one no longer, as the value it means now."""
    legacy = f.metadata.get("legacy")
    return legacy[value] if legacy and isinstance(value, bool) else value


def _build_section(name: str, cls: type, raw: Any) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a mapping of fields, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    known = set(fields)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{name}.{unknown[0]}: unknown field (known: {', '.join(sorted(known))})"
        )
    values = {k: _check_value(f"{name}.{k}", _legacy(fields[k], v), hints[k])
              for k, v in raw.items()}
    return cls(**values)


MAX_PARAMETERS = 1 << 30
"""Largest model a config may describe: 2**30 parameters, 4 GiB of float32 weights alone
(the published design has about 6.8 million)."""



def _rules(cfg: Config) -> Iterator[tuple[str, Any, dataclasses.Field]]:
    """``(section.field, value, its dataclass field)`` of every field, in declaration order."""
    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        for f in dataclasses.fields(values):
            yield f"{section.name}.{f.name}", getattr(values, f.name), f


def _check_bounds(cfg: Config) -> None:
    """Every number finite (floats are checked as they are read), at most its field's
    ``upper`` and within its ``lower`` rule (all positive ones first, then the others)."""
    for path, value, f in _rules(cfg):
        limit = f.metadata.get("upper", DEFAULT_UPPER)
        for i, item in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(item, bool) or not isinstance(item, int | float):
                continue
            where = f"{path}[{i}]" if isinstance(value, list) else path
            if item > limit:
                raise ConfigError(f"{where}: {_show(item)} exceeds the limit of {limit:g}")
            if item < -DEFAULT_UPPER:
                raise ConfigError(f"{where}: {_show(item)} is below the limit of "
                                  f"{-DEFAULT_UPPER:g}")
    for rule in LOWER:
        for path, value, f in _rules(cfg):
            if f.metadata.get("lower") == rule and not _meets(rule, value):
                raise ConfigError(f"{path}: {LOWER[rule]}, got {value!r}")


def _meets(rule: str, value: float) -> bool:
    if rule == "positive":
        return value > 0
    if rule == "non-negative":
        return value >= 0
    return 0 <= value < 1 or (rule == "unit-or-one" and value == 1)


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
    channels, split = shapes(m).channels, shapes(m).split
    block = (_dense_parameters(channels - split, split, g)
             + 2 * _dense_parameters(split, channels - split, g))
    downscale = channels * channels if m.downscale != "none" else 0
    return 2 * relation + m.blocks * block + downscale


def _validate(cfg: Config) -> None:
    m, o, d = cfg.model, cfg.optim, cfg.data
    _check_bounds(cfg)
    if sorted(o.milestones) != o.milestones:
        raise ConfigError(f"optim.milestones: must be increasing, got {o.milestones!r}")
    total = shapes(m).channels
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
    if d.crop % shapes(m).scale:
        raise ConfigError(f"data.crop: {d.crop} is not a multiple of the downscaling factor 2")
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


@dataclass(frozen=True)
class Shapes:
    """The architecture's shapes as they follow from a :class:`ModelConfig`: the one place
    they are derived (the network, :func:`parameter_count` and the importer of official
    weights all read them here)."""

    scale: int
    """Spatial factor of the invertible downscaling: 2, or 1 without it."""
    channels: int
    """Channels entering the coupling blocks: K * C * scale**2."""
    split: int
    """Channel index m~ where each coupling block splits them (as in the authors' code): the
    embedding's channels (its sub-bands with downscaling and order ``ref``), or every
    image's low band (order ``hl``)."""


def shapes(m: ModelConfig) -> Shapes:
    """The :class:`Shapes` of ``m``."""
    scale = 1 if m.downscale == "none" else 2
    if m.downscale == "none" or m.order == "ref":
        split = m.embed_channels * scale**2
    else:
        split = m.num_images * m.image_channels
    return Shapes(scale, m.num_images * m.image_channels * scale**2, split)


def split_point(m: ModelConfig) -> int:
    """Channel index m~ where each coupling block splits its input (:attr:`Shapes.split`)."""
    return shapes(m).split


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
