"""The worker side of training: what every Ray Train worker runs, and the trainer that runs it.

:func:`make_trainer` builds the ``TorchTrainer`` (``ray_jobs/train.py`` fits one per run,
``ray_jobs/tune.py`` one per trial); each of its workers runs :func:`train_loop`. A worker
streams its own share of the training shards (``iicnet.data``, resampled, so there are no
epochs) and steps an :class:`iicnet.training.Trainer` under DDP (gloo on CPU, nccl on GPU).
Rank 0 logs losses, learning rate, samples/s and the fraction of step time spent waiting for
data every ``train.log_every`` steps; every ``train.val_every`` steps all ranks validate
their share of the validation split (:mod:`ray_jobs.validation`: full frames by default,
through the code of ``iicnet eval``) and rank 0 logs the scores, the whole evaluation as
JSON and a PNG grid; every
``train.checkpoint_every`` steps (and at the end) :func:`save_and_report` hands a training
checkpoint to ``ray.train.report``.

A restarted worker group resumes from the newest complete checkpoint of the run
(:func:`resume_from`), continuing the step count, and logs no step twice. A node being
drained gets a checkpoint at once (:func:`preempted`). Rank 0 checks before every step that
the driver process (on this host) still lives, and all ranks stop together when it does not
(:func:`halted`; the driver's identity comes from :func:`driver_identity`). When the driver
asks (Ctrl-C or SIGTERM, :mod:`ray_jobs.stopping`), they checkpoint the step they are at and
return.

Fault injection for tests: ``IICNET_FAULT_AT_STEP=N`` kills the last rank's process (SIGKILL)
when it reaches step N, once: the file named by ``IICNET_FAULT_MARKER`` records that it
happened (:func:`inject_fault`). ``IICNET_FAULT_STEP_S=S`` makes every step take at least S
seconds (:func:`pace`), so that a test's notice or kill lands mid-run on a fast machine too.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("iicnet.train")
"""Rank 0's progress lines (the logger's name is what train.py's console has always shown)."""


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


