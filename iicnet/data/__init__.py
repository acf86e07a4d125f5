"""The training data pipeline: shard sets split across Ray ranks and DataLoader workers,
shuffled, resampled, batched. Only training imports it; scoring reads shards through
:mod:`iicnet.formats.shards` and :meth:`iicnet.tasks.Task.items` directly."""

from iicnet.data.pipeline import Loader, TaskStream, assign_samples, make_dataset, make_loader

__all__ = ["Loader", "TaskStream", "assign_samples", "make_dataset", "make_loader"]
