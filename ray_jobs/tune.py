"""Sweep IICNet's loss weights and block count with Ray Tune, tracked and registered in MLflow.

    python ray_jobs/tune.py                   # the embedded default, on this machine
    python ray_jobs/tune.py --search random --num-samples 8 \\
        --space optim.lr=loguniform:1.0e-4:1.0e-3
    python ray_jobs/tune.py --resume NAME     # continue an interrupted sweep
    ray job submit --working-dir . -- python ray_jobs/tune.py --config configs/video-k5.yaml \\
        --data s3://bucket/davis --storage s3://bucket/ray-results --gpu --steps 20000 \\
        --num-samples 16 --max-concurrent 8 --search optuna

What is searched. By default ``loss.lambda_emb``, ``loss.lambda_freq`` and ``loss.lambda_res``
(log-uniform around the published 1, 0.001 and 3) and ``model.blocks`` (half, the same and one
and a half times the config's). ``--space FIELD=SPEC`` adds or replaces a field, for any field
of the config; ``--set FIELD=VALUE`` fixes one (and drops it from the space). The grammar::

    loguniform:LOW:HIGH    uniform:LOW:HIGH    randint:LOW:HIGH (both included)
    choice:V1,V2,...       (values read as YAML)

e.g. ``--space loss.lambda_res=loguniform:0.1:10 --space model.blocks=choice:2,4,8``.
Fields joined by ``+`` take one value together (``model.nf+model.growth=choice:8,16``).
``--search grid`` runs every combination of the ``--space`` choices (``--num-samples``
passes over the grid, default 1) and searches nothing of the default space; with
``--grace-steps`` equal to ``--steps`` no trial is stopped early, so every architecture gets
the same budget (``bench/zoo.py front`` then scores each on held-out full frames).

The objective (see ``ray_jobs/sweep_report.py``): maximise restored PSNR subject to embedding
PSNR >= ``--min-embedding-psnr``, scored as ``restored - penalty * max(0, T - embedding)`` on
the validation split, so ASHA can order every trial. The best trial is the feasible one with
the highest restored PSNR (the highest score when none is feasible, with a warning), among
the trials that ran all their steps: an early-stopped trial was scored at an earlier step.

How it runs. Each trial is a function that builds and fits a Ray Train ``TorchTrainer`` over
the same per-worker loop as ``ray_jobs/train.py`` (:mod:`ray_jobs.worker`; Train V2 has no
``Tuner(TorchTrainer)``); the trainer reports every validation (``train.checkpoint_every`` is set to
``train.val_every``) with a checkpoint, and a callback passes the scores and the objective to
Tune. ASHA stops trials whose objective trails at ``--grace-steps`` steps and at each
``--reduction-factor`` multiple after it. The trial's driver holds one CPU and its workers
their own resources (``--workers-per-trial``, one GPU each with ``--gpu``); on this machine
the workers share the cores (2 trials x 1 worker x 1 thread on 2 cores) and Ray is told of one
extra CPU per concurrent trial for the drivers, which only wait.

MLflow: a parent run per sweep (the base config as params, ``tune.*`` settings, the results
table, the plot), a child run per trial (tag ``mlflow.parentRunId``; the trial's full config
as params, the training and validation metrics, ``tune/objective``, tags ``tune.status``,
``tune.pareto``, ``tune.best``); the best trial's final checkpoint is logged to its child run
and registered as ``iicnet-<task>`` with alias ``tuned``. The table (CSV, JSON) and plot (PNG)
are also written to ``--out`` (default ``.iicnet/tune/<sweep>``) and their paths printed.

Resuming. The Tune experiment and every trial's checkpoints live under
``<storage>/<sweep>/``, with the sweep's settings in ``iicnet-sweep.json``. ``--resume NAME``
(with the same ``--storage``) restores the experiment: finished trials keep their results and
are not run again, interrupted ones continue from their last checkpoint, failed ones start
over; a sweep that already finished is left as it is. Ray restores a sweep by unpickling
its state (``tuner.pkl``, the experiment and searcher state), so whoever can write to the
storage could run code here: each time a sweep stops, the sha256 of that state goes into its
MLflow parent run (tag ``iicnet.sweep_state_sha256``), and ``--resume`` refuses, before Ray
reads anything, storage whose state differs or was never sealed (a driver that was killed).
A new sweep never reuses an existing folder. Ctrl+C, SIGTERM (what ``kill``, ``ray job
stop`` and a scheduler's shutdown send) or SIGUSR1 interrupts a sweep so that it can be
resumed (exit status 3): the experiment state is saved and sealed one last time. The test
hook ``IICNET_TUNE_INTERRUPT_AFTER=N`` sends the process a SIGTERM once N trials have
finished. On a cluster, ``--storage`` must be shared by
all nodes (``s3://...``).

With no arguments, the embedded default: 4 trials of the small video variant
(``configs/video-k3-small.yaml``) for 60 steps each, validated every 20, 2 at a time, on the
sample dataset and the local MLflow store of ``ray_jobs/train.py``, with the embedding
threshold at 20 dB: about where the untrained network starts on the sample clips (20.3 dB),
so the constraint reads "no worse than the start". 60 steps are a demonstration of the
machinery, not an answer (restored PSNR moves by tenths of a dB); real sweeps run thousands of
steps on GPUs with the default 30 dB.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any

from iicnet import storage
from iicnet.storage.arrow import ray_storage
from ray_jobs import common, options, sweep_report, sweep_space
from ray_jobs.options import DEFAULT_CONFIG
from ray_jobs.sweep_state import (
    SETTINGS,
    SWEEP_TAG,
    SweepStateError,
    check_sealed,
    finished_before,
    load_settings,
    save_settings,
    seal_state,
)

TUNED_ALIAS = "tuned"
EMBEDDED = {"steps": 60, "val_every": 20, "val_items": 2, "min_embedding_psnr": 20.0}
"""The embedded default's run length, validation items and threshold (with no --config)."""
INTERRUPTED = 3
TRIAL_TAG = "iicnet.trial_id"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ray_jobs/tune.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit status: 0 swept and registered, 1 no trial produced a model, 2 bad "
               "arguments or an unreachable service, 3 interrupted (continue with --resume).")
    parser.add_argument("--config", help="YAML config the trials start from (default: "
                        "configs/video-k3-small.yaml with the embedded default's settings)")
    options.add(parser, "--data")
    parser.add_argument("--val-data", help="validation shards (default: --data)")
    parser.add_argument("--space", action="append", default=[], metavar="FIELD=SPEC",
                        help="search a config field (repeatable): loguniform:LOW:HIGH, "
                        "uniform:LOW:HIGH, randint:LOW:HIGH or choice:V1,V2,...")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.FIELD=VALUE", help="fix a config field for every "
                        "trial (repeatable); a fixed field is not searched")
    parser.add_argument("--steps", type=int, help="optimiser steps per trial (train.steps; "
                        f"embedded default {EMBEDDED['steps']})")
    parser.add_argument("--val-every", type=int, help="validate (and report to Tune) every N "
                        f"steps (train.val_every; embedded default {EMBEDDED['val_every']})")
    parser.add_argument("--search", choices=("optuna", "random", "grid"), default="optuna",
                        help="search algorithm: Optuna's TPE through Ray Tune, random, or "
                        "grid (every combination of the --space choices, and nothing of "
                        "the default space)")
    parser.add_argument("--num-samples", type=int, help="trials (default 4); with --search "
                        "grid, passes over the grid (default 1)")
    parser.add_argument("--max-concurrent", type=int, help="trials at once (default: as many "
                        "as this machine's cores or GPUs hold; on a cluster, every trial, "
                        "which the autoscaler meets by adding nodes)")
    parser.add_argument("--workers-per-trial", type=int, default=1,
                        help="Ray Train workers (DDP) per trial (default 1)")
    options.add(parser, "--gpu")
    parser.add_argument("--min-embedding-psnr", type=float, help="embedding PSNR the best "
                        "trial must reach, dB (default 30; embedded default "
                        f"{EMBEDDED['min_embedding_psnr']:g})")
    parser.add_argument("--penalty", type=float, default=10.0, help="objective lost per dB "
                        "of embedding PSNR below the threshold (default 10)")
    parser.add_argument("--grace-steps", type=int, help="ASHA: no trial stops before this "
                        "step (default: the first validation)")
    parser.add_argument("--reduction-factor", type=float, default=2.0,
                        help="ASHA: keep the best 1/N at each rung (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the search (default 0)")
    parser.add_argument("--max-failures", type=int, default=1,
                        help="restarts per trial from its latest checkpoint, of its worker "
                        "group and of the trial itself (default 1)")
    parser.add_argument("--storage", help="Tune experiment and trial checkpoints: a directory "
                        "or s3://bucket/prefix (default: .iicnet/ray_results)")
    options.add(parser, "--experiment")
    parser.add_argument("--name", help="sweep name (default: tune-<task>-<time>)")
    parser.add_argument("--resume", metavar="NAME", help="continue the sweep of this name in "
                        "--storage; its other settings come from the sweep itself")
    parser.add_argument("--out", help="folder for the table and plot (default: "
                        ".iicnet/tune/<sweep>)")
    return parser.parse_args(argv)


