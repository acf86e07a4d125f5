"""IICNet: K images -> one embedding image -> K images (paper Fig. 2, eq. 9)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from iicnet.model.config import Config, ModelConfig, shapes
from iicnet.model.modules import (
    ChannelSqueeze,
    CouplingStack,
    InvertibleDownscale,
    JpegDistortion,
    RelationModule,
    quantize,
)
from iicnet.model.modules.recompute import maybe_recompute


@dataclass
class Output:
    """What the training forward returns; all float in [0, 1]-ish."""

    embedding: torch.Tensor
    """(B, C_e, H/s, W/s), before quantisation: the embedding loss is taken on it."""
    quantized: torch.Tensor
    """(B, C_e, H/s, W/s), noise-quantised in training, rounded in evaluation."""
    restored: torch.Tensor
    """(B, K, C, H, W), restored from ``quantized`` (in training, after the distortion stage
    when the config has one)."""


class IICNet(nn.Module):
    """Invertible image conversion network.

    Public face, uint8 at the edge:
      * ``encode(images)``: ``(B, K, C, H, W) uint8 -> (B, C_e, H/s, W/s) uint8``
      * ``decode(embedding)``: ``(B, C_e, H/s, W/s) uint8 -> (B, K, C, H, W) uint8``
      * ``forward(x)``: training pass on floats in [0, 1] -> :class:`Output`.
    s is 2 with invertible downscaling, 1 without. The reference image is first in the stack.
    """

    def __init__(self, config: Config | ModelConfig):
        super().__init__()
        m = dataclasses.replace(config.model if isinstance(config, Config) else config)
        self.config = m
        k, c = m.num_images, m.image_channels
        shape = shapes(m)
        self.scale, channels = shape.scale, shape.channels

        def relation() -> RelationModule:
            return RelationModule(k, c, m.nf, m.growth, m.relation_residual_scale, m.fused)

        self.relation = relation()
        self.downscale = (
            InvertibleDownscale(k, c, m.downscale, m.order) if m.downscale != "none" else None
        )
        self.coupling = CouplingStack(channels, shape.split, m.blocks, m.growth, m.clamp,
                                      m.memory_saving)
        self.squeeze = ChannelSqueeze(channels, m.embed_channels)
        self.inverse_relation = relation()
        dist = config.distortion if isinstance(config, Config) else None
        self.distortion = (JpegDistortion(*dist.quality, dist.rounding)
                           if dist is not None and dist.kind == "jpeg" else None)

    def set_fused(self, fused: bool) -> IICNet:
        """Switch between the fused and the straightforward formulation (same weights)."""
        self.config.fused = fused
        for module in self.modules():
            if module is not self and hasattr(module, "fused"):
                module.fused = fused
        return self

    @property
    def multiple(self) -> int:
        """Height and width of the inputs must be multiples of this."""
        return self.scale

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Float forward pass ``(B, K, C, H, W) -> (B, C_e, H/s, W/s)``, unquantised."""
        b, k, c, h, w = x.shape
        m = self.config
        if (k, c) != (m.num_images, m.image_channels):
            raise ValueError(
                f"expected {m.num_images} images of {m.image_channels} channels, got {k} of {c}"
            )
        if h % self.scale or w % self.scale:
            raise ValueError(f"height and width must be multiples of {self.scale}, got {h}x{w}")
        u = x.reshape(b, k * c, h, w).contiguous(memory_format=self._layout())
        u = maybe_recompute(self.relation, u, m.memory_saving)
        if self.downscale is not None:
            u = self.downscale(u)
        return self.squeeze(self.coupling(u))

    def restore(self, e: torch.Tensor) -> torch.Tensor:
        """Float inverse pass ``(B, C_e, H/s, W/s) -> (B, K, C, H, W)``."""
        m = self.config
        e = e.contiguous(memory_format=self._layout())
        u = self.coupling.inverse(self.squeeze.inverse(e))
        if self.downscale is not None:
            u = self.downscale.inverse(u)
        x = maybe_recompute(self.inverse_relation, u, m.memory_saving)
        b, _, h, w = x.shape
        return x.reshape(b, m.num_images, m.image_channels, h, w)

    def _layout(self) -> torch.memory_format:
        """channels_last for the fused forward-only pass: measured faster on CPU there, but
        slower in the backward pass, so training keeps the default layout."""
        if self.config.fused and not torch.is_grad_enabled():
            return torch.channels_last
        return torch.contiguous_format

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Output:
        embedding = self.embed(x)
        quantized = quantize(embedding, training=self.training, generator=generator)
        received = quantized
        if self.training and self.distortion is not None:
            received = self.distortion(quantized, generator)
        return Output(embedding, quantized, self.restore(received))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, K, C, H, W) uint8 -> (B, C_e, H/s, W/s) uint8``: the PNG's pixels."""
        _require_uint8(images, "images")
        e = self.embed(images.to(self._dtype) / 255)
        return to_uint8(e)

    @torch.no_grad()
    def decode(self, embedding: torch.Tensor) -> torch.Tensor:
        """``(B, C_e, H/s, W/s) uint8 -> (B, K, C, H, W) uint8``."""
        _require_uint8(embedding, "embedding")
        if embedding.shape[1] != self.config.embed_channels:
            raise ValueError(
                f"embedding has {embedding.shape[1]} channels, "
                f"this model makes {self.config.embed_channels}"
            )
        return to_uint8(self.restore(embedding.to(self._dtype) / 255))

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> uint8, scaled by 255, clamped and rounded (how the tables were made)."""
    return torch.round(x.float() * 255).clamp(0, 255).to(torch.uint8)


def _require_uint8(t: torch.Tensor, name: str) -> None:
    if t.dtype != torch.uint8:
        raise TypeError(f"{name} must be uint8 (0-255), got {t.dtype}")
