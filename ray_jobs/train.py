"""Train IICNet with Ray Train (DDP), tracked and registered in MLflow.

    python ray_jobs/train.py                  # the embedded default, on this machine
    ray job submit --working-dir . -- python ray_jobs/train.py \\
        --config configs/video-k5.yaml --data s3://bucket/davis --num-workers 8 --gpu \\
        --storage s3://bucket/ray-results

With no arguments: the DAVIS-layout sample dataset is built and sharded under ``.iicnet/``
(or ``$IICNET_CACHE``) if missing, a private local Ray runs 2 CPU workers on the small video
variant (``configs/video-k3-small.yaml``), MLflow records into ``.iicnet/mlflow.db`` unless
``MLFLOW_TRACKING_URI`` names a server, and the result is registered as ``iicnet-video``
with alias ``candidate``.

What happens, in order: the config, the data's manifest and the tracking server are checked
(a problem exits with status 2 and a message naming it, before any training); the MLflow
run is created with the full config as params; a ``TorchTrainer`` runs the per-worker loop of
:mod:`ray_jobs.worker` (streaming, stepping, validating, logging, checkpointing into
``<storage>/<run name>/``; see there) on every worker; the final checkpoint is logged as a
model, registered, and its validation scores become the version's tags.

A worker that dies restarts the worker group from the latest checkpoint (``--max-failures``
times), continuing the step count; ``--resume NAME`` continues an earlier run the same way
(from the newest complete checkpoint in the run's folder, even one written after Ray's last
record of the run; an incomplete one is skipped for the newest complete one, named in the
log). ``--resume`` of a run that finished does nothing and says so; of a run whose driver
still runs on this host it is refused. Without ``--resume``, ``--name`` or ``--fresh``, a run
of the same recipe (config, data, workers, device) that finished is reused, and one that was
interrupted is resumed.

A driver that dies (even by SIGKILL) leaves no run RUNNING: a watcher process marks the
MLflow run KILLED (:func:`ray_jobs.common.watch_run`), and the workers stop before their next
step (:func:`ray_jobs.worker.halted`). Training that fails once the ``--max-failures``
restarts are used up exits with status 2 and one line saying why and how to resume (a
checkpoint that does not fit on its disk does so at once, without restarts:
:func:`ray_jobs.worker.did_not_fit`); Ctrl-C
or SIGTERM makes the workers checkpoint the step they are at (:mod:`ray_jobs.stopping`), marks
the run KILLED and exits with status 130 (143 for SIGTERM), saying how to resume. A resumed
run goes on with its own recorded recipe (:mod:`ray_jobs.recorded`): config, experiment, data
and workers, changed only by the options given with ``--resume``, each change printed.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
from typing import Any

from iicnet.storage.arrow import ray_storage
from ray_jobs import common, options, recorded, stopping
from ray_jobs.options import DEFAULT_CONFIG
from ray_jobs.registration import REGISTERED_TAG, register_directory, report_line
from ray_jobs.worker import driver_alive, driver_identity, make_trainer, step_folders

RECIPE_TAG = "iicnet.recipe"
"""Run tag: a digest of what determines the trained weights (config, data manifests,
workers, device), so a repeated default run is reused or resumed instead of redone."""
DRIVER_TAG = "iicnet.driver"
"""Run tag: the driver's host, pid and start time, so workers and a later --resume can tell
whether it still lives."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ray_jobs/train.py", description=__doc__.split("\n\n")[0],
        epilog="Exit status: 0 trained and registered (or, with --resume, already "
               "finished), 2 bad arguments, an unreachable service, or training that failed "
               "(the message says how to resume).")
    parser.add_argument("--config",
                        help="YAML config (default: configs/video-k3-small.yaml; with --resume, "
                        "the run's own recorded config)")
    options.add(parser, "--data")
    parser.add_argument("--val-data", help="validation shards (default: --data); the 'val' "
                        "split is used")
    parser.add_argument("--num-workers", type=int,
                        help="Ray Train workers (DDP; default 2, with --resume the run's own)")
    options.add(parser, "--gpu")
    parser.add_argument("--steps", type=int, help="total optimiser steps (train.steps)")
    parser.add_argument("--storage", help="checkpoints and Ray results: a directory or "
                        "s3://bucket/prefix (default: .iicnet/ray_results)")
    options.add(parser, "--experiment")
    parser.add_argument("--resume", metavar="RUN_NAME",
                        help="continue the run of this name in --storage from its latest "
                        "checkpoint (and its MLflow run)")
    parser.add_argument("--init", metavar="MODEL",
                        help="fine-tune: start from this model's weights (zoo:NAME, a "
                        "checkpoint folder, models:/NAME@ALIAS) instead of random ones; its "
                        "architecture must be the config's")
    parser.add_argument("--name", help="name of a new run (default: <experiment>-<time>)")
    parser.add_argument("--fresh", action="store_true",
                        help="train anew even if a run of the same recipe (config, data, "
                        "workers) finished or was interrupted; by default a finished one is "
                        "reused and an interrupted one resumed")
    parser.add_argument("--force-alias", action="store_true",
                        help="point @candidate at the new version even if its validation "
                        "restored PSNR is not higher than the current holder's")
    parser.add_argument("--max-failures", type=int, default=2,
                        help="worker-group restarts from the latest checkpoint (default 2)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.FIELD=VALUE", help="override a config field "
                        "(repeatable), e.g. --set optim.lr=1.0e-4")
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace):
    from iicnet.formats.config_file import load

    cfg = load(args.config or DEFAULT_CONFIG)
    overrides = overrides_of(args)
    return cfg.override(overrides) if overrides else cfg