def new_settings(args: argparse.Namespace) -> dict[str, Any]:
    """A new sweep's settings from the command line (raises ConfigError naming a bad value)."""
    from iicnet import registry
    from iicnet.formats.config_file import load
    from iicnet.model.config import ConfigError

    embedded = args.config is None
    cfg = load(args.config or DEFAULT_CONFIG).override(args.overrides)
    fixed = [item.partition("=")[0].strip() for item in args.overrides]

    def train_field(flag: int | None, name: str) -> int:
        """The flag, else the embedded default's value (unless --set gave one), else the
        config's."""
        if flag is not None:
            return flag
        if embedded and f"train.{name}" not in fixed:
            return EMBEDDED[name]
        return getattr(cfg.train, name)

    steps = train_field(args.steps, "steps")
    val_every = min(train_field(args.val_every, "val_every"), steps)
    # Every validation is a report to Tune, and every report carries a checkpoint.
    overrides = [f"train.steps={steps}", f"train.val_every={val_every}",
                 f"train.checkpoint_every={val_every}"]
    if embedded and "train.log_every" not in fixed:
        overrides.append(f"train.log_every={max(1, val_every // 2)}")
    if embedded and "train.val_items" not in fixed:
        overrides.append(f"train.val_items={EMBEDDED['val_items']}")
    cfg = cfg.override(overrides)
    grid = args.search == "grid"
    space = sweep_space.build(cfg, args.space, fixed, defaults=not grid)
    samples = args.num_samples if args.num_samples is not None else 1 if grid else 4
    trials = samples * sweep_space.grid_size(space) if grid else samples
    grace = args.grace_steps if args.grace_steps is not None else val_every
    for flag, value in (("--num-samples", samples),
                        ("--workers-per-trial", args.workers_per_trial),
                        ("--max-concurrent", args.max_concurrent),
                        ("--grace-steps", grace)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag}: must be at least 1, got {value}")
    if grace > steps:
        raise ConfigError(f"--grace-steps: {grace} is beyond the trials' {steps} steps")
    if args.reduction_factor <= 1:
        raise ConfigError(f"--reduction-factor: must exceed 1, got {args.reduction_factor}")
    if args.penalty < 0:
        raise ConfigError(f"--penalty: must not be negative, got {args.penalty}")
    experiment = args.experiment or registry.model_name(cfg.data.task)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = args.name or f"tune-{cfg.data.task}-{stamp}-{secrets.token_hex(2)}"
    min_emb = args.min_embedding_psnr
    if min_emb is None:
        min_emb = EMBEDDED["min_embedding_psnr"] if embedded else 30.0
    return {
        "name": name, "experiment": experiment, "config": cfg.to_dict(),
        "space": [d.spec for d in space], "data": args.data and storage.absolute(args.data),
        "val_data": args.val_data and storage.absolute(args.val_data),
        "search": args.search, "seed": args.seed, "num_samples": samples, "trials": trials,
        "max_concurrent": args.max_concurrent, "workers_per_trial": args.workers_per_trial,
        "gpu": args.gpu, "min_embedding_psnr": min_emb, "penalty": args.penalty,
        "grace_steps": grace, "reduction_factor": args.reduction_factor,
        "max_failures": args.max_failures, "storage": args.storage,
    }


