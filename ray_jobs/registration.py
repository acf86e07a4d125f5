"""Registering a training run's final checkpoint: what ``ray_jobs/train.py`` does at the end
of a run and ``ray_jobs/sync_tracking.py`` does later for a run whose server was down then."""

from __future__ import annotations

from typing import Any

REGISTERED_TAG = "iicnet.registered"


def register_directory(cfg, directory: str, uri: str, run_id: str, *,
                       scores: dict[str, float], step: int | None, data: str,
                       force_alias: bool = False, model_name: str | None = None
                       ) -> dict[str, Any]:
    """Log checkpoint folder ``directory`` as a model and register it (see
    ``ray_jobs.train.register``; also what a sync file's deferred
    registration runs, :mod:`ray_jobs.sync_tracking`), the logged model named
    ``model_name``."""
    from iicnet import registry

    name = registry.model_name(cfg.data.task)
    model_uri = registry.log_checkpoint(uri, run_id, directory, name=model_name,
                                        metrics=scores, step=step)
    card = registry.model_card(cfg, scores, data=data, step=step, run_id=run_id)
    version = registry.register(uri, model_uri, name, alias=None, description=card, tags={
        **{k: f"{v:.4f}" for k, v in scores.items()}, "step": str(step), "run_id": run_id,
        registry.MEASURED_ON: cfg.train.val_measure})
    claim = registry.claim_alias(uri, name, registry.DEFAULT_ALIAS, version, registry.RANKED_BY,
                                 force=force_alias)
    registry.Tracker(uri, run_id).tags({REGISTERED_TAG: f"models:/{name}/{version}"})
    return {"name": name, "version": version, "alias": registry.DEFAULT_ALIAS,
            "claim": claim, "model_uri": model_uri, "scores": scores}


def report_line(summary: dict[str, Any]) -> str:
    """The line saying what was registered and where the alias points."""
    return (f"registered: models:/{summary['name']}/{summary['version']}; "
            f"{summary['claim'].describe('restored PSNR')}")
