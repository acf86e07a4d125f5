"""Training without Ray: the step, the explosion guard, validation and resumable state.

``ray_jobs/train.py`` runs :class:`Trainer` under Ray Train; tests and benchmarks run it
directly. See :mod:`iicnet.training.trainer`.
"""

from iicnet.training.trainer import (
    LOSS_TERMS,
    METRICS,
    OPTIMIZER,
    PREVIEW_CROP,
    STATE,
    ExplosionGuard,
    StateError,
    StepResult,
    Trainer,
    TrainingDiverged,
    TrainingState,
    Validation,
    all_reduce_sum,
    image_grid,
    preview,
    read_state,
    validate,
    world_size,
)

__all__ = ["LOSS_TERMS", "METRICS", "OPTIMIZER", "STATE", "ExplosionGuard", "StateError",
           "StepResult", "Trainer", "TrainingDiverged", "TrainingState", "Validation",
           "all_reduce_sum", "image_grid", "preview", "PREVIEW_CROP", "read_state", "validate",
           "world_size"]
