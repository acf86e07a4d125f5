"""Training in this process, plain torch and no Ray, for the benches that compare models
trained on the same batches (``bench/robustness.py``, ``bench/precision.py``).

:func:`train_here` steps a :class:`iicnet.training.Trainer` the way a training worker does,
without the cluster around it: a step whose loss explodes is rolled back
(``Trainer.rollback``, learning rate lowered) and counted, and does not count as a step.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch


@dataclass
class Trained:
    losses: list[float] = field(default_factory=list)
    """Each completed step's total loss (rolled-back steps left out)."""
    rollbacks: int = 0
    wall_s: float = 0.0

    def summary(self, steps: int) -> dict:
        tail = self.losses[-50:]
        return {"steps": steps, "wall_s": round(self.wall_s, 2),
                "s_per_step": round(self.wall_s / max(steps, 1), 4),
                "final_loss_mean_last_50": round(sum(tail) / max(len(tail), 1), 5),
                "rollbacks": self.rollbacks}


def train_here(trainer, batches: Iterable, steps: int, name: str = "",
               log_every: int = 0) -> Trained:
    """Train on ``batches`` until ``trainer.step`` reaches ``steps`` or the batches run out;
    every ``log_every`` steps (0: never) a progress line naming ``name``."""
    done = Trained()
    began = time.perf_counter()
    for images, reference in batches:
        if trainer.step >= steps:
            break
        result = trainer.train_step(images, reference)
        if result.exploded:
            trainer.rollback(result.exploded)
            done.rollbacks += 1
            continue
        done.losses.append(result.losses["loss/total"])
        if log_every and trainer.step % log_every == 0:
            recent = done.losses[-log_every:]
            print(f"{name}: step {trainer.step}/{steps} loss {sum(recent) / len(recent):.4f} "
                  f"({time.perf_counter() - began:.0f} s)", flush=True)
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    done.wall_s = time.perf_counter() - began
    return done