def resources(settings: dict[str, Any]) -> dict[str, Any]:
    """Concurrency, Ray's CPU count, worker threads and per-worker resources.

    Locally the workers of all concurrent trials share the cores; Ray is told of one more CPU
    per concurrent trial, held by the trial's driver, which only waits on its trainer. On a
    cluster the resources are Ray's and concurrency is ``--max-concurrent``, by default every
    trial at once: an autoscaling cluster adds nodes as trials ask for them, so what it holds
    at submit time says nothing of what it can hold.
    """
    workers, gpu = settings["workers_per_trial"], settings["gpu"]
    if common.on_cluster():
        return {"max_concurrent": settings["max_concurrent"] or planned_trials(settings),
                "num_cpus": None, "threads": None, "per_worker": None}
    cpus = os.cpu_count() or 1
    if gpu:  # a GPU worker asks for its GPU only; the drivers need a CPU each
        import torch

        concurrent = settings["max_concurrent"] or max(1, torch.cuda.device_count() // workers)
        return {"max_concurrent": concurrent, "num_cpus": max(cpus, concurrent),
                "threads": None, "per_worker": None}
    concurrent = settings["max_concurrent"] or max(1, cpus // workers)
    threads = max(1, cpus // (concurrent * workers))
    return {"max_concurrent": concurrent, "num_cpus": concurrent * (workers * threads + 1),
            "threads": threads, "per_worker": {"CPU": threads}}


def planned_trials(settings: dict[str, Any]) -> int:
    """How many trials the sweep runs (a grid's combinations times its passes); sweeps
    written before grids record only ``num_samples``."""
    return settings.get("trials", settings["num_samples"])


def objective_callback(min_embedding_psnr: float, penalty: float):
    """A Train callback that hands rank 0's report, with the objective added, to Tune."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class ObjectiveReport(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            first = {**metrics[0], **sweep_report.objective_metrics(
                metrics[0], min_embedding_psnr, penalty)}
            super().after_report(run_context, [first, *metrics[1:]], checkpoint)

    return ObjectiveReport()


def run_trial(values: dict[str, Any], job: dict[str, Any]) -> None:
    """One trial (a Tune function trainable): its child MLflow run and a TorchTrainer over
    the per-worker loop of :mod:`ray_jobs.worker`. Rerun after an interruption, it finds
    both again: the run by name, the trainer's latest checkpoint in its storage folder."""
    import ray.tune

    from iicnet import registry
    from iicnet.model.config import from_dict
    from ray_jobs.worker import make_trainer

    trial_id = ray.tune.get_context().get_trial_id()
    cfg = sweep_space.apply(from_dict(job["config"]), values)
    run_id = registry.start_run(
        job["tracking_uri"], job["experiment"], f"{job['sweep']}-{trial_id}", cfg, resume=True,
        tags={"mlflow.parentRunId": job["parent_run_id"], SWEEP_TAG: job["sweep"],
              TRIAL_TAG: trial_id, "tune.searched": ",".join(values)})
    trainer = make_trainer(
        cfg, data=job["data"], val_data=job["val_data"], uri=job["tracking_uri"],
        run_id=run_id, threads=job["threads"], num_workers=job["workers"], use_gpu=job["gpu"],
        per_worker=job["per_worker"], name=trial_id,
        storage_path=f"{job['storage_path']}/{job['sweep']}/train",
        filesystem=job["filesystem"], max_failures=job["max_failures"],
        callbacks=[objective_callback(job["min_embedding_psnr"], job["penalty"])])
    trainer.fit()


def interrupt_hook():
    """``IICNET_TUNE_INTERRUPT_AFTER=N``: interrupt the sweep (a SIGTERM) once N trials
    have finished; None when unset."""
    if not os.environ.get("IICNET_TUNE_INTERRUPT_AFTER"):
        return None
    from ray.tune import Callback

    class InterruptAfter(Callback):
        # Tuner.restore brings the callbacks back, so the variable is read when it counts.
        done = 0

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            after = os.environ.get("IICNET_TUNE_INTERRUPT_AFTER")
            if after and self.done == int(after):
                print(f"IICNET_TUNE_INTERRUPT_AFTER={after}: interrupting the sweep",
                      flush=True)
                os.kill(os.getpid(), signal.SIGTERM)

    return InterruptAfter()


def build_tuner(settings: dict[str, Any], job: dict[str, Any], max_concurrent: int,
                storage_path: str, filesystem: Any, resume: bool):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from iicnet.model.config import from_dict

    trainable = tune.with_resources(tune.with_parameters(run_trial, job=job), {"CPU": 1})
    if resume:
        return tune.Tuner.restore(f"{storage_path}/{settings['name']}", trainable,
                                  resume_unfinished=True, restart_errored=True,
                                  storage_filesystem=filesystem)
    base = from_dict(settings["config"])
    grid = settings["search"] == "grid"
    space = {d.field: d.to_tune(grid) for d in (sweep_space.parse(s, base)
                                                for s in settings["space"])}
    if settings["search"] == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search = OptunaSearch(seed=settings["seed"])
    else:  # random, and grid (its grid_search domains)
        from ray.tune.search import BasicVariantGenerator

        # Tune's max_concurrent_trials does not reach a generator passed in (it warns and
        # starts every trial's driver at once, leaving no CPU for their workers): the
        # generator takes the limit itself.
        search = BasicVariantGenerator(random_state=settings["seed"],
                                       max_concurrent=max_concurrent)
    scheduler = ASHAScheduler(time_attr="step", max_t=base.train.steps,
                              grace_period=settings["grace_steps"],
                              reduction_factor=settings["reduction_factor"])
    hook = interrupt_hook()
    return tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(metric="objective", mode="max", search_alg=search,
                                    scheduler=scheduler, num_samples=settings["num_samples"],
                                    max_concurrent_trials=max_concurrent),
        run_config=tune.RunConfig(name=settings["name"], storage_path=storage_path,
                                  storage_filesystem=filesystem, verbose=1,
                                  # A trial whose driver is lost (its node gone) runs again,
                                  # its trainer resuming from the trial's latest checkpoint.
                                  failure_config=tune.FailureConfig(
                                      max_failures=settings["max_failures"]),
                                  callbacks=[hook] if hook else None),
    )


def main(argv: list[str] | None = None) -> int:
    from iicnet import registry
    from iicnet.model.config import from_dict

    args = parse_args(argv)
    registry.quiet_console()
    began = time.monotonic()
    cache = common.cache_dir()
    default_uri, default_artifacts = common.default_tracking(cache)
    uri = registry.tracking_uri(default_uri)
    try:
        storage_url = args.storage or str(cache / "ray_results")
        storage_path, filesystem = ray_storage(storage_url)
        if args.resume:
            settings = load_settings(args.resume, storage_path, filesystem)
        else:
            settings = new_settings(args)
        problem = common.cluster_problem(uri, default_uri, data=settings["data"],
                                         val_data=settings["val_data"], storage=args.storage)
        if problem:
            return common.fail(problem)
        base = from_dict(settings["config"])
        options.check_gpu(settings["gpu"], "sweep")
        registry.check_tracking(uri)
        data, val_data = options.data_sources(settings["data"], settings["val_data"], base,
                                              cache)
        name, resume = settings["name"], bool(args.resume)
        if resume and finished_before(uri, settings["parent_run_id"]):
            print(f"sweep {name} has already finished: its table and plot are in the MLflow "
                  f"run {settings['parent_run_id']} (artifacts under sweep/)", flush=True)
            return 0
        if resume:
            check_sealed(uri, settings, storage_path, filesystem)
        elif options.run_exists(storage_path, name, filesystem):
            raise SweepStateError(f"--name {name}: {storage_path}/{name} already exists; "
                                  f"continue that sweep with --resume {name}, or pick another "
                                  "name")
    except (*options.setup_errors(), SweepStateError) as exc:
        return common.fail(str(exc))
    artifact_location = default_artifacts if uri == default_uri else None
    parent = registry.start_run(uri, settings["experiment"], name, base, resume=resume,
                                artifact_location=artifact_location,
                                tags={SWEEP_TAG: name, "iicnet.kind": "sweep"})
    common.watch_run(uri, parent)
    plan = resources(settings)
    common.init_ray(num_cpus=plan["num_cpus"])
    max_concurrent = plan["max_concurrent"]
    if not resume:
        settings["parent_run_id"] = parent
        save_settings(settings, storage_path, filesystem)
        log_sweep_params(uri, parent, {**settings, "max_concurrent": max_concurrent})
    job = {"sweep": name, "experiment": settings["experiment"], "config": settings["config"],
           "data": data, "val_data": val_data, "tracking_uri": uri, "parent_run_id": parent,
           "workers": settings["workers_per_trial"], "gpu": settings["gpu"],
           "per_worker": plan["per_worker"], "threads": plan["threads"],
           "storage_path": storage_path, "filesystem": filesystem,
           "max_failures": settings["max_failures"],
           "min_embedding_psnr": settings["min_embedding_psnr"], "penalty": settings["penalty"]}
    print(f"sweep {name}{' (resumed)' if resume else ''}: {planned_trials(settings)} trials of "
          f"{base.data.task} ({settings['search']} search, ASHA), {max_concurrent} at a time, "
          f"{settings['workers_per_trial']} {'GPU' if settings['gpu'] else 'CPU'} worker(s) "
          f"each, {base.train.steps} steps; searching {', '.join(settings['space'])}; "
          f"MLflow parent run {parent} at {registry.redact(uri)}", flush=True)

    tuner = build_tuner(settings, job, max_concurrent, storage_path, filesystem, resume)
    # Tune stops cleanly (state saved, trials paused) on SIGINT and SIGUSR1; a SIGTERM would
    # end the process with the state unsealed, and --resume would then refuse it.
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGUSR1))
    try:
        results = tuner.fit()
    finally:
        seal_state(uri, settings, storage_path, filesystem)
    trials = load_trials(results.experiment_path, results.filesystem)
    unfinished = [t.trial_id for t in trials if t.status not in ("TERMINATED", "ERROR")]
    tracker = registry.Tracker(uri, parent)
    if unfinished or len(trials) < planned_trials(settings):
        tracker.finish("KILLED")
        print(f"\nsweep {name} interrupted with {len(trials) - len(unfinished)} of "
              f"{planned_trials(settings)} trials finished; continue it with:\n  python "
              f"ray_jobs/tune.py --resume {name}"
              + (f" --storage {storage_url}" if args.storage else ""), flush=True)
        return INTERRUPTED
    return finish(settings, base, trials, uri, parent, filesystem, args.out, cache,
                  time.monotonic() - began)