def make_trainer(cfg, *, data: str, val_data: str, uri: str, run_id: str, threads: int | None,
                 num_workers: int, use_gpu: bool, per_worker: dict[str, float] | None,
                 name: str, storage_path: str, filesystem: Any, max_failures: int,
                 callbacks: list[Any] | None = None, init: bytes | None = None,
                 stop: Any = None):
    """The ``TorchTrainer`` of :func:`train_loop` (also what each sweep trial fits): DDP over
    ``num_workers`` workers, checkpoints (latest two kept) under ``storage_path/name``, and
    ``max_failures`` restarts from the latest checkpoint. ``init``: safetensors bytes of the
    weights a run with no checkpoint yet starts from (fine-tuning), else random ones.
    ``stop``: the driver's :class:`ray_jobs.stopping.StopFlag` (a Ray actor), asked before
    every step; when set, the workers checkpoint the step they are at and return."""
    import ray.train
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        train_loop,
        train_loop_config={"config": cfg.to_dict(), "data": data, "val_data": val_data,
                           "tracking_uri": uri, "run_id": run_id, "threads": threads,
                           "driver": driver_identity(), "init": init, "stop": stop,
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

    from iicnet.data import make_loader
    from iicnet.model.config import from_dict
    from iicnet.training import Trainer, all_reduce_sum
    from ray_jobs import validation
    from ray_jobs.stopping import given_up

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
    tracker = tracker_of(job) if rank == 0 else None
    if tracker:
        console_log()
        log.info("precision: %s on %s", trainer.precision, trainer.device)
        tracker.tags({"precision": trainer.precision})
    if halted(job, tracker):
        return
    if not resume_from(trainer, ray.train.get_checkpoint(), rank, job.get("run")) \
            and job.get("init"):
        from safetensors.torch import load

        trainer.start_from(load(job["init"]))
        if tracker:
            log.info("starting from the --init weights (no checkpoint of this run yet)")
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
    meter = Meter()
    drained = False
    t, steps = cfg.train, cfg.train.steps
    loop_began = time.perf_counter()
    saved_at, losses = start, {}
    while trainer.step < steps:
        halt = halted(job, tracker)
        if halt == "stop":
            if tracker and not given_up(job.get("stop")):
                log.warning("stop requested by the driver: checkpoint at step %d%s",
                            trainer.step, " (just written)" if saved_at == trainer.step else "")
            if saved_at != trainer.step:
                save_and_report(trainer, rank, {"step": trainer.step, **losses}, job)
            break
        if halt:
            return
        inject_fault(trainer.step, rank, world)
        began = time.perf_counter()
        images, reference = next(batches)
        waited = time.perf_counter() - began
        result = trainer.train_step(images, reference)
        pace(began)
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
        losses = result.losses
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
            scores, evaluation = validation.validate(trainer, job["val_data"], cfg, rank, world)
            if tracker and step > logged["val"]:
                tracker.metrics(scores, step)
                tracker.json(evaluation, f"validation/step-{step:08d}.json")
                picture = validation_picture(trainer, job["val_data"], cfg)
                if picture is not None:
                    tracker.image(picture, "validation", step)
                log.info("step %d: %s", step,
                         ", ".join(f"{k[4:]} {v:.3f}" for k, v in scores.items()))
        saved = step % t.checkpoint_every == 0 or final
        if saved:
            save_and_report(trainer, rank, {"step": step, **result.losses, **scores}, job)
            saved_at = step
        if step % t.log_every == 0 and not final and not drained:
            drained = preempted(trainer, rank, tracker, step, saved, result.losses, job)
            saved_at = step if drained else saved_at
    if tracker:
        tracking_summary(tracker)


def tracker_of(job: dict[str, Any]):
    """Rank 0's tracker: MLflow calls bounded to seconds, and metrics that cannot be sent
    buffered (then written to the run folder's sync file; :mod:`iicnet.registry.buffered`)."""
    from iicnet.registry import buffered

    buffered.bound_requests()
    folder, filesystem = job["run"]
    sync_file = f"{folder if filesystem is None else 's3://' + folder}/{buffered.SYNC_FILE}"
    return buffered.BufferedTracker(job["tracking_uri"], job["run_id"], sync_file)


def tracking_summary(tracker) -> None:
    """Say at the end of training what reached MLflow and how to send the rest."""
    from iicnet.registry import redact

    left = tracker.close()
    if left is None:
        return
    steps = sorted({e["step"] for e in tracker.pending if e["kind"] == "metrics"})
    where = f"steps {steps[0]}-{steps[-1]}" if steps else "no metrics"
    kept = tracker.parked + tracker.pending
    log.warning("tracking: metrics of %d step(s) reached MLflow at %s; not sent: %s (%d "
                "item(s)%s) kept in %s. Send them once the server %s:\n  "
                "MLFLOW_TRACKING_URI=%s python -m ray_jobs.sync_tracking %s",
                len(tracker.sent_steps), redact(tracker.uri), where, len(kept),
                f"; lost: {', '.join(tracker.dropped)}" if tracker.dropped else "", left,
                "stores files again" if tracker.files_refused else "is back",
                redact(tracker.uri), left)


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
              losses: dict[str, float], job: dict[str, Any]) -> bool:
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
        save_and_report(trainer, rank, {"step": step, **losses}, job)
    return True


def halted(job: dict[str, Any], tracker) -> str | None:
    """Why the workers stop before the next step, checked by rank 0 and agreed by all ranks
    (so they all stop at the same step): ``"driver gone"`` when the job's driver died (rank 0
    then marks the MLflow run KILLED), ``"stop"`` when the driver asked for a clean stop
    (:mod:`ray_jobs.stopping`), else None.

    A driver killed with SIGKILL cannot stop its trainer, and Ray keeps a local cluster's
    workers training; they stop here instead, before the next step (and never write another
    checkpoint or log line). Only a driver on this host can be checked; on a cluster, Ray's
    job-exit handling stops the workers of a job whose driver died.
    """
    import torch

    from iicnet.training import all_reduce_sum
    from ray_jobs.stopping import stop_requested

    dead = tracker is not None and driver_alive(job.get("driver") or {}) is False
    asked = tracker is not None and not dead and stop_requested(job.get("stop"))
    votes = all_reduce_sum(torch.tensor([float(dead), float(asked)]))
    if bool(votes[1]):
        return "stop"
    if not bool(votes[0]):
        return None
    if tracker is not None:
        log.warning("the driver (pid %s) is gone: stopping the workers; the run is marked "
                    "KILLED (continue it with --resume)", job["driver"]["pid"])
        tracker.finish("KILLED")
    return "driver gone"


