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
run is created with the full config as params; a ``TorchTrainer`` runs :func:`train_loop`
on every worker; the final checkpoint is logged as a model, registered, and its validation
scores become the version's tags.

Each worker streams its own share of the training shards (``iicnet.data``, resampled, so
there are no epochs) and steps an :class:`iicnet.training.Trainer` under DDP (gloo on CPU,
nccl on GPU). Rank 0 logs losses, learning rate, samples/s and the fraction of step time
spent waiting for data every ``train.log_every`` steps; every ``train.val_every`` steps all
ranks validate their share of the validation split (PSNR/SSIM as the paper's tables, summed
across ranks) and rank 0 logs the scores and a PNG grid; every ``train.checkpoint_every``
steps (and at the end) a training checkpoint goes through ``ray.train.report`` into
``<storage>/<run name>/``. A worker that dies restarts the worker group from the latest
checkpoint (``--max-failures`` times), continuing the step count; ``--resume NAME``
continues an earlier run the same way (from the newest complete checkpoint in the run's
folder, even one written after Ray's last record of the run); a checkpoint that is
incomplete (``complete.json``, written last, is missing or does not match) is skipped for
the newest complete one, named in the log. ``--resume`` of a run that finished does nothing
and says so; of a run whose driver still runs on this host it is refused. After a restart,
steps already logged are not logged again. A loss that is not finite or spikes rolls back to
the last checkpoint with half the learning rate, logged as an event.

A driver that dies (even by SIGKILL) leaves no run RUNNING: a watcher process marks the
MLflow run KILLED (:func:`ray_jobs.common.watch_run`). Ray ends the job's workers when its
driver disconnects; in case it is slow to, rank 0 also checks before every step that the
driver process (on this host) lives, and all ranks stop together when it does not.
Training that fails once the ``--max-failures`` restarts are used up exits with status 2
and one line saying why and how to resume.

Fault injection for tests: ``IICNET_FAULT_AT_STEP=N`` kills the last rank's process (SIGKILL)
when it reaches step N, once: the file named by ``IICNET_FAULT_MARKER`` records that it
happened.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from iicnet import storage
from iicnet.storage.arrow import ray_storage
from ray_jobs import common

DEFAULT_CONFIG = common.REPO / "configs" / "video-k3-small.yaml"
RECIPE_TAG = "iicnet.recipe"
"""Run tag: a digest of what determines the trained weights (config, data manifests,
workers, device), so a repeated default run is reused or resumed instead of redone."""
REGISTERED_TAG = "iicnet.registered"
DRIVER_TAG = "iicnet.driver"
"""Run tag: the driver's host, pid and start time, so workers and a later --resume can tell
whether it still lives."""
log = logging.getLogger("iicnet.train")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ray_jobs/train.py", description=__doc__.split("\n\n")[0],
        epilog="Exit status: 0 trained and registered (or, with --resume, already "
               "finished), 2 bad arguments, an unreachable service, or training that failed "
               "(the message says how to resume).")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="YAML config (default: configs/video-k3-small.yaml)")
    parser.add_argument("--data", help="training shards: a directory or s3://bucket/prefix "
                        "(default: the sample dataset, built if missing)")
    parser.add_argument("--val-data", help="validation shards (default: --data); the 'val' "
                        "split is used")
    parser.add_argument("--num-workers", type=int, default=2, help="Ray Train workers (DDP)")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker, nccl, bf16")
    parser.add_argument("--steps", type=int, help="total optimiser steps (train.steps)")
    parser.add_argument("--storage", help="checkpoints and Ray results: a directory or "
                        "s3://bucket/prefix (default: .iicnet/ray_results)")
    parser.add_argument("--experiment", help="MLflow experiment (default: iicnet-<task>)")
    parser.add_argument("--resume", metavar="RUN_NAME",
                        help="continue the run of this name in --storage from its latest "
                        "checkpoint (and its MLflow run)")
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

    cfg = load(args.config)
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    return cfg.override(overrides) if overrides else cfg


def check_data(source: str, split: str, cfg) -> int:
    """Samples in ``split`` of ``source``; raises ConfigError / FileNotFoundError / ValueError
    naming what does not fit."""
    from iicnet.tasks import check_shards

    return int(check_shards(source, cfg, split)["splits"][split]["samples"])