def log_sweep_params(uri: str, run_id: str, settings: dict[str, Any]) -> None:
    """The sweep's own settings as ``tune.*`` params of the parent run."""
    from iicnet import registry

    params = {f"tune.{k}": v for k, v in settings.items()
              if k not in ("config", "space", "name", "parent_run_id")}
    for item in settings["space"]:  # a tied FIELD+FIELD: one param per field (MLflow
        fields, _, spec = item.partition("=")  # keys take no "+")
        params.update({f"tune.space.{field}": spec for field in fields.split("+")})
    registry.Tracker(uri, run_id).params(params)


def load_trials(experiment_path: str, filesystem: Any) -> list[Any]:
    """Every trial of the experiment with its status, config and last result."""
    from ray import tune

    return list(tune.ExperimentAnalysis(experiment_path, storage_filesystem=filesystem).trials)


def finish(settings: dict[str, Any], base, trials: list[Any], uri: str, parent: str,
           filesystem: Any, out: str | None, cache: Path, seconds: float) -> int:
    """Rows, child-run outcomes, the best model registered, table and plot written/logged."""
    from iicnet import registry

    fields = [s.partition("=")[0] for s in settings["space"]]
    child_runs = find_child_runs(uri, settings["experiment"], settings["name"])
    rows = []
    for trial in sorted(trials, key=lambda t: t.trial_id):
        metrics = trial.last_result or {}
        if trial.status == "ERROR":
            status = "failed"
        elif metrics.get("step", 0) >= base.train.steps:
            status = "completed"
        else:
            status = "early-stopped"
        rows.append(sweep_report.trial_row(
            trial.trial_id, {f: trial.config.get(f) for f in fields}, metrics, status,
            settings["min_embedding_psnr"], settings["penalty"],
            run_id=child_runs.get(trial.trial_id),
            checkpoint_path=metrics.get("checkpoint_path")))
    best = sweep_report.annotate(rows)
    registered = None
    if best is not None:
        registered = register_best(rows[best], base, settings, uri, filesystem)
    for row in rows:
        close_child_run(uri, row)

    out_dir = Path(out) if out else cache / "tune" / settings["name"]
    summary = {
        "sweep": settings["name"], "parent_run_id": parent, "seconds": round(seconds, 1),
        "objective": {"definition": "restored_psnr - penalty * max(0, min_embedding_psnr - "
                                    "embedding_psnr)",
                      "min_embedding_psnr": settings["min_embedding_psnr"],
                      "penalty": settings["penalty"], "mode": "max"},
        "space": settings["space"], "search": settings["search"],
        "best_trial": rows[best]["trial_id"] if best is not None else None,
        "registered": registered,
    }
    public = [{k: v for k, v in r.items() if k != "checkpoint_path"} for r in rows]
    csv_path, json_path = sweep_report.write_tables(public, fields, out_dir, summary)
    png_path = sweep_report.plot(rows, settings["min_embedding_psnr"], out_dir / "pareto.png",
                                 title=f"{settings['name']}: {len(rows)} trials")
    tracker = registry.Tracker(uri, parent)
    for path in (csv_path, json_path, png_path):
        tracker.file(path, "sweep")
    tracker.text(json.dumps(settings, indent=1), f"sweep/{SETTINGS}")
    feasible = sum(1 for r in rows if r["feasible"])
    parent_metrics = {"tune/trials": len(rows), "tune/feasible_trials": feasible,
                      "tune/seconds": seconds}
    if best is not None:
        parent_metrics.update({f"tune/best_{k}": rows[best][k] for k in
                               ("objective", "embedding_psnr", "restored_psnr")})
    tracker.metrics(parent_metrics, step=0)
    tracker.finish("FINISHED" if best is not None else "FAILED")

    print("\n" + sweep_report.format_table(public, fields), flush=True)
    print(f"\nsweep {settings['name']}: {len(rows)} trials in {seconds / 60:.1f} min, "
          f"{feasible} with embedding PSNR >= {settings['min_embedding_psnr']:g} dB "
          "(* best, P Pareto front)")
    print(f"table: {csv_path}\n       {json_path}\nplot:  {png_path}")
    if best is None:
        print("error: no trial reported validation scores; nothing registered",
              file=sys.stderr, flush=True)
        return 1
    if not rows[best]["feasible"]:
        print(f"warning: no trial reached embedding PSNR {settings['min_embedding_psnr']:g} "
              "dB; registered the highest objective instead (lower --min-embedding-psnr or "
              "train longer)", flush=True)
    print(f"registered: models:/{registered['name']}@{TUNED_ALIAS} (version "
          f"{registered['version']}), trial {rows[best]['trial_id']}: restored PSNR "
          f"{rows[best]['restored_psnr']:.2f} dB, embedding PSNR "
          f"{rows[best]['embedding_psnr']:.2f} dB", flush=True)
    return 0


