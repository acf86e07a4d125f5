"""MLflow, and only here: tracking runs, logging and registering models, loading them back.

Callers import the package (``from iicnet import registry``), not its files:

- :mod:`iicnet.registry.tracking`: which store, runs and what is logged into them;
- :mod:`iicnet.registry.models`: checkpoints logged as MLflow models, and models loaded back;
- :mod:`iicnet.registry.versions`: registered versions, aliases and promotion, and imported
  weights registered;
- :mod:`iicnet.registry.pyfunc`: the file MLflow runs to serve a logged model.
"""

from iicnet.registry.models import (
    CHECKPOINT_ARTIFACT,
    MODEL_NAME,
    load_model,
    log_checkpoint,
    log_model,
    logged_model_name,
    model_card,
    model_name,
)
from iicnet.registry.tracking import (
    LOCAL_STORE,
    RUN_NAME_TAG,
    Tracker,
    TrackingError,
    check_tracking,
    experiment_id,
    find_runs,
    local_store,
    log_datasets,
    quiet_console,
    redact,
    start_run,
    system_metrics,
    tracking_uri,
)
from iicnet.registry.versions import (
    DEFAULT_ALIAS,
    MEASURED_ON,
    RANKED_BY,
    AliasClaim,
    claim_alias,
    promote,
    register,
    register_import,
    registered_version,
)

__all__ = ["CHECKPOINT_ARTIFACT", "DEFAULT_ALIAS", "LOCAL_STORE", "MEASURED_ON", "MODEL_NAME",
           "RANKED_BY",
           "RUN_NAME_TAG", "AliasClaim", "Tracker", "TrackingError", "check_tracking",
           "claim_alias", "experiment_id", "find_runs", "load_model", "local_store",
           "log_checkpoint", "log_datasets", "log_model", "logged_model_name", "model_card",
           "model_name", "promote", "quiet_console", "redact", "register", "register_import",
           "registered_version", "start_run", "system_metrics", "tracking_uri"]