def recipe_digest(cfg, data: str, val_data: str, args: argparse.Namespace) -> str:
    """What determines the weights a run ends with, hashed: the config, the manifests of
    the training and validation shards (their content, not only their paths), the number
    of workers and the device."""
    import hashlib

    from iicnet.formats.shards import manifest_digest

    parts = [cfg.to_json(), str(args.num_workers), "gpu" if args.gpu else "cpu",
             manifest_digest(data), manifest_digest(val_data)]
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
        if status in ("KILLED", "FAILED") and run_exists(storage_path, filesystem, name):
            return name, status, ""
    return None


def run_exists(storage_path: str, filesystem: Any, name: str) -> bool:
    from pyarrow import fs

    filesystem = filesystem or fs.LocalFileSystem()
    return filesystem.get_file_info(f"{storage_path}/{name}").type != fs.FileType.NotFound


def previous_run(uri: str, experiment: str, name: str
                 ) -> tuple[str, str, dict[str, str]] | None:
    """``(run id, status, tags)`` of the MLflow run of training run ``name``; None if none."""
    from iicnet import registry

    runs = registry.find_runs(uri, experiment, {registry.RUN_NAME_TAG: name})
    if not runs:
        return None
    run_id = sorted(runs)[0]
    return run_id, registry.Tracker(uri, run_id).status(), runs[run_id]