def overrides_of(args: argparse.Namespace) -> list[str]:
    """The config fields the command line sets: ``--set`` and ``--steps``."""
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    return overrides


def continued(args: argparse.Namespace, storage_path: str, filesystem: Any, cfg):
    """``(config, config file)`` that run ``--resume`` goes on with: its recorded recipe
    (:mod:`ray_jobs.recorded`) changed only by what this command line gives (``--config``,
    ``--set``, ``--steps``; ``--experiment``, ``--data``, ``--val-data``, ``--num-workers``), the
    changes printed. Fills those of ``args`` the command line left out from the record. A run
    that recorded nothing goes on with the command line's ``cfg``."""
    from iicnet import storage

    name = args.resume
    earlier = recorded.recorded(storage_path, name, filesystem)
    if earlier is None:
        return cfg, args.config or str(DEFAULT_CONFIG)
    cfg, changes = recorded.resumed_config(earlier.config, args.config, overrides_of(args))
    for option in ("experiment", "data", "val_data", "num_workers"):
        given, kept = getattr(args, option), getattr(earlier, option)
        if given is None:
            setattr(args, option, kept)
            continue
        shown = storage.absolute(given) if option in ("data", "val_data") else given
        if kept is not None and str(shown) != str(kept):
            changes.append(f"--{option.replace('_', '-')}: {kept!r} -> {given!r}")
    print(f"run {name} goes on with its recorded recipe ({earlier.where})" + (
        "; changed by this command line: " + ", ".join(changes) if changes else ""),
        flush=True)
    return cfg, args.config or earlier.config_file or str(DEFAULT_CONFIG)


def recipe_digest(cfg, data: str, val_data: str, args: argparse.Namespace,
                  init: bytes | None = None) -> str:
    """What determines the weights a run ends with, hashed: the config, the manifests of
    the training and validation shards (their content, not only their paths), the number
    of workers, the device and the weights it starts from (``--init``)."""
    import hashlib

    from iicnet.formats.shards import manifest_digest

    parts = [cfg.to_json(), str(args.num_workers), "gpu" if args.gpu else "cpu",
             manifest_digest(data), manifest_digest(val_data)]
    if init is not None:
        parts.append(hashlib.sha256(init).hexdigest())
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:20]


