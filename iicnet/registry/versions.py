"""Versions: registering a logged model as a version of ``iicnet-<task>``, and the aliases
that name versions (``@candidate``, ``@tuned``, ``@champion``).

- :func:`register` makes a logged model a new version with tags and a description, and
  may point an alias at it; :func:`claim_alias` moves an alias only to a version that
  scores higher on :data:`RANKED_BY` (or when forced); :func:`promote` does that for a
  version named by URI (``@candidate`` -> ``@champion``).
- :func:`registered_version` resolves ``models:/<name>@<alias>`` to its version (the
  provenance ``iicnet embed`` writes into an embedding).
- :func:`register_import` logs and registers weights made elsewhere (the authors' released
  models) as a run of their own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iicnet.model.config import Config
from iicnet.registry.models import log_model, logged_model_id, model_name
from iicnet.registry.tracking import (
    Tracker,
    TrackingError,
    check_tracking,
    mlflow_client,
    process_tracking_uri,
    redact,
    start_run,
    tracking_uri,
)

DEFAULT_ALIAS = "candidate"


RANKED_BY = "val/restored_psnr"
"""The version tag aliases move on: one moves only to a version that scores higher."""

MEASURED_ON = "val.measure"
"""The version tag saying what :data:`RANKED_BY` was measured on (``full frames``, ``centre
crops of 32``; ``train.val_measure``): scores measured differently are not compared."""


def register(uri: str, model_uri: str, name: str, *, alias: str | None = DEFAULT_ALIAS,
             tags: dict[str, Any] | None = None, description: str | None = None) -> str:
    """Register the logged model ``model_uri`` (``models:/m-<id>``) as a new version of
    ``name`` with ``tags`` and ``description`` (the version page's model card), and point
    ``alias`` at it (None: leave the aliases; see :func:`claim_alias`); returns the version.

    Linked both ways, as ``mlflow.register_model`` links them: the version's source is
    ``models:/m-<id>`` (its page links the logged model; its files are the logged model's),
    and the logged model's ``mlflow.modelVersions`` tag lists the version (its page lists
    its versions)."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    client = mlflow_client(uri)
    model_id = logged_model_id(model_uri)
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    logged = client.get_logged_model(model_id)
    # A store opened in this process (sqlite:///...) finds the files of a models:/m-<id>
    # source through MLflow's process-wide tracking URI; a server, through its own.
    with process_tracking_uri(uri):
        version = client.create_model_version(
            name, f"models:/{model_id}", run_id=logged.source_run_id, model_id=model_id,
            tags={k: str(v) for k, v in (tags or {}).items()}, description=description)
    # A server adds the version to the tag itself; a store opened here does not.
    listed = json.loads(client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS, "[]"))
    entry = {"name": name, "version": int(version.version)}
    if not any(e.get("name") == name and str(e.get("version")) == str(version.version)
               for e in listed):
        client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(
            [*listed, entry])})
    if alias is not None:
        client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


@dataclass(frozen=True)
class AliasClaim:
    """What :func:`claim_alias` did: ``moved`` to ``version``, or left on ``holder``."""

    name: str
    alias: str
    version: str
    moved: bool
    score: float | None
    holder: str | None = None
    holder_score: float | None = None
    holder_measure: str | None = None
    """What the holder's score was measured on, when that differs from this version's."""

    def describe(self, metric: str, force: str = "--force-alias") -> str:
        """One line for the console; ``force`` names the option that overrides."""
        def shown(value: float | None) -> str:
            return "no score" if value is None else f"{metric} {value:.2f}"

        if self.holder is None:
            return f"@{self.alias} -> version {self.version} (the first)"
        if self.moved and self.holder_measure is not None:
            return (f"@{self.alias} moved to version {self.version} ({shown(self.score)}); "
                    f"version {self.holder}'s {shown(self.holder_score)} was measured on "
                    f"{self.holder_measure}, not comparable")
        if self.moved:
            return (f"@{self.alias} moved to version {self.version} ({shown(self.score)}; "
                    f"version {self.holder} had {shown(self.holder_score)})")
        return (f"@{self.alias} stays on version {self.holder} ({shown(self.holder_score)}; "
                f"this version {self.version} has {shown(self.score)}): point it here with "
                f"{force}, or models:/{self.name}/{self.version} names this one")


