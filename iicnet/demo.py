"""A short encode/decode demo on a real photograph (scikit-image's astronaut).

Builds a 3-frame clip by sliding a window across the photo, embeds it into one PNG with a
freshly initialised small model and restores it. An untrained IICNet starts close to "the
embedding is the mean of the frames", so the restored PSNR is low until the model is
trained (``ray_jobs/train.py``); the point here is the plumbing, uint8 in and out.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from iicnet.config import load
from iicnet.metrics import psnr
from iicnet.model import IICNet

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "video-k3-small.yaml"


def sample_clip(k: int = 3, size: int = 128, shift: int = 6) -> torch.Tensor:
    """``(1, K, 3, size, size)`` uint8 frames panning across the astronaut photo, middle first."""
    from skimage import data

    photo = data.astronaut()
    frames = [photo[100:100 + size, 150 + i * shift:150 + i * shift + size] for i in range(k)]
    order = [k // 2] + [i for i in range(k) if i != k // 2]
    stack = np.stack([frames[i] for i in order]).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(stack))[None]


def main(out_dir: str = "runs/demo") -> int:
    torch.manual_seed(0)
    cfg = load(CONFIG)
    model = IICNet(cfg).eval()
    clip = sample_clip(cfg.model.num_images)
    embedding = model.encode(clip)
    restored = model.decode(embedding)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(embedding[0].permute(1, 2, 0).numpy()).save(out / "embedding.png")
    print(f"clip {tuple(clip.shape)} -> embedding {tuple(embedding.shape)}")
    print(f"embedding written to {out / 'embedding.png'}")
    print(f"embedding PSNR vs reference: {psnr(embedding[0], clip[0, 0]).item():.2f} dB (RGB)")
    for k in range(clip.shape[1]):
        print(f"restored image {k} PSNR: {psnr(restored[0, k], clip[0, k]).item():.2f} dB (RGB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