def same_recipe(uri: str, experiment: str, recipe: str, storage_path: str, filesystem: Any
                ) -> tuple[str, str, str] | None:
    """``(run name, status, registered)`` of the newest earlier run of ``recipe`` that
    finished, or that was interrupted and left checkpoints to resume from; else None."""
    from iicnet import registry

    found = registry.find_runs(uri, experiment, {RECIPE_TAG: recipe})
    named = {tags.get(registry.RUN_NAME_TAG, ""): (run_id, tags) for run_id, tags in found.items()}
    for name in sorted(named, reverse=True):  # default names end in the start time
        run_id, tags = named[name]
        status = registry.Tracker(uri, run_id).status()
        if status == "FINISHED" and tags.get(REGISTERED_TAG):
            return name, status, tags[REGISTERED_TAG]
        if status in ("KILLED", "FAILED") and options.run_exists(storage_path, name, filesystem):
            return name, status, ""
    return None


def previous_run(uri: str, experiment: str, name: str
                 ) -> tuple[str, str, dict[str, str]] | None:
    """``(run id, status, tags)`` of the MLflow run of training run ``name``; None if none."""
    from iicnet import registry

    runs = registry.find_runs(uri, experiment, {registry.RUN_NAME_TAG: name})
    if not runs:
        return None
    run_id = sorted(runs)[0]
    return run_id, registry.Tracker(uri, run_id).status(), runs[run_id]


def live_driver(status: str, tags: dict[str, str]) -> str | None:
    """A description of a run's driver when the run is RUNNING and its driver, on this host,
    still lives; None otherwise (a driver on another host cannot be checked from here)."""
    if status != "RUNNING":
        return None
    try:
        driver = json.loads(tags.get(DRIVER_TAG) or "{}")
    except ValueError:
        return None
    if driver_alive(driver):
        return f"its driver, pid {driver['pid']} on {driver['host']}, is running"
    return None


def quiet_ray() -> None:
    """Stop Ray before the final message, so the workers' forwarded logs (tracebacks
    included) come before it rather than after."""
    import ray

    ray.shutdown()


def failure_summary(error: BaseException | None) -> str:
    """One line for a failed ``fit()``: the first worker's error, not Ray's tracebacks."""
    if error is None:
        return "no checkpoint was reported"
    failures = getattr(error, "worker_failures", None)
    if failures:
        return "; ".join(f"rank {rank}: {failure_summary(cause)}"
                         for rank, cause in sorted(failures.items()))
    cause = getattr(error, "cause", None) or error.__cause__
    if cause is not None and cause is not error and not str(error).strip():
        return failure_summary(cause)
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    last = lines[-1] if lines else "no message"
    last = last if len(last) <= 200 else last[:197] + "..."
    kind = type(error).__name__
    return last if last.startswith(f"{kind}: ") else f"{kind}: {last}"