def promote(uri: str, source: str, alias: str, *, force: bool = False) -> AliasClaim:
    """Point ``alias`` at the version ``source`` (``models:/name@alias`` or
    ``models:/name/version``) names, only if it scores higher on :data:`RANKED_BY` than the
    alias's holder (or ``force``): ``@candidate`` -> ``@champion``."""
    from mlflow.exceptions import MlflowException

    name, version = registered_version(source, uri)
    if not name:
        raise TrackingError(f"{source}: promote a registered version: models:/<name>@<alias> "
                            "or models:/<name>/<version>")
    try:
        return claim_alias(uri, name, alias, version, RANKED_BY, force=force)
    except MlflowException as exc:
        raise TrackingError(f"{source}: cannot move @{alias} at {redact(uri)} "
                            f"({exc.message})") from exc


def claim_alias(uri: str, name: str, alias: str, version: str, metric: str, *,
                force: bool = False) -> AliasClaim:
    """Point ``alias`` of ``name`` at ``version`` only if that version's tag ``metric`` is
    higher than the current holder's (or nothing holds the alias, or ``force``). A version
    without the score never takes an alias from one unless forced. Scores are compared only
    when both versions were measured alike (tag :data:`MEASURED_ON`; a holder measured
    otherwise, or before versions recorded it, counts as unscored when this version says
    what it was measured on)."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(uri)

    def tags(v: str) -> dict[str, str]:
        return client.get_model_version(name, v).tags

    def score(found: dict[str, str]) -> float | None:
        try:
            value = float(found.get(metric, "nan"))
        except ValueError:
            return None
        return None if value != value else value

    try:
        holder = str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        holder = None
    my_tags = tags(version)
    mine = score(my_tags)
    if holder is None or holder == version:
        client.set_registered_model_alias(name, alias, version)
        return AliasClaim(name, alias, version, True, mine)
    their_tags = tags(holder)
    theirs = score(their_tags)
    measure, their_measure = my_tags.get(MEASURED_ON), their_tags.get(MEASURED_ON)
    unlike = measure is not None and their_measure != measure
    moved = force or (mine is not None and (theirs is None or unlike or mine > theirs))
    if moved:
        client.set_registered_model_alias(name, alias, version)
    return AliasClaim(name, alias, version, moved, mine, holder, theirs,
                      (their_measure or "an unrecorded measure") if unlike else None)


def registered_version(source: str, uri: str | None = None) -> tuple[str, str]:
    """``(name, version)`` that ``models:/<name>@<alias>`` or ``models:/<name>/<version>``
    names now (an alias resolved to its version); ``("", "")`` for any other source. The
    provenance ``iicnet embed`` writes into an embedding."""
    text = str(source)
    if not text.startswith("models:/") or text.startswith("models:/m-"):
        return "", ""
    name, at, alias = text.removeprefix("models:/").partition("@")
    if not at:
        name, _, version = name.partition("/")
        return name, version
    from mlflow.exceptions import MlflowException

    uri = uri or tracking_uri()
    check_tracking(uri)
    try:
        return name, str(mlflow_client(uri).get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        raise TrackingError(f"{source}: cannot resolve the alias at {redact(uri)} "
                            f"({exc.message})") from exc


def register_import(uri: str, directory: str | Path, config: Config, name: str, *,
                    alias: str = DEFAULT_ALIAS, run_name: str,
                    tags: dict[str, str]) -> tuple[str, str]:
    """Log an imported checkpoint ``directory`` (weights made elsewhere, e.g. the authors'
    released models) as an MLflow run of its own, with ``config`` as params and ``tags`` as
    provenance on the run and on the new version of ``name`` that ``alias`` then names.
    Returns ``(run_id, version)``; a failure marks the run FAILED."""
    check_tracking(uri)
    run_id = start_run(uri, model_name(config.data.task), run_name, config, tags=tags)
    tracker = Tracker(uri, run_id)
    try:
        version = register(uri, log_model(uri, run_id, directory), name, alias=alias,
                           tags=tags)
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    return run_id, version


