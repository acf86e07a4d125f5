"""Checkpoints in the official IICNet format (the authors' released models) -> our model.

The authors' training script saves ``torch.save(net.state_dict())`` of
``ModuleList([rel, down, block, cs, quantization])``: keys such as
``0.forw_rel.DB_heads.0.conv1.weight`` (relation module), ``1.operations.1.weight``
(the invertible 1x1 convolution of the downscaling), ``2.operations.7.G.conv5.bias``
(coupling block 7), with a ``module.`` prefix on every key when the model was wrapped in
DataParallel / DistributedDataParallel. The channel squeeze and the quantisation have no
weights.

:func:`read_state` reads such a file with torch's weights-only loader: a file holding
anything but tensors and containers is refused and nothing in it runs.
:func:`infer_model` reads the architecture off the tensor shapes, :func:`published_matches`
names the published configs (``configs/*.yaml``) with that architecture, and
:func:`convert` maps every key onto our layout, checking every key and shape.

Colour order. The official code reads images with OpenCV, so its weights expect BGR
pixels. The import rewrites the weights so that the model takes and gives RGB and computes
exactly what the official model computes on the same files (:func:`rgb_permutation`):
the relation modules see each image's channels reversed, the 1x1 convolution of the
downscaling absorbs the new band order, and the coupling blocks and the channel squeeze
work on channels reversed within each group of three, which makes the embedding RGB too.
Where the coupling split cuts an image's three channels apart (the grayscale model: no
downscaling, a 1-channel embedding, split after channel 0), no weight permutation can do
it; that model is imported as it is with ``model.channel_order: bgr``, and
:mod:`iicnet.convert` reverses the channels around it.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from iicnet.formats import config_file
from iicnet.model import IICNet
from iicnet.model.config import Config, ConfigError, ModelConfig, from_dict, shapes
from iicnet.storage.objects import sha256

PUBLISHED = Path(__file__).resolve().parents[2] / "configs"
"""The published configs: the repository's ``configs`` folder."""

ARCHITECTURE = ("num_images", "image_channels", "embed_channels", "downscale", "order",
                "blocks", "nf", "growth")
"""The model fields the tensors (and a published config) pin down."""

OFFICIAL_NAMES = {
    "st-01": "video-k5", "st-03": "video-k5", "st-04": "video-k7", "st-05": "video-k9",
    "st-06": "video-k3-x2", "st-07": "video-k5-x2", "mono-01": "stereo", "mono-03": "stereo",
    "dual-01": "dualview-x2", "dual-02": "dualview-x4", "dual-03": "dualview-x8",
    "hide-01": "hide-k2", "supp-gray-01": "gray", "supp-sr-01": "rescale-x2",
}
"""The authors' experiment names (``experiments/<name>/models/latest.pth``) and our config
with the same architecture and task; used only to choose among configs that fit the
tensors equally well (the weights of dual-view x2 and x4 look alike)."""

HAAR_KEY = "1.operations.0.haar_weights"

# Official key <-> our key; {k}: a module index kept as is, {i}/{j}: a dense-block conv,
# conv{i} (1-based) there and convs.{j} (0-based) here; {t}: weight or bias.
_RELATION = [
    ("DB_heads.{k}.conv{i}.{t}", "head_dense.blocks.{k}.convs.{j}.{t}"),
    ("conv_1x1_heads.{k}.{t}", "head_proj.{k}.{t}"),
    ("conv_merges.{k}.{t}", "tail_mix.{k}.{t}"),
    ("conv_1x1_tails.{k}.{t}", "tail_proj.{k}.{t}"),
    ("DB_tails.{k}.conv{i}.{t}", "tail_dense.blocks.{k}.convs.{j}.{t}"),
]
_TABLE = [
    *((f"0.forw_rel.{a}", f"relation.{b}") for a, b in _RELATION),
    *((f"0.back_rel.{a}", f"inverse_relation.{b}") for a, b in _RELATION),
    ("1.operations.1.weight", "downscale.mix"),
    ("2.operations.{k}.{n}.conv{i}.{t}", "coupling.blocks.{k}.{n}.convs.{j}.{t}"),
]
_GROUPS = {"k": r"(?P<k>\d+)", "i": r"(?P<i>[1-5])", "j": r"(?P<j>[0-4])",
           "t": r"(?P<t>weight|bias)", "n": r"(?P<n>[FGH])"}