def main(argv: list[str] | None = None) -> int:
    from iicnet import registry
    from iicnet.model.config import ConfigError
    from iicnet.registry import buffered

    args = parse_args(argv)
    registry.quiet_console()
    buffered.bound_requests()  # before Ray starts: its workers inherit the bounds
    if args.num_workers is not None and args.num_workers < 1:
        return common.fail(f"--num-workers: must be at least 1, got {args.num_workers}")
    if args.max_failures < -1:
        return common.fail(f"--max-failures: must be -1 (forever) or more, got "
                           f"{args.max_failures}")
    try:
        cfg = resolve_config(args)
        options.check_gpu(args.gpu, "train")
    except ConfigError as exc:
        return common.fail(str(exc))
    cache = common.cache_dir()
    default_uri, default_artifacts = common.default_tracking(cache)
    uri = registry.tracking_uri(default_uri)
    artifact_location = default_artifacts if uri == default_uri else None
    problem = common.cluster_problem(uri, default_uri, data=args.data, val_data=args.val_data,
                                     storage=args.storage)
    if problem:
        return common.fail(problem)
    config_file = args.config or str(DEFAULT_CONFIG)
    try:
        registry.check_tracking(uri)
        storage_path, filesystem = ray_storage(args.storage or str(cache / "ray_results"))
        if args.resume:
            cfg, config_file = continued(args, storage_path, filesystem, cfg)
        args.num_workers = args.num_workers or 2
        data, val_data = options.data_sources(args.data, args.val_data, cfg, cache)
        init = options.initial_weights(args.init, cfg) if args.init else None
    except options.setup_errors() as exc:
        return common.fail(str(exc))
    experiment = args.experiment or registry.model_name(cfg.data.task)
    recipe = recipe_digest(cfg, data, val_data, args, init)
    if not (args.resume or args.name or args.fresh):
        earlier = same_recipe(uri, experiment, recipe, storage_path, filesystem)
        if earlier is not None and earlier[1] == "FINISHED":
            print(f"this recipe (config, data, workers) was trained already: run {earlier[0]}, "
                  f"registered as {earlier[2] or 'nothing'}; nothing to redo (--fresh trains "
                  "it again)", flush=True)
            return 0
        if earlier is not None:
            print(f"resuming run {earlier[0]} ({earlier[1].lower()} earlier) from its latest "
                  "checkpoint; --fresh starts over instead", flush=True)
            args.resume = earlier[0]
    if args.resume:
        name = args.resume
        if not options.run_exists(storage_path, name, filesystem):
            return common.fail(f"--resume {name}: no run of that name in "
                               f"{args.storage or storage_path}")
        previous = previous_run(uri, experiment, name)
        if previous is not None and previous[1] == "FINISHED":
            print(f"run {name} has already finished (MLflow run {previous[0]}); nothing to "
                  "resume: no training, nothing registered", flush=True)
            return 0
        live = previous and live_driver(previous[1], previous[2])
        if live:
            return common.fail(f"--resume {name}: the run is still live ({live}); stop it "
                               "first, two worker groups must never share its storage")
    else:
        name = args.name or f"{experiment}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    try:
        recorded.record(cfg, storage_path, name, filesystem, config_file=config_file,
                        experiment=experiment, data=data, val_data=val_data,
                        num_workers=args.num_workers)
    except (OSError, options.setup_errors()) as exc:
        return common.fail(f"cannot record the run's config in its storage folder: {exc}")
    try:
        run_id = registry.start_run(
            uri, experiment, name, cfg, artifact_location=artifact_location,
            resume=bool(args.resume),
            tags={"data": data, "val_data": val_data, "num_workers": str(args.num_workers),
                  RECIPE_TAG: recipe, "device": "gpu" if args.gpu else "cpu",
                  **({"init": args.init} if args.init else {}),
                  "storage": args.storage or storage_path})
    except Exception as exc:
        refused = buffered.refused_files(exc)
        if refused is None:
            raise
        return common.fail(f"the tracking server {registry.redact(uri)} cannot store the "
                           f"run's files ({refused}); make room in its artifact store, then "
                           "run this again")
    registry.Tracker(uri, run_id).tags({DRIVER_TAG: json.dumps(driver_identity())})
    if not args.resume:
        # One shard set usually serves both (its train and val splits): MLflow keeps one
        # input per dataset, so a separate validation set is logged only when there is one.
        registry.log_datasets(uri, run_id, {"training": data} if val_data == data
                              else {"training": data, "validation": val_data})
    common.watch_run(uri, run_id)
    print(f"run {name}: {cfg.data.task} task, {args.num_workers} worker(s) on "
          f"{'GPU' if args.gpu else 'CPU'}, {cfg.train.steps} steps; MLflow run {run_id} at "
          f"{registry.redact(uri)}", flush=True)

    tracker = registry.Tracker(uri, run_id)
    again = f"{common.command('python')} ray_jobs/train.py --resume {name}" + (
        f" --storage {args.storage}" if args.storage else "")
    hint = f"resume from the latest checkpoint: {again}"
    try:
        try:
            result = fit(cfg, name=name, data=data, val_data=val_data, uri=uri, run_id=run_id,
                         num_workers=args.num_workers, use_gpu=args.gpu,
                         storage_path=storage_path, filesystem=filesystem,
                         max_failures=args.max_failures, init=init)
        except stopping.GaveUp as exc:
            tracker.finish("FAILED")
            quiet_ray()
            return common.fail(f"training stopped: {exc}\nmake room there, then {hint}")
        except Exception as exc:  # Train V2 raises once the restarts are used up
            tracker.finish("FAILED")
            quiet_ray()
            return common.fail(f"training failed after {args.max_failures} restart(s): "
                               f"{failure_summary(exc)}\n{hint}")
        if result.error is not None or result.checkpoint is None:
            tracker.finish("FAILED")
            quiet_ray()
            return common.fail(f"training failed: {failure_summary(result.error)}\n{hint}")
        summary = register_or_defer(cfg, result, uri, run_id, data=data,
                                    force_alias=args.force_alias, config_file=config_file,
                                    on_s3=filesystem is not None)
    except KeyboardInterrupt as interrupt:  # Ctrl-C, or SIGTERM (stopping.Terminated)
        tracker.finish("KILLED")
        quiet_ray()
        newest = step_folders(f"{storage_path}/{name}", filesystem)
        kept = (f"newest checkpoint: {newest[0].rpartition('/')[2]}" if newest
                else "no checkpoint was written")
        clean = "after a checkpoint of the step it was at" \
            if getattr(interrupt, "stopped_cleanly", False) else "at once"
        print(f"\n{stopping.what(interrupt)}: run {name} stopped {clean}; {kept}.\n"
              f"resume it: {again}" + ("  (or make run again)" if not args.name else ""),
              file=sys.stderr, flush=True)
        return stopping.exit_status(interrupt)
    except BaseException:
        tracker.finish("FAILED")
        raise
    if summary is None:
        return 0
    tracker.finish()
    report(summary, uri, name, result.path)
    return 0