def driver_identity() -> dict[str, Any]:
    """This process as workers can recognise it: host, pid and (on Linux) its start time,
    so a later process that reuses the pid is not mistaken for it."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": process_start(os.getpid())}


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def driver_alive(driver: dict[str, Any]) -> bool | None:
    """Whether the driver process is alive; None when it runs on another host (Ray's own
    job-exit handling is what stops the workers then)."""
    if not driver or driver.get("host") != socket.gethostname():
        return None
    try:
        os.kill(int(driver["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    start = driver.get("start")
    return start is None or process_start(int(driver["pid"])) == start


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
    from iicnet.storage import StorageError

    args = parse_args(argv)
    registry.quiet_console()
    if args.num_workers < 1:
        return common.fail(f"--num-workers: must be at least 1, got {args.num_workers}")
    if args.max_failures < -1:
        return common.fail(f"--max-failures: must be -1 (forever) or more, got "
                           f"{args.max_failures}")
    try:
        cfg = resolve_config(args)
    except ConfigError as exc:
        return common.fail(str(exc))
    if args.gpu and not common.on_cluster():
        import torch

        if not torch.cuda.is_available():
            return common.fail("--gpu: this machine has no CUDA GPU (leave --gpu out to train "
                               "on CPU, or submit the job to a cluster with GPUs)")
    cache = common.cache_dir()
    default_uri, default_artifacts = common.default_tracking(cache)
    uri = registry.tracking_uri(default_uri)
    artifact_location = default_artifacts if uri == default_uri else None
    problem = common.cluster_problem(uri, default_uri, data=args.data, val_data=args.val_data,
                                     storage=args.storage)
    if problem:
        return common.fail(problem)
    try:
        registry.check_tracking(uri)
        # Absolute, because Ray Train workers run in a directory of their own.
        data = storage.absolute(args.data) if args.data else common.sample_shards(cache)
        val_data = storage.absolute(args.val_data) if args.val_data else data
        check_data(data, "train", cfg)
        if check_data(val_data, "val", cfg) < 1:
            raise ValueError(f"{val_data}: the 'val' split is empty")
        storage_path, filesystem = ray_storage(args.storage or str(cache / "ray_results"))
    except registry.TrackingError as exc:
        return common.fail(str(exc))
    except (ConfigError, FileNotFoundError, ValueError, StorageError) as exc:
        return common.fail(str(exc))
    experiment = args.experiment or registry.model_name(cfg.data.task)
    recipe = recipe_digest(cfg, data, val_data, args)
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
        if not run_exists(storage_path, filesystem, name):
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
    run_id = registry.start_run(
        uri, experiment, name, cfg, artifact_location=artifact_location, resume=bool(args.resume),
        tags={"data": data, "val_data": val_data, "num_workers": str(args.num_workers),
              RECIPE_TAG: recipe,
              "device": "gpu" if args.gpu else "cpu",
              "storage": args.storage or storage_path})
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
                         max_failures=args.max_failures)
        except Exception as exc:  # Train V2 raises once the restarts are used up
            tracker.finish("FAILED")
            quiet_ray()
            return common.fail(f"training failed after {args.max_failures} restart(s): "
                               f"{failure_summary(exc)}\n{hint}")
        if result.error is not None or result.checkpoint is None:
            tracker.finish("FAILED")
            quiet_ray()
            return common.fail(f"training failed: {failure_summary(result.error)}\n{hint}")
        summary = register(cfg, result, uri, run_id, data=data, force_alias=args.force_alias)
    except KeyboardInterrupt:
        tracker.finish("KILLED")
        quiet_ray()
        print(f"\ninterrupted: run {name} stopped; its checkpoints are kept.\n"
              f"resume it: {again}" + ("  (or make run again)" if not args.name else ""),
              file=sys.stderr, flush=True)
        return 130
    except BaseException:
        tracker.finish("FAILED")
        raise
    tracker.finish()
    report(summary, uri, name, result.path)
    return 0


def fit(cfg, *, name: str, data: str, val_data: str, uri: str, run_id: str, num_workers: int,
        use_gpu: bool, storage_path: str, filesystem: Any, max_failures: int):
    """Run :func:`train_loop` on ``num_workers`` Ray Train workers; the ``ray.train.Result``."""
    local_cpus = os.cpu_count() or 1
    common.init_ray(num_cpus=None if common.on_cluster() else max(local_cpus, num_workers))
    threads = None if common.on_cluster() else max(1, local_cpus // num_workers)
    per_worker = None if threads is None or use_gpu else {"CPU": threads}
    trainer = make_trainer(cfg, data=data, val_data=val_data, uri=uri, run_id=run_id,
                           threads=threads, num_workers=num_workers, use_gpu=use_gpu,
                           per_worker=per_worker, name=name, storage_path=storage_path,
                           filesystem=filesystem, max_failures=max_failures)
    return interruptible(trainer.fit)


def interruptible(call: Callable[[], Any]) -> Any:
    """``call()`` in a thread, so that Ctrl-C reaches this process as KeyboardInterrupt.

    On the main thread Ray Train installs a SIGINT handler of its own; when Ctrl-C has also
    reached Ray's processes (a terminal signals the whole process group) the handler finds
    its controller gone and exits with status 1 and no word, so :func:`main` could neither
    mark the run nor say how to resume it. Ray does not install it off the main thread."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = call()
        except BaseException as exc:  # handed to the main thread as it is
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def make_trainer(cfg, *, data: str, val_data: str, uri: str, run_id: str, threads: int | None,
                 num_workers: int, use_gpu: bool, per_worker: dict[str, float] | None,
                 name: str, storage_path: str, filesystem: Any, max_failures: int,
                 callbacks: list[Any] | None = None):
    """The ``TorchTrainer`` of :func:`train_loop` (also what each sweep trial fits): DDP over
    ``num_workers`` workers, checkpoints (latest two kept) under ``storage_path/name``, and
    ``max_failures`` restarts from the latest checkpoint."""
    import ray.train
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        train_loop,
        train_loop_config={"config": cfg.to_dict(), "data": data, "val_data": val_data,
                           "tracking_uri": uri, "run_id": run_id, "threads": threads,
                           "driver": driver_identity(),
                           "run": (f"{storage_path}/{name}", filesystem)},
        scaling_config=ray.train.ScalingConfig(num_workers=num_workers, use_gpu=use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=filesystem,
            callbacks=callbacks,
            # Progress comes from rank 0's own log lines; Ray Train's INFO lines (each
            # report, each checkpoint, the worker group) are for its log files.
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )


