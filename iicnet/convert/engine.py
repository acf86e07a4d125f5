"""What runs the network: PyTorch itself, or OpenVINO on the CPU with the same weights.

Both engines take and give what :meth:`IICNet.encode` / :meth:`IICNet.decode` do: uint8
``(1, K, C, H, W)`` images <-> uint8 ``(1, C_e, H/s, W/s)`` embeddings. The OpenVINO engine
runs the float passes (``embed`` and ``restore``) as OpenVINO models and rounds their output
exactly as the torch model does, so the two differ only by float rounding inside the network
(about 1e-6; see ``tests/test_engine.py``).

Each direction is converted once per model, with height and width left dynamic so that one
conversion serves every tile size, and kept in the user cache (``$IICNET_CACHE/openvino``,
default ``~/.cache/iicnet/openvino``) under a key made of the weights' fingerprint, the
model's configuration and the OpenVINO version; the files are written under a temporary
name and renamed, so a cache entry is whole or absent. OpenVINO is an optional extra
(``pip install 'iicnet[fast]'``); asking for it without it installed runs torch after a
one-line note. Only this module imports OpenVINO.
"""

from __future__ import annotations

import dataclasses
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
from iicnet.model.network import to_uint8

ENGINES = ("auto", "torch", "openvino")
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
    """The model's two float passes compiled by OpenVINO for the CPU, in float32."""

    name = "openvino"

    def __init__(self, model: IICNet, fingerprint: str, cache: Path | None = None):
        import openvino as ov

        self.model, self.fingerprint = model, fingerprint
        self.core = ov.Core()
        self.folder = (cache or cache_root()) / self.key(model, fingerprint, ov.get_version())
        self._compiled: dict[str, object] = {}

    @staticmethod
    def key(model: IICNet, fingerprint: str, version: str) -> str:
        config = json.dumps(dataclasses.asdict(model.config), sort_keys=True, default=str)
        digest = hashlib.sha256(f"{config}|{version}".encode()).hexdigest()[:12]
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
        compiled = self._compiled.get(direction)
        if compiled is None:
            compiled = self._compiled[direction] = self.core.compile_model(
                self.exported(direction), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        result = compiled(x.contiguous().numpy())
        return torch.from_numpy(result[0].copy())

    def exported(self, direction: str) -> Path:
        """The OpenVINO model of one direction, converted on first use and cached."""
        path = self.folder / f"{direction}.xml"
        if path.is_file() and path.with_suffix(".bin").is_file():
            return path
        import openvino as ov

        from iicnet.storage.atomic import adding

        m = self.model.config
        if direction == "embed":
            example = torch.rand(1, m.num_images, m.image_channels, 64, 64)
            shape = [1, m.num_images, m.image_channels, -1, -1]
        else:
            side = 64 // self.model.scale
            example = torch.rand(1, m.embed_channels, side, side)
            shape = [1, m.embed_channels, -1, -1]
        module = _Direction(self.model.cpu().eval(), direction)
        # Tracing warns that the network's shape checks become constants; the exported
        # graph takes any size (the dynamic shape above), and the converter checks the image
        # count and pads the sizes before it calls an engine: nothing a user can act on.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            converted = ov.convert_model(module, example_input=example,
                                         input=[ov.PartialShape(shape)])
        with adding(self.folder) as tmp:
            ov.save_model(converted, tmp / path.name, compress_to_fp16=False)
        return path


def make(engine: str, model: IICNet, device: torch.device, fingerprint: str
         ) -> TorchEngine | OpenVinoEngine:
    """The engine :func:`choose` picks, ready to run ``model``."""
    if choose(engine, device) == "openvino":
        return OpenVinoEngine(model, fingerprint)
    return TorchEngine(model)
