"""What runs the network: PyTorch itself, or OpenVINO on the CPU with the same weights.

Both engines take and give what :meth:`IICNet.encode` / :meth:`IICNet.decode` do: uint8
``(1, K, C, H, W)`` images <-> uint8 ``(1, C_e, H/s, W/s)`` embeddings. The OpenVINO engine
runs the float passes (``embed`` and ``restore``) as OpenVINO models and rounds their output
exactly as the torch model does, so the two differ only by float rounding inside the network
(about 1e-6; see ``tests/test_engine.py``).

Each direction is exported once per model through ``torch.export`` and OpenVINO's converter,
with height and width left dynamic so that one conversion serves every tile size (each size
is then compiled for itself, in a fraction of a second), and kept in the user cache
(``$IICNET_CACHE/openvino``, default ``~/.cache/iicnet/openvino``) under a key made of the
weights' fingerprint, the model's configuration, the OpenVINO version and the export path;
the files are written under a temporary name and renamed, so a cache entry is whole or
absent. A cache that cannot be written (a full disk, a quota, a read-only home) costs only
speed: one warning names the folder and the reason, and the converted model is used from
memory for the rest of the process. OpenVINO is an optional extra (``pip install
'iicnet[fast]'``); asking for it without it installed runs torch after a one-line note.
Only this module imports OpenVINO.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import hashlib
import json
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from iicnet.formats.imagefiles import InputError
from iicnet.model import IICNet
from iicnet.model.modules.downscale import InvertibleDownscale
from iicnet.model.network import to_uint8

ENGINES = ("auto", "torch", "openvino")
PRECISIONS = ("f32", "bf16")
DEFAULT_PRECISION = "f32"
"""OpenVINO's inference precision unless ``$IICNET_OPENVINO_PRECISION`` names another."""
log = logging.getLogger(__name__)


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def cache_root() -> Path:
    """``$IICNET_CACHE/openvino``, else ``~/.cache/iicnet/openvino``."""
    base = os.environ.get("IICNET_CACHE") or Path.home() / ".cache" / "iicnet"
    return Path(base) / "openvino"


def choose(engine: str, device: torch.device) -> str:
    """The engine that will run. ``auto`` is ``$IICNET_ENGINE`` when set, else OpenVINO on
    the CPU when it is installed (faster there; ``bench/inference.py --cli --engines torch
    openvino`` measures it) and torch elsewhere; an explicit ``openvino`` without OpenVINO
    installed falls back to torch with a note."""
    if engine not in ENGINES:
        raise InputError(f"--engine {engine}: expected one of {', '.join(ENGINES)}")
    if engine == "auto" and os.environ.get("IICNET_ENGINE"):
        engine = os.environ["IICNET_ENGINE"]
        if engine not in ENGINES:
            raise InputError(f"IICNET_ENGINE={engine}: expected one of {', '.join(ENGINES)}")
    if engine == "torch" or (engine == "auto" and device.type != "cpu"):
        return "torch"
    if device.type != "cpu":
        raise InputError(f"--engine openvino runs on the CPU, not {device}; use --device cpu "
                         "or --engine torch")
    if openvino_available():
        return "openvino"
    if engine == "openvino":
        log.warning("iicnet: note: OpenVINO is not installed (pip install 'iicnet[fast]'); "
                    "running torch instead")
    return "torch"