class OfficialFormatError(ValueError):
    """An official checkpoint cannot be read or does not fit; the message names the file,
    the key and what would fit."""


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{\w\})", template)
    return re.compile("^" + "".join(_GROUPS[p[1]] if p.startswith("{") else re.escape(p)
                                    for p in parts) + "$")


_FORWARD = [(_pattern(a), b) for a, b in _TABLE]
_BACKWARD = [(_pattern(b), a) for a, b in _TABLE]


def _translate(key: str, table: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, template in table:
        found = pattern.match(key)
        if found:
            groups = found.groupdict()
            if "i" in groups:
                groups["j"] = str(int(groups["i"]) - 1)
            elif "j" in groups:
                groups["i"] = str(int(groups["j"]) + 1)
            return template.format(**groups)
    return None


def our_key(official: str) -> str | None:
    """``0.forw_rel.DB_heads.0.conv1.weight`` -> ``relation.head_dense.blocks.0.convs.0.weight``
    (None for a key we have no place for)."""
    return _translate(official, _FORWARD)


def official_key(ours: str) -> str:
    """The inverse of :func:`our_key`."""
    found = _translate(ours, _BACKWARD)
    if found is None:
        raise KeyError(ours)
    return found


# -- reading ---------------------------------------------------------------------------

def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of an official checkpoint (legacy or zip serialisation), ``module.``
    prefixes removed. Only tensors and containers are accepted; nothing in the file runs."""
    path = Path(path)
    if not path.is_file():
        raise OfficialFormatError(f"{path}: no such file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise OfficialFormatError(
            f"{path}: refused: it holds something other than tensors and containers, which "
            f"a checkpoint never needs; nothing in it was run ({first[:200]})"
        ) from exc
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OfficialFormatError(f"{path}: not a readable torch checkpoint (truncated or "
                                  f"damaged: {reason[:200]})") from exc
    if not isinstance(raw, dict) or not raw:
        raise OfficialFormatError(f"{path}: expected a state dict (names -> tensors), got "
                                  f"{type(raw).__name__}")
    prefixed = [k for k in raw if isinstance(k, str) and k.startswith("module.")]
    if prefixed and len(prefixed) != len(raw):
        plain = next(k for k in raw if not (isinstance(k, str) and k.startswith("module.")))
        raise OfficialFormatError(f"{path}: key {plain!r} lacks the 'module.' prefix that "
                                  f"the other keys carry ({prefixed[0]!r})")
    state = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise OfficialFormatError(f"{path}: entry {key!r} is a {type(value).__name__}, "
                                      "not a tensor: not an official IICNet state dict")
        state[key.removeprefix("module.") if prefixed else key] = value
    return state


# -- the architecture ------------------------------------------------------------------

@dataclass
class Inferred:
    """The model fields read off the tensors, and what they cannot tell."""

    fields: dict[str, object]
    notes: list[str] = field(default_factory=list)


def _shape(state: dict[str, torch.Tensor], key: str, where: str) -> tuple[int, ...]:
    if key not in state:
        raise OfficialFormatError(f"{where}: no {key}; not an IICNet checkpoint of the "
                                  "official format (or one without a relation module, "
                                  "which this network always has)")
    return tuple(state[key].shape)


def _count(state: dict[str, torch.Tensor], prefix: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.",
                                                                k))}
    return max(found) + 1 if found else 0


def infer_model(state: dict[str, torch.Tensor], where: str = "checkpoint") -> Inferred:
    """K, the image channels, the block count, the downscaling and its channel order, the
    embedding channels, nf and growth, from the tensor shapes."""
    growth, channels = _shape(state, "0.forw_rel.DB_heads.0.conv1.weight", where)[:2]
    nf = _shape(state, "0.forw_rel.conv_1x1_heads.0.weight", where)[0]
    k = _count(state, "0.forw_rel.DB_heads.")
    blocks = _count(state, "2.operations.")
    if blocks == 0:
        raise OfficialFormatError(f"{where}: no coupling blocks (2.operations.*)")
    split = _shape(state, "2.operations.0.F.conv5.weight", where)[0]
    notes: list[str] = []
    fields: dict[str, object] = {"num_images": k, "image_channels": channels,
                                 "blocks": blocks, "nf": nf, "growth": growth}
    mix = state.get("1.operations.1.weight")
    if mix is None:
        if any(key.startswith("1.") for key in state):
            raise OfficialFormatError(f"{where}: downscaling without its invertible 1x1 "
                                      "convolution (1.operations.1.weight) is not a published "
                                      "design and this network cannot hold it")
        fields.update(downscale="none", order="ref", embed_channels=split)
        return Inferred(fields, notes)
    fields["downscale"] = "haar" if HAAR_KEY in state else "squeeze"
    # What each order's split would be for these images (iicnet.model.config.shapes): order
    # hl splits at every image's low band; order ref at the embedding's sub-bands, per
    # embedding channel.
    hl = shapes(ModelConfig(num_images=k, image_channels=channels,
                            downscale=fields["downscale"], order="hl")).split
    per_channel = shapes(ModelConfig(num_images=k, image_channels=channels, embed_channels=1,
                                     downscale=fields["downscale"], order="ref")).split
    if split == hl:
        fields.update(order="hl", embed_channels=3 if channels >= 3 else channels)
        notes.append(f"embedding channels {fields['embed_channels']}: with order hl the "
                     "weights do not record them (--set model.embed_channels=... otherwise)")
        if split % per_channel == 0:
            notes.append(f"order hl and order ref with {split // per_channel} embedding "
                         "channels have the same shapes here; pass --set model.order=ref if "
                         "it was ref")
    elif split % per_channel == 0:
        fields.update(order="ref", embed_channels=split // per_channel)
    else:
        raise OfficialFormatError(f"{where}: coupling split {split} fits neither order hl "
                                  f"({hl}) nor order ref ({per_channel} x embedding channels)")
    return Inferred(fields, notes)


def published() -> dict[str, Config]:
    """``{name: Config}`` of every published config file (none when the repository's
    ``configs`` folder is not here, as in an installed package)."""
    found = {}
    for path in sorted(PUBLISHED.glob("*.yaml")) if PUBLISHED.is_dir() else []:
        try:
            found[path.stem] = config_file.load(path)
        except ConfigError:
            continue
    return found


def architecture(model: ModelConfig) -> dict[str, object]:
    return {name: getattr(model, name) for name in ARCHITECTURE}


def published_matches(fields: dict[str, object], configs: dict[str, Config] | None = None,
                      ignore: tuple[str, ...] = ()) -> list[str]:
    """Names of the published configs whose architecture equals ``fields`` (except the
    fields in ``ignore``)."""
    configs = published() if configs is None else configs
    return [name for name, cfg in configs.items()
            if all(architecture(cfg.model)[f] == v for f, v in fields.items()
                   if f in ARCHITECTURE and f not in ignore)]


def describe_fit(fields: dict[str, object], configs: dict[str, Config] | None = None) -> str:
    """Which published config the tensors fit, in words, for messages."""
    configs = published() if configs is None else configs
    exact = published_matches(fields, configs)
    summary = (f"K={fields['num_images']}, {fields['blocks']} blocks, downscaling "
               f"{fields['downscale']}" + (f" (order {fields['order']})"
                                           if fields["downscale"] != "none" else "")
               + f", {fields['embed_channels']} embedding channel(s)")
    if exact:
        return f"the tensors fit {', '.join(f'configs/{n}.yaml' for n in exact)} ({summary})"
    near = published_matches(fields, configs, ignore=("blocks",))
    if near:
        return (f"the tensors fit no published config exactly ({summary}); nearest: "
                f"configs/{near[0]}.yaml with --set model.blocks={fields['blocks']}")
    return f"the tensors fit no published config ({summary})"


def hinted_name(path: str | Path) -> str | None:
    """The authors' experiment name in the checkpoint's path (``st-06`` in
    ``experiments/st-06/models/latest.pth`` or ``st-06.pth``), if any."""
    for part in reversed(Path(path).parts):
        for name in sorted(OFFICIAL_NAMES, key=len, reverse=True):
            if part == name or part.startswith((name + ".", name + "-", name + "_")):
                return name
    return None


def infer_config(state: dict[str, torch.Tensor], path: str | Path
                 ) -> tuple[Config, str | None, list[str]]:
    """The full config for the tensors: the architecture they show, and everything else
    (task, step, loss weights, ...) from the published config they fit (the one the file
    name points to when several fit). Returns ``(config, published name, notes)``."""
    where = str(path)
    inferred = infer_model(state, where)
    configs = published()
    exact = published_matches(inferred.fields, configs)
    near = exact or published_matches(inferred.fields, configs, ignore=("blocks",))
    hint = OFFICIAL_NAMES.get(hinted_name(path) or "")
    notes = list(inferred.notes)
    if near:
        chosen = hint if hint in near else near[0]
        if len(near) > 1:
            notes.append(f"the tensors fit {', '.join(near)} alike (the weights do not "
                         f"record the task); using {chosen}: pass --config to choose")
        raw = configs[chosen].to_dict()
    else:
        chosen, raw = None, Config().to_dict()
        notes.append(describe_fit(inferred.fields, configs) + "; task and training settings "
                     "are the defaults: pass --config")
    raw["model"].update(inferred.fields)
    try:
        config = from_dict(raw, source=where)
    except ConfigError as exc:
        raise OfficialFormatError(f"{where}: the inferred model is not valid ({exc}); pass "
                                  "--config") from exc
    return config, (chosen if exact else None), notes


# -- the mapping -----------------------------------------------------------------------

def convert(state: dict[str, torch.Tensor], config: Config, where: str = "checkpoint"
            ) -> dict[str, torch.Tensor]:
    """Our state dict for ``config`` from the official one, every key and shape checked.
    Raises :class:`OfficialFormatError` naming the first offending key, both shapes, and
    the published config the tensors do fit."""
    expected = IICNet(config).state_dict()

    def fit() -> str:
        try:
            return describe_fit(infer_model(state, where).fields)
        except OfficialFormatError as exc:
            return f"the tensors fit no model this network builds ({exc})"

    ours: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key == HAAR_KEY:
            if config.model.downscale != "haar":
                raise OfficialFormatError(f"{where}: key {key!r} holds Haar filters, but the "
                                          f"config given ({_summary(config)}) has none; "
                                          f"{fit()}")
            _check_haar(tensor, config, where)
            continue
        target = our_key(key)
        if target is None:
            raise OfficialFormatError(f"{where}: key {key!r} has no place in this network "
                                      f"(not an official IICNet key); {fit()}")
        if target not in expected:
            raise OfficialFormatError(f"{where}: key {key!r} does not exist in the model of "
                                      f"the config given ({_summary(config)}); {fit()}")
        want = tuple(expected[target].shape)
        if tuple(tensor.shape) != want:
            raise OfficialFormatError(
                f"{where}: key {key!r} has shape {tuple(tensor.shape)}, the config given "
                f"({_summary(config)}) needs {want}; {fit()}")
        if not tensor.is_floating_point():
            raise OfficialFormatError(f"{where}: key {key!r} holds {tensor.dtype}, not "
                                      "floating-point weights")
        ours[target] = tensor.detach().to(expected[target].dtype).clone()
    missing = [k for k in expected if k not in ours]
    if missing:
        raise OfficialFormatError(
            f"{where}: key {official_key(missing[0])!r} is missing ({len(missing)} of "
            f"{len(expected)} weights of the config given ({_summary(config)}) are); {fit()}")
    if config.model.downscale == "haar" and HAAR_KEY not in state:
        raise OfficialFormatError(f"{where}: no {HAAR_KEY!r}; the config given "
                                  f"({_summary(config)}) uses Haar downscaling; {fit()}")
    return ours


def _summary(config: Config) -> str:
    m = config.model
    down = "none" if m.downscale == "none" else f"{m.downscale}, order {m.order}"
    return f"K={m.num_images}, {m.blocks} blocks, downscaling {down}"


def _check_haar(tensor: torch.Tensor, config: Config, where: str) -> None:
    fixed = IICNet(config).downscale.haar
    if tuple(tensor.shape) != tuple(fixed.shape) or not torch.equal(tensor.to(fixed.dtype),
                                                                   fixed):
        raise OfficialFormatError(f"{where}: key {HAAR_KEY!r} does not hold the standard "
                                  "Haar filters this network uses")


# -- colour order ----------------------------------------------------------------------

def rgb_permutation(model: ModelConfig) -> tuple[list[int], list[int]] | None:
    """``(pi, q)`` that make the official (BGR) weights an RGB model, or None where no
    permutation can (the coupling split would cut an image's channels apart).

    ``pi[j]``: the official channel after the downscaling's band ordering that our channel
    ``j`` holds; ``q[i]``: the official channel that our coupling channel ``i`` holds (the
    channels reversed within each group of three, so the embedding comes out RGB).
    """
    c, k = model.image_channels, model.num_images
    n = k * c
    rev = list(range(c))[::-1]
    images = [g * c + rev[i] for g in range(k) for i in range(c)]
    if model.downscale == "none":
        pi, q = list(range(n)), images
    else:
        def index(image: int, band: int, channel: int) -> int:
            if model.order == "ref":
                return image * 4 * c + band * c + channel
            return band * n + image * c + channel

        pi = [0] * 4 * n
        for image in range(k):
            for band in range(4):
                for channel in range(c):
                    pi[index(image, band, channel)] = index(image, band, rev[channel])
        e = model.embed_channels
        q = ([g * 3 + 2 - i for g in range(4 * n // 3) for i in range(3)] if e == 3
             else list(range(4 * n)))
    from iicnet.model.config import split_point

    split = split_point(model)
    if sorted(q[:split]) != list(range(split)):
        return None
    return pi, q


def to_rgb(state: dict[str, torch.Tensor], model: ModelConfig
           ) -> dict[str, torch.Tensor] | None:
    """Our (BGR-trained) state dict rewritten to take and give RGB; None where
    :func:`rgb_permutation` finds none. Every result is an exact permutation of weights."""
    if model.image_channels != 3:
        return dict(state)
    found = rgb_permutation(model)
    if found is None:
        return None
    pi, q = found
    out = dict(state)
    rev = [2, 1, 0]

    def dense(prefix: str, inputs: list[int] | None, outputs: list[int] | None) -> None:
        for j in range(5):
            w, b = f"{prefix}.convs.{j}.weight", f"{prefix}.convs.{j}.bias"
            if inputs is not None:
                width = len(inputs)
                out[w] = torch.cat((out[w][:, inputs], out[w][:, width:]), 1)
            if outputs is not None and j == 4:
                out[w], out[b] = out[w][outputs], out[b][outputs]

    for rel in ("relation", "inverse_relation"):
        for g in range(model.num_images):
            dense(f"{rel}.head_dense.blocks.{g}", rev, None)
            dense(f"{rel}.tail_dense.blocks.{g}", None, rev)
    if model.downscale != "none":
        out["downscale.mix"] = out["downscale.mix"][q][:, pi]
    from iicnet.model.config import split_point

    split = split_point(model)
    top, bottom = q[:split], [i - split for i in q[split:]]
    for b in range(model.blocks):
        dense(f"coupling.blocks.{b}.F", bottom, top)
        dense(f"coupling.blocks.{b}.G", top, bottom)
        dense(f"coupling.blocks.{b}.H", top, bottom)
    return {key: value.contiguous() for key, value in out.items()}


# -- the whole import ------------------------------------------------------------------

@dataclass
class Imported:
    """An official checkpoint as our model, and what the import found out."""

    model: IICNet
    config: Config
    sha256: str
    published: str | None
    """The published config whose architecture (and task) it has, if one does exactly."""
    fit: str
    """Which published configs the tensors fit, in words."""
    colour: str
    """How BGR became RGB: ``permuted`` weights, or ``channel_order bgr``."""
    notes: list[str]


def import_checkpoint(path: str | Path, config: Config | None = None,
                      overrides: list[str] | tuple[str, ...] = ()) -> Imported:
    """Read, check and convert an official checkpoint. ``config``: the one to hold it to;
    None infers it from the tensors (:func:`infer_config`). ``overrides``: ``--set``
    assignments applied to either."""
    where = str(path)
    state = read_state(path)
    notes: list[str] = []
    if config is None:
        config, name, notes = infer_config(state, path)
    else:
        name = None
    if overrides:
        config, name = config.override(list(overrides)), None
    if config.model.channel_order != "rgb":
        raise OfficialFormatError(f"{where}: give a config with model.channel_order rgb; the "
                                  "import decides how to handle the official BGR weights")
    ours = convert(state, config, where)
    fields = infer_model(state, where).fields
    if name is None:
        exact = published_matches(architecture(config.model))
        name = next((n for n in exact if published()[n].data.task == config.data.task), None)
    rgb = to_rgb(ours, config.model)
    if rgb is None:
        config = config.override(["model.channel_order=bgr"])
        colour = "channel_order bgr"
        notes.append("the coupling split cuts an image's colour channels apart, so no weight "
                     "permutation makes this model RGB: it keeps the official weights with "
                     "model.channel_order bgr, and iicnet's tools reverse the channels")
    else:
        ours, colour = rgb, "permuted"
    model = IICNet(config)
    model.load_state_dict(ours, strict=True)
    return Imported(model.eval(), config, sha256(path), name, describe_fit(fields), colour,
                    notes)
