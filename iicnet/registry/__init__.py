"""MLflow, and only here: tracking runs, logging and registering models, loading them back.

``from iicnet import registry`` gives the functions of :mod:`iicnet.registry.models`;
:mod:`iicnet.registry.pyfunc` is the file MLflow runs to serve a logged model.
"""

from iicnet.registry.models import (
    CHECKPOINT_ARTIFACT,
    DEFAULT_ALIAS,
    LOCAL_STORE,
    MODEL_NAME,
    RANKED_BY,
    RUN_NAME_TAG,
    AliasClaim,
    Tracker,
    TrackingError,
    check_tracking,
    claim_alias,
    experiment_id,
    find_runs,
    load_model,
    local_store,
    log_checkpoint,
    log_datasets,
    log_model,
    model_card,
    model_name,
    promote,
    quiet_console,
    redact,
    register,
    registered_version,
    start_run,
    system_metrics,
    tracking_uri,
)

__all__ = ["CHECKPOINT_ARTIFACT", "DEFAULT_ALIAS", "LOCAL_STORE", "MODEL_NAME", "RANKED_BY",
           "RUN_NAME_TAG", "AliasClaim", "Tracker", "TrackingError", "check_tracking",
           "claim_alias", "experiment_id", "find_runs", "load_model", "local_store",
           "log_checkpoint", "log_datasets", "log_model", "model_card", "model_name", "promote",
           "quiet_console", "redact", "register", "registered_version", "start_run",
           "system_metrics", "tracking_uri"]