class Meter:
    """Losses, step time and data wait since the last log line."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.steps, self.wait, self.busy = 0, 0.0, 0.0
        self.sums: dict[str, float] = {}

    def add(self, values: dict[str, float], wait: float, busy: float) -> None:
        self.steps += 1
        self.wait += wait
        self.busy += busy
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value

    def means(self) -> dict[str, float]:
        return {k: v / self.steps for k, v in self.sums.items()}


def train_loop(job: dict[str, Any]) -> None:
    """One Ray Train worker: :func:`train_steps`, with the first worker on each node logging
    that node's system metrics (CPU, memory, disk, network, GPU) to the run as
    ``system/node<N>/...``."""
    import ray.train

    from iicnet import registry

    context = ray.train.get_context()
    if context.get_local_rank() != 0:
        return train_steps(job)
    with registry.system_metrics(job["tracking_uri"], job["run_id"],
                                 f"node{context.get_node_rank()}",
                                 resume=ray.train.get_checkpoint() is not None):
        return train_steps(job)


def train_steps(job: dict[str, Any]) -> None:
    """Stream this worker's shards, step, validate, log (rank 0), checkpoint."""
    import ray.train
    import ray.train.torch
    import torch

    from iicnet import registry
    from iicnet.data import make_loader
    from iicnet.model.config import from_dict
    from iicnet.training import Trainer, all_reduce_sum

    cfg = from_dict(job["config"])
    # Ray Train logs each report and checkpoint at INFO; the console shows rank 0's own lines.
    # The per-report line comes from a logger named by its module's file path, outside the
    # ray.train hierarchy (Ray 2.60).
    from ray.train.v2._internal.execution import context as train_context

    for name in ("ray.train", train_context.__file__):
        logging.getLogger(name).setLevel(logging.WARNING)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    if job["threads"]:
        torch.set_num_threads(job["threads"])
    trainer = Trainer(cfg, ray.train.torch.get_device())
    tracker = registry.Tracker(job["tracking_uri"], job["run_id"]) if rank == 0 else None
    if tracker:
        console_log()
        log.info("precision: %s on %s", trainer.precision, trainer.device)
        tracker.tags({"precision": trainer.precision})
    if driver_gone(job, tracker):
        return
    resume_from(trainer, ray.train.get_checkpoint(), rank, job.get("run"))
    start = trainer.step
    trainer.wrap(lambda model: ray.train.torch.prepare_model(model, move_to_device=False))
    # After a restart, steps up to the failure were logged already: each step is logged once
    # (also when the run starts over from step 0, having nothing to resume from).
    logged = {"train": 0, "val": 0}
    if tracker:
        logged = {"train": tracker.last_step("loss/total"),
                  "val": tracker.last_step("val/restored_psnr")}
    if tracker and start:
        log.info("resumed from the checkpoint at step %d", start)
        tracker.metrics({"train/resumed_from": start}, step=start)

    # A fresh draw of shards and crops after each restart instead of replaying the first.
    seed = cfg.train.seed * 1_000_003 + start
    batches = iter(make_loader(job["data"], cfg, split="train", train=True, rank=rank,
                               world_size=world, resampled=True, seed=seed))
    val_cfg = cfg.override(["data.loader_workers=0"])
    meter = Meter()
    drained = False
    t, steps = cfg.train, cfg.train.steps
    loop_began = time.perf_counter()
    while trainer.step < steps:
        if driver_gone(job, tracker):
            return
        inject_fault(trainer.step, rank, world)
        began = time.perf_counter()
        images, reference = next(batches)
        waited = time.perf_counter() - began
        result = trainer.train_step(images, reference)
        busy = time.perf_counter() - began
        if result.exploded:
            event = trainer.rollback(result.exploded)
            meter.reset()
            if tracker:
                log.warning("%s at step %d: rolled back to step %d, lr now %.3g",
                            event["reason"], event["failed_step"], event["resumed_step"],
                            event["lr"])
                tracker.metrics({"train/rollbacks": event["rollbacks"]}, event["failed_step"])
                tracker.json(event, f"events/rollback-{event['rollbacks']:02d}-step"
                             f"{event['failed_step']:08d}.json")
            continue
        meter.add({**result.losses, "grad_norm": result.grad_norm}, waited, busy)
        step = trainer.step
        final = step == steps
        if step % t.log_every == 0 or final:
            timing = all_reduce_sum(torch.tensor([meter.wait, meter.busy], dtype=torch.float64))
            metrics = {**meter.means(), "lr": result.lr,
                       "samples_per_s": meter.steps * cfg.data.batch_size * world / meter.busy,
                       "data_wait_fraction": float(timing[0] / timing[1])}
            if tracker:
                if step > logged["train"]:
                    tracker.metrics(metrics, step)
                left = (time.perf_counter() - loop_began) / (step - start) * (steps - step)
                log.info("step %d/%d loss %.1f lr %.3g %.1f samples/s, data wait %.0f%%, "
                         "about %.1f min left", step, steps, metrics["loss/total"], result.lr,
                         metrics["samples_per_s"], 100 * metrics["data_wait_fraction"],
                         left / 60)
            meter.reset()
        scores: dict[str, float] = {}
        if step % t.val_every == 0 or final:
            val = trainer.validate(make_loader(job["val_data"], val_cfg, split="val",
                                               train=False, rank=rank, world_size=world))
            scores = val.means()
            if tracker and step > logged["val"]:
                tracker.metrics(scores, step)
                picture = validation_picture(trainer, job["val_data"], cfg)
                if picture is not None:
                    tracker.image(picture, "validation", step)
                log.info("step %d: %s", step,
                         ", ".join(f"{k[4:]} {v:.3f}" for k, v in scores.items()))
        saved = step % t.checkpoint_every == 0 or final
        if saved:
            save_and_report(trainer, rank, {"step": step, **result.losses, **scores})
        if step % t.log_every == 0 and not final and not drained:
            drained = preempted(trainer, rank, tracker, step, saved, result.losses)