def resume_from(trainer, latest, rank: int, run: tuple[str, Any] | None = None) -> bool:
    """Load the newest complete checkpoint of the run; whether there was one to load.

    The candidates are Ray's latest checkpoint and the ``step-*`` folders beside it (or, when
    Ray hands none, in ``run``: the run's storage folder and its pyarrow filesystem), newest
    first. A folder newer than Ray's record is one written just before an interruption
    (Ctrl-C between the upload and Ray's bookkeeping); an incomplete or damaged one is
    skipped for the next, named in the log, so a restart never fails on a half-copied one.
    So is one that is listed but holds no object: what an S3-compatible server that keeps
    objects as files (``rclone serve s3``) shows of a folder whose upload was killed in its
    first multipart upload (only the server's temporary part file is in it)."""
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
        except FileNotFoundError:
            problem = problem or CheckpointError(f"{candidate} holds no file (an upload cut "
                                                 "short before its first file was whole)")
            continue
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


def save_and_report(trainer, rank: int, metrics: dict[str, float],
                    job: dict[str, Any]) -> None:
    """Every rank reports (a barrier); rank 0 attaches the training checkpoint. A disk
    that is full (the local staging folder's or the run storage's) stops the run after
    this step (:func:`did_not_fit`), with no checkpoint folder left half-copied."""
    import ray.train

    name = f"step-{trainer.step:08d}" + (f"-r{trainer.rollbacks}" if trainer.rollbacks else "")
    if rank != 0:
        trainer.last_good = trainer.capture()
        ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
        return
    with tempfile.TemporaryDirectory() as directory:
        try:
            trainer.save(directory)
        except OSError as exc:  # the local staging folder's disk
            ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
            return did_not_fit(exc, f"{directory} (the local staging folder)", name, job)
        try:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(
                directory), checkpoint_dir_name=name)
        except OSError as exc:  # the run's storage
            folder, filesystem = job["run"]
            discard(f"{folder}/{name}", filesystem)
            return did_not_fit(exc, f"{folder}/{name}", name, job)


def did_not_fit(exc: OSError, where: str, name: str, job: dict[str, Any]) -> None:
    """A checkpoint that did not fit: raise ``exc`` again unless it is a full disk or a
    used-up quota; for those, ask all ranks to stop before the next step (a restart would
    only train up to the same wall) with the reason, which the driver prints (exit 2)."""
    from iicnet import storage
    from ray_jobs.stopping import give_up

    why = storage.out_of_space(exc)
    if why is None:
        raise exc
    reason = f"checkpoint {name} does not fit: {why} ({where})"
    if not give_up(job.get("stop"), reason):  # a sweep's trial: Tune ends the trial
        raise exc
    log.error("%s; the workers stop before the next step", reason)


def discard(path: str, filesystem: Any) -> None:
    """Remove a checkpoint folder that was being copied when the copy failed, so that no
    half of one lies under a final name (a best effort: the copy's own error is the news)."""
    from pyarrow import fs

    try:
        (filesystem or fs.LocalFileSystem()).delete_dir(path)
    except OSError:
        pass


def pace(began: float) -> None:
    """The pacing hook of the module docstring: sleep out the rest of a step that took less
    than ``IICNET_FAULT_STEP_S`` seconds since ``began`` (``time.perf_counter``)."""
    least = float(os.environ.get("IICNET_FAULT_STEP_S") or 0)
    left = least - (time.perf_counter() - began)
    if left > 0:
        time.sleep(left)


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