def fit(cfg, *, name: str, data: str, val_data: str, uri: str, run_id: str, num_workers: int,
        use_gpu: bool, storage_path: str, filesystem: Any, max_failures: int,
        init: bytes | None = None):
    """Run :func:`train_loop` on ``num_workers`` Ray Train workers; the ``ray.train.Result``.
    Raises :class:`ray_jobs.stopping.GaveUp` when the workers stopped the run themselves
    (a checkpoint that does not fit on its disk)."""
    local_cpus = os.cpu_count() or 1
    common.init_ray(num_cpus=None if common.on_cluster() else max(local_cpus, num_workers))
    stopping.on_sigterm()
    flag = stopping.make_flag()
    threads = None if common.on_cluster() else max(1, local_cpus // num_workers)
    per_worker = None if threads is None or use_gpu else {"CPU": threads}
    trainer = make_trainer(cfg, data=data, val_data=val_data, uri=uri, run_id=run_id,
                           threads=threads, num_workers=num_workers, use_gpu=use_gpu,
                           per_worker=per_worker, name=name, storage_path=storage_path,
                           filesystem=filesystem, max_failures=max_failures, init=init,
                           stop=flag)
    result = stopping.interruptible(trainer.fit, flag)
    reason = stopping.given_up(flag)
    if reason:
        raise stopping.GaveUp(reason)
    return result


def register_or_defer(cfg, result, uri: str, run_id: str, *, data: str, force_alias: bool,
                      config_file: str | None, on_s3: bool) -> dict[str, Any] | None:
    """:func:`register`; when the tracking server does not answer or cannot store the model's
    files (:func:`iicnet.registry.buffered.refused_files`), the registration (and the run's
    end) go to the run's sync file instead, the console says how to send them, and
    the result is None. The checkpoint stays where it is."""
    from iicnet import registry
    from iicnet.registry import buffered

    scores = {k: v for k, v in result.metrics.items() if k.startswith("val/")}
    step = result.metrics.get("step")
    try:
        return register(cfg, result, uri, run_id, data=data, force_alias=force_alias,
                        config_file=config_file)
    except Exception as exc:
        refused = buffered.refused_files(exc)
        if refused is None and not buffered.unreachable(exc):
            raise

    def located(path: str) -> str:
        return f"s3://{path}" if on_s3 else path

    sync_file = located(f"{result.path}/{buffered.SYNC_FILE}")
    checkpoint = located(result.checkpoint.path)
    buffered.append_to_sync_file(sync_file, uri, run_id, [
        {"kind": "register", "checkpoint": checkpoint, "scores": scores, "step": step,
         "data": data, "force_alias": force_alias,
         "model_name": registry.logged_model_name(cfg, config_file)},
        {"kind": "finish", "status": "FINISHED"}])
    why, when = (f"cannot store the model's files ({refused})", "there is room again") \
        if refused else ("does not answer", "the server is back")
    print(f"\nnot registered: the tracking server {registry.redact(uri)} {why}; "
          f"the checkpoint stays in {checkpoint}.\nregister it (and send what the run could "
          f"not) once {when}:\n  MLFLOW_TRACKING_URI={registry.redact(uri)} "
          f"{common.command('python')} -m ray_jobs.sync_tracking {sync_file}",
          file=sys.stderr, flush=True)
    return None


def register(cfg, result, uri: str, run_id: str, *, data: str, force_alias: bool = False,
             config_file: str | None = None) -> dict[str, Any]:
    """Log the final checkpoint as a model named for ``config_file``
    (:func:`iicnet.registry.logged_model_name`) and register it with its validation scores
    as version tags; alias ``candidate`` moves to it only if its restored PSNR beats the
    current holder's (:func:`iicnet.registry.claim_alias`) or ``force_alias``."""
    from iicnet import registry

    scores = {k: v for k, v in result.metrics.items() if k.startswith("val/")}
    step = result.metrics.get("step")
    with result.checkpoint.as_directory() as directory:
        return register_directory(cfg, directory, uri, run_id, scores=scores, step=step,
                                  data=data, force_alias=force_alias,
                                  model_name=registry.logged_model_name(cfg, config_file))


def report(summary: dict[str, Any], uri: str, run_name: str, path: str) -> None:
    from iicnet import registry

    scores = summary["scores"]
    claim = summary["claim"]
    registered = (f"models:/{summary['name']}@{summary['alias']}" if claim.moved
                  else f"models:/{summary['name']}/{summary['version']}")
    if uri.startswith("sqlite:"):
        ui = (f"{common.command('mlflow')} ui --backend-store-uri {uri}  "
              "# then open http://127.0.0.1:5000")
    else:
        ui = f"open {registry.redact(uri)}"
    lines = [
        "",
        f"trained: run {run_name}, checkpoints in {path}",
        f"  embedding PSNR {scores.get('val/embedding_psnr', float('nan')):.2f} dB, "
        f"SSIM {scores.get('val/embedding_ssim', float('nan')):.4f}",
        f"  restored  PSNR {scores.get('val/restored_psnr', float('nan')):.2f} dB, "
        f"SSIM {scores.get('val/restored_ssim', float('nan')):.4f}  (validation, RGB)",
        report_line(summary),
        f"MLflow UI:  {ui}",
    ]
    iicnet = common.command("iicnet")
    default_store = uri == common.default_tracking()[0]
    prefix = "" if default_store else f"MLFLOW_TRACKING_URI={registry.redact(uri)} "
    lines.append(f"use it:     {prefix}{iicnet} info {registered}")
    lines.append(f"            {prefix}{iicnet} embed --model {registered} FRAMES... -o clip.png")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