class TorchEngine:
    """The model itself."""

    name = "torch"

    def __init__(self, model: IICNet):
        self.model = model

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode(images)

    def decode(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.model.decode(embedding)


class _Direction(nn.Module):
    """One float pass of the model as a module of its own, for conversion."""

    def __init__(self, model: IICNet, direction: str):
        super().__init__()
        self.model, self.direction = model, direction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed(x) if self.direction == "embed" else self.model.restore(x)


class OpenVinoEngine:
    """The model's two float passes compiled by OpenVINO for the CPU.

    ``precision`` is OpenVINO's inference precision: ``f32`` (the default) or ``bf16`` (on
    CPUs with native bf16; see ``bench/results/inference-bf16-cpu.json`` for what it changes).
    Each direction is compiled once per input shape: OpenVINO's CPU plugin ran a model whose
    sizes are fixed at compile time about 8% faster than the same model with dynamic sizes
    (8.5 against 9.2 s for one 480x443 window of the published video K=5 design, three
    interleaved rounds), and compiling one takes about 0.3 s against seconds for a tile.
    """

    name = "openvino"
    EXPORT = "torch.export"
    """How the cached models were made; part of the cache key."""

    def __init__(self, model: IICNet, fingerprint: str, cache: Path | None = None,
                 precision: str = "f32"):
        import openvino as ov

        if precision not in PRECISIONS:
            raise InputError(f"OpenVINO precision {precision}: expected one of "
                             f"{', '.join(PRECISIONS)}")
        self.model, self.fingerprint, self.precision = model, fingerprint, precision
        self.core = ov.Core()
        self.folder = (cache or cache_root()) / self.key(model, fingerprint, ov.get_version())
        self._read: dict[str, object] = {}
        self._uncached: dict[str, object] = {}
        self._compiled: dict[tuple[str, tuple[int, ...]], object] = {}

    @classmethod
    def key(cls, model: IICNet, fingerprint: str, version: str) -> str:
        config = json.dumps(dataclasses.asdict(model.config), sort_keys=True, default=str)
        digest = hashlib.sha256(f"{config}|{version}|{cls.EXPORT}".encode()).hexdigest()[:12]
        return f"{fingerprint}-{digest}"

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"images must be uint8 (0-255), got {images.dtype}")
        return to_uint8(self.run("embed", images.float() / 255))

    def decode(self, embedding: torch.Tensor) -> torch.Tensor:
        if embedding.dtype != torch.uint8:
            raise TypeError(f"embedding must be uint8 (0-255), got {embedding.dtype}")
        return to_uint8(self.run("restore", embedding.float() / 255))

    def run(self, direction: str, x: torch.Tensor) -> torch.Tensor:
        """The float pass ``direction`` (embed or restore) on ``x``."""
        compiled = self._compiled.get((direction, tuple(x.shape)))
        if compiled is None:
            compiled = self._compiled[direction, tuple(x.shape)] = self._compile(direction,
                                                                                 x.shape)
        result = compiled(x.contiguous().numpy())
        return torch.from_numpy(result[0].copy())

    def _compile(self, direction: str, shape: torch.Size):
        import openvino as ov

        graph = self._read.get(direction)
        if graph is None:
            exported = self.exported(direction)
            graph = self._read[direction] = (self.core.read_model(exported)
                                             if isinstance(exported, Path) else exported)
        graph.reshape(ov.PartialShape(list(shape)))  # compile_model keeps its own copy
        return self.core.compile_model(graph, "CPU",
                                       {"INFERENCE_PRECISION_HINT": self.precision})

    def exported(self, direction: str):
        """The OpenVINO model of one direction (height and width dynamic), converted on
        first use through ``torch.export`` and cached: the cached file's path, or the
        converted model itself when the cache cannot be written."""
        path = self.folder / f"{direction}.xml"
        if path.is_file() and path.with_suffix(".bin").is_file():
            return path
        if direction in self._uncached:
            return self._uncached[direction]
        import openvino as ov

        from iicnet.storage.atomic import adding

        m = self.model.config
        if direction == "embed":
            example = torch.rand(1, m.num_images, m.image_channels, 64, 64)
        else:
            side = 64 // self.model.scale
            example = torch.rand(1, m.embed_channels, side, side)
        sizes = {example.dim() - 2: torch.export.Dim.AUTO, example.dim() - 1: torch.export.Dim.AUTO}
        module = _Direction(_frozen(self.model), direction)
        with torch.no_grad(), warnings.catch_warnings():
            # torch 2.13 deep-copies its own pytree leaf specs while decomposing the exported
            # program (which OpenVINO's converter asks for), and constructing a copy trips
            # the deprecation it put on the LeafSpec class itself: nothing in this code, or
            # in what a user passes, uses the deprecated class.
            warnings.filterwarnings("ignore", category=FutureWarning,
                                    message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
            program = torch.export.export(module, (example,), dynamic_shapes={"x": sizes})
            converted = ov.convert_model(program)
        converted.reshape(ov.PartialShape([*example.shape[:-2], -1, -1]))
        try:
            with adding(self.folder) as tmp:
                ov.save_model(converted, tmp / path.name, compress_to_fp16=False)
        except (OSError, RuntimeError) as exc:  # OpenVINO's writer raises RuntimeError
            if not self._uncached:
                log.warning("iicnet: warning: OpenVINO cache %s: cannot write it (%s); the "
                            "converted model is kept in memory, and the next command "
                            "converts it again", self.folder, written_why(exc, self.folder))
            self._uncached[direction] = converted
            return converted
        return path


def written_why(exc: BaseException, folder: Path) -> str:
    """The reason for a failed write into ``folder``: the system's words where the error
    has them, else (OpenVINO's writer says only ``iostream error``) a full disk when the
    disk under ``folder`` has less than 64 KiB left, else the error's first line."""
    why = getattr(exc, "strerror", None)
    if why:
        return why
    place = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
    stat = os.statvfs(place)
    if stat.f_bavail * stat.f_frsize < 1 << 16:
        return f"{os.strerror(errno.ENOSPC)}, {stat.f_bavail * stat.f_frsize // 1024} KiB free"
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _frozen(model: IICNet) -> IICNet:
    """An evaluating CPU copy of ``model`` with its inverse mixing matrices precomputed."""
    frozen = copy.deepcopy(model).cpu().eval()
    for module in frozen.modules():
        if isinstance(module, InvertibleDownscale):
            module.freeze()
    return frozen


def make(engine: str, model: IICNet, device: torch.device, fingerprint: str
         ) -> TorchEngine | OpenVinoEngine:
    """The engine :func:`choose` picks, ready to run ``model``."""
    if choose(engine, device) == "openvino":
        precision = os.environ.get("IICNET_OPENVINO_PRECISION") or DEFAULT_PRECISION
        if precision not in PRECISIONS:
            raise InputError(f"IICNET_OPENVINO_PRECISION={precision}: expected one of "
                             f"{', '.join(PRECISIONS)}")
        return OpenVinoEngine(model, fingerprint, precision=precision)
    return TorchEngine(model)
