"""Does bf16 training track float32? Two runs of the embedded default's config on the sample
data, identical but for ``train.amp`` (``off`` against ``bf16``), scored on the held-out clips.

Both runs start from the same weights and see the same batches in the same order (drawn once,
then fed to each). A step whose loss explodes is rolled back as training does
(``Trainer.rollback``) and counted. After ``--steps`` steps both models are scored the way
``bench/convergence.py`` scores (held-out ``val`` and ``test`` clips, rounded embedding, RGB
PSNR). It runs on a CUDA GPU where there is one, else on a CPU with native bf16
(AVX512-BF16 or AMX, ``iicnet.training.trainer.native_bf16``); elsewhere it says what it
would measure and exits.
The requirement: every 10 steps' mean bf16 loss within 10% of float32's, no more rollbacks
than float32, and the held-out restored PSNR within 0.3 dB. Writes
``bench/results/precision-<cpu|cuda>.json``; ``restored_psnr_gap_db`` is bf16 minus float32.

    python bench/precision.py [--steps 300] [--eval-crop 128] [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

WINDOW = 10
MAX_LOSS_GAP = 0.10
MAX_PSNR_GAP_DB = 0.3


def run(cfg, batches: list, amp: str, device: str) -> tuple:
    """Train on ``batches`` with ``train.amp=amp``: the trainer and what
    :func:`local_training.train_here` reports."""
    from local_training import train_here

    from iicnet.training import Trainer

    trainer = Trainer(cfg.override([f"train.amp={amp}"]), device)
    assert trainer.amp == (amp == "bf16"), trainer.precision
    return trainer, train_here(trainer, batches, len(batches))


def windows(values: list[float]) -> list[float]:
    return [sum(values[i:i + WINDOW]) / len(values[i:i + WINDOW])
            for i in range(0, len(values), WINDOW)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: the CUDA GPU where there is one, else the CPU")
    parser.add_argument("--eval-crop", type=int, default=128)
    args = parser.parse_args()
    from iicnet.training.trainer import native_bf16

    device = args.device if args.device != "auto" else \
        "cuda" if torch.cuda.is_available() else "cpu"
    if (device == "cuda" and not torch.cuda.is_available()) \
            or not native_bf16(torch.device(device)):
        why = "no CUDA GPU" if device == "cuda" else \
            "this CPU has neither AVX512-BF16 nor AMX"
        print(f"dry run ({why}): on {device} this trains the embedded default's config for "
              f"{args.steps} steps twice, float32 and bf16 autocast, on the same batches from "
              f"the same weights; compares the losses (each {WINDOW} steps' mean within "
              f"{MAX_LOSS_GAP:.0%}), the rollbacks and the held-out restored PSNR (within "
              f"{MAX_PSNR_GAP_DB} dB); writes bench/results/precision-<cpu|cuda>.json")
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
    for name, amp in (("float32", "off"), ("bf16", "bf16")):
        trainer, done = run(cfg, batches, amp, device)
        losses, rollbacks, wall = done.losses, done.rollbacks, done.wall_s
        held_out = score(trainer.model.cpu(), cfg, shards, args.eval_crop)["held_out"]
        runs[name] = {"losses": [round(v, 4) for v in losses], "windows": windows(losses),
                      "rollbacks": rollbacks, "wall_s": round(wall, 2),
                      "s_per_step": round(wall / args.steps, 4), "held_out": held_out}
        print(f"{name}: {wall:.1f} s, final loss {runs[name]['windows'][-1]:.2f}, held-out "
              f"restored {held_out['restored_psnr']:.2f} dB", flush=True)
    gaps = [abs(b - f) / abs(f) for f, b in zip(runs["float32"]["windows"],
                                                runs["bf16"]["windows"])]
    psnr_gap = (runs["bf16"]["held_out"]["restored_psnr"]
                - runs["float32"]["held_out"]["restored_psnr"])
    ratios = [b / f for f, b in zip(runs["float32"]["windows"], runs["bf16"]["windows"])]
    met = (max(gaps) <= MAX_LOSS_GAP and abs(psnr_gap) <= MAX_PSNR_GAP_DB
           and runs["bf16"]["rollbacks"] <= runs["float32"]["rollbacks"])
    report = {
        "benchmark": "precision: bf16 autocast against float32 training",
        "setup": {"config": str(DEFAULT_CONFIG.relative_to(REPO)), "steps": args.steps,
                  "batch": cfg.data.batch_size, "crop": cfg.data.crop,
                  "eval_crop": args.eval_crop, "device": device,
                  "threads": torch.get_num_threads()},
        "machine": describe(),
        "runs": runs,
        "loss_gap_by_window": [round(g, 4) for g in gaps],
        "loss_ratio_by_window": [round(r, 4) for r in ratios],
        "rollbacks": {name: runs[name]["rollbacks"] for name in runs},
        "restored_psnr_gap_db": round(psnr_gap, 3),
        "embedding_psnr_gap_db": round(runs["bf16"]["held_out"]["embedding_psnr"]
                                       - runs["float32"]["held_out"]["embedding_psnr"], 3),
        "speedup_bf16": runs["float32"]["wall_s"] / runs["bf16"]["wall_s"],
        "requirement": {"max_loss_gap": MAX_LOSS_GAP, "max_psnr_gap_db": MAX_PSNR_GAP_DB,
                        "no_extra_rollback": True, "met": met},
        "machine_load_average": [round(x, 2) for x in os.getloadavg()],
    }
    out = REPO / "bench" / "results" / f"precision-{device}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"largest loss gap {max(gaps):.1%}, restored PSNR gap (bf16 - float32) "
          f"{psnr_gap:+.2f} dB, rollbacks {report['rollbacks']}; wrote {out}")
    return 0 if report["requirement"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
