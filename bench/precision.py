"""Does bf16 training track float32? Two short runs of the embedded default's config on the
sample data, identical but for ``train.amp``, scored on the held-out clips.

Both runs start from the same weights and see the same batches in the same order (drawn once,
then fed to each). Per step the two losses are compared; after ``--steps`` steps both models
are scored the way ``bench/convergence.py`` scores (held-out ``val`` and ``test`` clips,
rounded embedding, RGB PSNR). bf16 autocast runs on a GPU only (``Trainer.amp``), so on a
machine without one this says what it would measure and exits. The requirement: over the
run, the bf16 loss (mean of each 10 steps) stays within 10% of the float32 loss, neither run
rolls back, and the held-out restored PSNRs are within 0.5 dB. Writes
``bench/results/precision-cuda.json``.

    python bench/precision.py [--steps 100] [--eval-crop 128]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

WINDOW = 10
MAX_LOSS_GAP = 0.10
MAX_PSNR_GAP_DB = 0.5


def run(cfg, batches: list, amp: bool) -> tuple:
    from iicnet.training import Trainer

    trainer = Trainer(cfg.override([f"train.amp={str(amp).lower()}"]), "cuda")
    losses = []
    began = time.perf_counter()
    for images, reference in batches:
        result = trainer.train_step(images, reference)
        if result.exploded:
            raise SystemExit(f"{'bf16' if amp else 'float32'}: the loss exploded at step "
                             f"{trainer.step + 1} ({result.exploded})")
        losses.append(result.losses["loss/total"])
    torch.cuda.synchronize()
    return trainer, losses, time.perf_counter() - began


def windows(values: list[float]) -> list[float]:
    return [sum(values[i:i + WINDOW]) / len(values[i:i + WINDOW])
            for i in range(0, len(values), WINDOW)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eval-crop", type=int, default=128)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(f"dry run (no CUDA GPU here): on a GPU this trains the embedded default's config "
              f"for {args.steps} steps twice, float32 and bf16 autocast, on the same batches "
              f"from the same weights; compares the losses (each {WINDOW} steps' mean within "
              f"{MAX_LOSS_GAP:.0%}) and the held-out restored PSNR (within "
              f"{MAX_PSNR_GAP_DB} dB); writes bench/results/precision-cuda.json")
        return 0
    from convergence import DEFAULT_CONFIG, score
    from machine import describe

    from iicnet.data import make_loader
    from iicnet.formats.config_file import load
    from ray_jobs import common

    cfg = load(DEFAULT_CONFIG)
    shards = common.sample_shards()
    loader = iter(make_loader(shards, cfg, split="train", train=True, resampled=True,
                              seed=cfg.train.seed))
    batches = [next(loader) for _ in range(args.steps)]
    runs = {}
    for name, amp in (("float32", False), ("bf16", True)):
        trainer, losses, wall = run(cfg, batches, amp)
        held_out = score(trainer.model.cpu(), cfg, shards, args.eval_crop)["held_out"]
        runs[name] = {"losses": [round(v, 4) for v in losses], "windows": windows(losses),
                      "wall_s": round(wall, 2), "s_per_step": round(wall / args.steps, 4),
                      "held_out": held_out}
        print(f"{name}: {wall:.1f} s, final loss {runs[name]['windows'][-1]:.2f}, held-out "
              f"restored {held_out['restored_psnr']:.2f} dB", flush=True)
    gaps = [abs(b - f) / abs(f) for f, b in zip(runs["float32"]["windows"],
                                                runs["bf16"]["windows"])]
    psnr_gap = abs(runs["bf16"]["held_out"]["restored_psnr"]
                   - runs["float32"]["held_out"]["restored_psnr"])
    report = {
        "benchmark": "precision: bf16 autocast against float32 training",
        "setup": {"config": str(DEFAULT_CONFIG.relative_to(REPO)), "steps": args.steps,
                  "batch": cfg.data.batch_size, "crop": cfg.data.crop,
                  "eval_crop": args.eval_crop, "device": "cuda"},
        "machine": describe(),
        "runs": runs,
        "loss_gap_by_window": [round(g, 4) for g in gaps],
        "restored_psnr_gap_db": round(psnr_gap, 3),
        "speedup_bf16": runs["float32"]["wall_s"] / runs["bf16"]["wall_s"],
        "requirement": {"max_loss_gap": MAX_LOSS_GAP, "max_psnr_gap_db": MAX_PSNR_GAP_DB,
                        "met": max(gaps) <= MAX_LOSS_GAP and psnr_gap <= MAX_PSNR_GAP_DB},
        "machine_load_average": [round(x, 2) for x in os.getloadavg()],
    }
    out = REPO / "bench" / "results" / "precision-cuda.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"largest loss gap {max(gaps):.1%}, PSNR gap {psnr_gap:.2f} dB; wrote {out}")
    return 0 if report["requirement"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
