"""The three losses of section 3.2; each is summed over (C, H, W) and averaged over the batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from iicnet.model.config import LossConfig
from iicnet.model.network import Output


def embedding_loss(embedding: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """L_emb (eq. 10): squared error between ``(B, C_e, h, w)`` embedding and reference."""
    return (embedding - reference).pow(2).flatten(1).sum(1).mean()


def frequency_loss(embedding: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """L_freq: squared error of the one-sided 2-D FFTs (real and imaginary parts), per channel."""
    diff = torch.fft.rfft2(embedding.float()) - torch.fft.rfft2(reference.float())
    return torch.view_as_real(diff).pow(2).flatten(1).sum(1).mean()


def restoration_loss(restored: torch.Tensor, original: torch.Tensor,
                     eps: float = 1e-6, balance: float = 0.0) -> torch.Tensor:
    """L_res: Charbonnier ``sqrt(d^2 + eps)`` over ``(B, K, C, H, W)``, divided by K.

    ``balance`` (0 as published, up to 1) weighs each of the K images by its share of the
    batch's error (detached): weight ``1 - balance + balance * K * L_k / sum_j L_j``, which
    averages 1. Charbonnier's gradient hardly grows with the error, so a small network can
    settle on restoring one image well and another at its copy baseline; the weights push
    the worse one harder."""
    k = original.shape[1]
    charbonnier = torch.sqrt((restored - original).pow(2) + eps)
    if not balance:
        return charbonnier.flatten(1).sum(1).mean() / k
    per_image = charbonnier.flatten(2).sum(2)  # (B, K)
    share = per_image.detach().mean(0)
    weights = (1 - balance) + balance * k * share / share.sum()
    return (per_image * weights).sum(1).mean() / k


@dataclass
class LossTerms:
    total: torch.Tensor
    emb: torch.Tensor
    freq: torch.Tensor
    res: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        return {f"loss/{k}": float(v.detach()) for k, v in vars(self).items()}


def iicnet_loss(out: Output, images: torch.Tensor, reference: torch.Tensor,
                cfg: LossConfig) -> LossTerms:
    """Weighted sum; the embedding terms use the unquantised embedding (as the authors do)."""
    emb = embedding_loss(out.embedding, reference)
    freq = frequency_loss(out.embedding, reference)
    res = restoration_loss(out.restored, images, cfg.charbonnier_eps, cfg.frame_balance)
    total = cfg.lambda_emb * emb + cfg.lambda_freq * freq + cfg.lambda_res * res
    return LossTerms(total, emb, freq, res)