def validation_picture(trainer, source: str, cfg):
    """The first validation item at a size a person can judge (a centre crop of
    ``PREVIEW_CROP`` pixels, or the whole image when smaller), captioned with each image's
    PSNR; None when the split has no item."""
    from iicnet.tasks import evaluation_items, get_task
    from iicnet.training import PREVIEW_CROP, preview

    item = next(evaluation_items(source, cfg.override([f"data.crop={PREVIEW_CROP}"]), "val"),
                None)
    if item is None:
        return None
    return preview(trainer.model, *item, trainer.device, get_task(cfg).output_names)


def preempted(trainer, rank: int, tracker, step: int, saved: bool,
              losses: dict[str, float]) -> bool:
    """Whether a node of the worker group is being drained (a spot instance's notice turned
    into a Ray drain, ``ray drain-node``, an autoscaler scaling down); if so, a checkpoint of
    this step at once, unless one was just written, so the restart that follows the node's
    loss (Ray Train's, counted against ``FailureConfig.max_preemption_failures``) loses
    almost nothing. Asked every ``train.log_every`` steps: every rank asks (Ray agrees on one
    answer across ranks), so all take the same branch."""
    import ray.train

    info = ray.train.get_preemption_info()
    if info is None:
        return False
    if tracker is not None:
        left = "" if info.deadline_ms is None else \
            f", {max(0.0, info.deadline_ms / 1000 - time.time()):.0f} s before its deadline"
        log.warning("node(s) %s of ranks %s being drained%s: checkpoint at step %d%s",
                    ", ".join(n[:12] for n in info.preempted_node_ids), info.preempted_ranks,
                    left, step, " (just written)" if saved else " now")
        tracker.metrics({"train/drain_checkpoint": step}, step)
    if not saved:
        save_and_report(trainer, rank, {"step": step, **losses})
    return True


def driver_gone(job: dict[str, Any], tracker) -> bool:
    """Whether the job's driver died (checked by rank 0, agreed by all ranks, so they all
    stop at the same step); rank 0 then marks the MLflow run KILLED.

    A driver killed with SIGKILL cannot stop its trainer, and Ray keeps a local cluster's
    workers training; they stop here instead, before the next step (and never write another
    checkpoint or log line). Only a driver on this host can be checked; on a cluster, Ray's
    job-exit handling stops the workers of a job whose driver died.
    """
    import torch

    from iicnet.training import all_reduce_sum

    dead = tracker is not None and driver_alive(job.get("driver") or {}) is False
    if not bool(all_reduce_sum(torch.tensor([float(dead)]))[0]):
        return False
    if tracker is not None:
        log.warning("the driver (pid %s) is gone: stopping the workers; the run is marked "
                    "KILLED (continue it with --resume)", job["driver"]["pid"])
        tracker.finish("KILLED")
    return True