def find_child_runs(uri: str, experiment: str, sweep: str) -> dict[str, str]:
    """``{trial_id: run_id}`` of the sweep's child runs."""
    from iicnet import registry

    runs = registry.find_runs(uri, experiment, {SWEEP_TAG: sweep}, has_tags=(TRIAL_TAG,))
    return {tags[TRIAL_TAG]: run_id for run_id, tags in runs.items()}


def register_best(row: dict[str, Any], base, settings: dict[str, Any], uri: str,
                  filesystem: Any) -> dict[str, Any]:
    """Log the best trial's final checkpoint to its child run and register it as
    ``iicnet-<task>@tuned``."""
    import ray.train

    from iicnet import registry

    name = registry.model_name(base.data.task)
    checkpoint = ray.train.Checkpoint(row["checkpoint_path"], filesystem=filesystem)
    with checkpoint.as_directory() as directory:
        # Its validation scores are in the trial's run already, step by step; logging them
        # again against the model would add a second value at the last step.
        model_uri = registry.log_checkpoint(uri, row["run_id"], directory)
    tags = {"sweep": settings["name"], "trial_id": row["trial_id"], "run_id": row["run_id"],
            "step": row["step"], "objective": f"{row['objective']:.4f}",
            "feasible": row["feasible"], registry.MEASURED_ON: base.train.val_measure,
            **{f"val/{k}": f"{row[k]:.4f}" for k in sweep_report.SCORE_COLUMNS}}
    version = registry.register(uri, model_uri, name, alias=TUNED_ALIAS, tags=tags)
    return {"name": name, "version": version, "model_uri": model_uri}


def close_child_run(uri: str, row: dict[str, Any]) -> None:
    """Record a trial's outcome in its child run and end it."""
    from iicnet import registry

    if not row.get("run_id"):
        return
    tracker = registry.Tracker(uri, row["run_id"])
    if row["objective"] is not None:
        tracker.metrics({"tune/objective": row["objective"]}, step=row["step"] or 0)
    tracker.tags({"tune.status": row["status"], "tune.pareto": str(row["pareto"]).lower(),
                  "tune.best": str(row["best"]).lower(),
                  "tune.feasible": str(row["feasible"]).lower()})
    tracker.finish("FAILED" if row["status"] == "failed" else "FINISHED")


if __name__ == "__main__":
    sys.exit(main())