def resume_from(trainer, latest, rank: int, run: tuple[str, Any] | None = None) -> bool:
    """Load the newest complete checkpoint of the run; whether there was one to load.

    The candidates are Ray's latest checkpoint and the ``step-*`` folders beside it (or, when
    Ray hands none, in ``run``: the run's storage folder and its pyarrow filesystem), newest
    first. A folder newer than Ray's record is one written just before an interruption
    (Ctrl-C between the upload and Ray's bookkeeping); an incomplete or damaged one is
    skipped for the next, named in the log, so a restart never fails on a half-copied one."""
    import ray.train

    from iicnet.formats.checkpoint import CheckpointError

    if latest is not None:
        folder, filesystem = latest.path.rstrip("/").rpartition("/")[0], latest.filesystem
    elif run is not None:
        folder, filesystem = run
    else:
        return False
    candidates = step_folders(folder, filesystem)
    if latest is not None and latest.path.rstrip("/") not in candidates:
        candidates.insert(0, latest.path.rstrip("/"))
    if latest is None and not candidates:
        return False
    problem: CheckpointError | None = None
    for candidate in candidates:
        try:
            with ray.train.Checkpoint(candidate, filesystem=filesystem
                                      ).as_directory() as directory:
                trainer.load(directory)
        except CheckpointError as exc:
            problem = problem or exc
            continue
        if rank == 0 and problem is not None:
            log.warning("%s; resuming from the last complete checkpoint, %s", problem,
                        candidate)
        elif rank == 0 and (latest is None or candidate != latest.path.rstrip("/")):
            log.info("resuming from %s, written after Ray's last record of the run", candidate)
        return True
    where = "beside it" if latest is not None else f"in {folder}"
    raise CheckpointError(f"{problem}; no complete checkpoint {where} to resume from")


def step_folders(folder: str, filesystem: Any) -> list[str]:
    """The ``step-*`` folders of a run's storage folder, newest first (none if it is not
    there yet)."""
    from pyarrow import fs

    filesystem = filesystem or fs.LocalFileSystem()
    infos = filesystem.get_file_info(fs.FileSelector(folder, allow_not_found=True))
    return sorted((i.path for i in infos if i.type == fs.FileType.Directory
                   and i.base_name.startswith("step-")), reverse=True)


def console_log() -> None:
    """Rank 0's progress lines (steps, validation, rollbacks) on the worker's stdout, which
    Ray forwards to the driver's console (``ray job logs`` on a cluster)."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def save_and_report(trainer, rank: int, metrics: dict[str, float]) -> None:
    """Every rank reports (a barrier); rank 0 attaches the training checkpoint."""
    import ray.train

    name = f"step-{trainer.step:08d}" + (f"-r{trainer.rollbacks}" if trainer.rollbacks else "")
    if rank != 0:
        trainer.last_good = trainer.capture()
        ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
        return
    with tempfile.TemporaryDirectory() as directory:
        trainer.save(directory)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                         checkpoint_dir_name=name)


def inject_fault(step: int, rank: int, world: int) -> None:
    """The test hook of the module docstring: SIGKILL the last rank once at a given step."""
    at = os.environ.get("IICNET_FAULT_AT_STEP")
    marker = os.environ.get("IICNET_FAULT_MARKER")
    if at is None or marker is None or rank != world - 1 or step != int(at):
        return
    try:
        Path(marker).touch(exist_ok=False)
    except FileExistsError:
        return
    log.warning("fault injection: killing rank %d (pid %d) at step %d", rank, os.getpid(), step)
    os.kill(os.getpid(), signal.SIGKILL)


def register(cfg, result, uri: str, run_id: str, *, data: str, force_alias: bool = False
             ) -> dict[str, Any]:
    """Log the final checkpoint as a model and register it with its validation scores as
    version tags; alias ``candidate`` moves to it only if its restored PSNR beats the
    current holder's (:func:`iicnet.registry.claim_alias`) or ``force_alias``."""
    from iicnet import registry
    from iicnet.formats import checkpoint

    scores = {k: v for k, v in result.metrics.items() if k.startswith("val/")}
    step = result.metrics.get("step")
    name = registry.model_name(cfg.data.task)
    with result.checkpoint.as_directory() as directory:
        checkpoint.verify(directory)  # only a complete checkpoint becomes a model version
        model_uri = registry.log_model(uri, run_id, directory, metrics=scores, step=step)
    card = registry.model_card(cfg, scores, data=data, step=step, run_id=run_id)
    version = registry.register(uri, model_uri, name, alias=None, description=card, tags={
        **{k: f"{v:.4f}" for k, v in scores.items()}, "step": str(step), "run_id": run_id})
    claim = registry.claim_alias(uri, name, registry.DEFAULT_ALIAS, version, registry.RANKED_BY,
                                 force=force_alias)
    registry.Tracker(uri, run_id).tags({REGISTERED_TAG: f"models:/{name}/{version}"})
    return {"name": name, "version": version, "alias": registry.DEFAULT_ALIAS,
            "claim": claim, "model_uri": model_uri, "scores": scores}


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
        f"registered: models:/{summary['name']}/{summary['version']}; "
        f"{claim.describe('restored PSNR')}",
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
