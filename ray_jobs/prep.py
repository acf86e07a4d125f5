"""Data preparation fanned out as Ray tasks: one task per shard, the manifest last.

    python ray_jobs/prep.py davis --root SRC --out s3://bucket/davis      # a private local Ray
    ray job submit --working-dir . -- \\
        python ray_jobs/prep.py davis --root /data/DAVIS --out s3://bucket/davis

The arguments are those of ``python -m data_prep`` (same layouts, same shards: byte for byte,
so the manifest is the same too), plus ``--address`` (a Ray cluster to join; default
``RAY_ADDRESS``, else a private local Ray; ``local`` forces the latter) and ``--shared-root``.
``--workers`` is the number of threads each task packs items with.

The driver plans the shards (``data_prep.shards.plan_shards``: a file listing, no pixels),
keeps every shard that an earlier run finished (its ``.progress`` record matches the plan),
submits one task per missing shard, shows a progress bar as tasks complete and, once all
have, writes ``manifest.json`` from the shards' records. Each task runs
``data_prep.shards.write_shard``: read and check the shard's source files, write the tar
under a temporary name (or upload it: an S3 object only appears complete), then its progress
record. A crash at any point leaves finished shards and their records; running the same
command again writes only the rest. A task whose worker died is retried by Ray.

Where tasks run. ``--root`` is a folder on the driver's machine, so tasks are pinned to the
driver's node. When ``--root`` is on a filesystem that every node mounts at the same path
(EFS, FSx, NFS), ``--shared-root`` lets them run on any node.

S3. Tasks reach ``s3://`` with the standard AWS variables. Those set in the driver's
environment (``AWS_*``: keys, region, endpoint) go to each task as an argument and are set in
its worker's environment while it runs. Not through the task's ``runtime_env``: Ray's
runtime-env agent logs every ``env_vars`` value, secret keys included, in
``logs/runtime_env_agent.log`` (seen with Ray 2.60), and shows them in the dashboard. On a
cluster with an instance profile there are none to hand over; each node uses its role.

Bad source files are reported by the driver as each shard completes (``skipped PATH:
REASON``), counted in the summary and listed under ``skipped`` in the manifest; with
``--strict`` the first one stops the run: exit status 1, no manifest. Exit status 1 also for
an unreadable root or destination, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from tqdm import tqdm

from data_prep import cli as data_prep_cli
from data_prep.shards import (
    MANIFEST,
    BadFile,
    OutputError,
    PrepError,
    Report,
    ShardPlan,
    exclusive,
    finished_record,
    plan_shards,
    prepare_output,
    write_manifest,
    write_shard,
)
from iicnet import storage
from iicnet.storage import StorageError
from ray_jobs import common

_OWN = ("address", "shared_root")
"""This front end's arguments: not options of the dataset."""


def _own_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray cluster to join (host:port, ray://..., auto); "
                        "default: RAY_ADDRESS, else a private local Ray ('local' forces it)")
    parser.add_argument("--shared-root", action="store_true",
                        help="--root is on a filesystem every node mounts at the same path: "
                        "run tasks on any node (default: on the driver's node)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = data_prep_cli.build_parser("ray_jobs/prep.py", _own_arguments)
    parser.description = __doc__.split("\n\n")[0]
    return parser.parse_args(argv)


class TaskReport(Report):
    """A task's bad files, kept for the driver to print.

    Printed in the task, they would reach the driver through Ray's log forwarding, which
    folds lines that differ only in numbers (``00041.jpg``, ``00042.jpg``) into one
    "[repeated Nx]" line: every bad file must be named, so the driver prints them.
    """

    def add(self, path: Path | str, reason: str) -> None:
        if self.strict:
            raise PrepError(f"{path}: {reason} (--strict)")
        with self._lock:
            self.bad.append(BadFile(str(path), reason))


def aws_environment() -> dict[str, str]:
    """The driver's ``AWS_*`` variables (credentials, region, endpoint) for the tasks."""
    return {name: value for name, value in os.environ.items() if name.startswith("AWS_")}


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` for the duration, then put back what was there."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def pack_shard(layout: str, plan: ShardPlan, out: str, strict: bool, threads: int,
               env: dict[str, str]) -> dict[str, Any]:
    """The body of one Ray task: write one shard and its progress record, with the driver's
    AWS variables ``env`` set (a worker runs one task at a time)."""
    pack = data_prep_cli.LAYOUTS[layout].pack
    with environment(env), \
            ThreadPoolExecutor(threads) if threads > 1 else nullcontext() as pool:
        return write_shard(plan, pack, out, TaskReport(strict), pool)


def start_ray(address: str | None) -> bool:
    """Join ``address`` (or ``RAY_ADDRESS``) or start a private local Ray; True when this
    call started or joined it (so it is ours to shut down)."""
    import ray

    if ray.is_initialized():
        return False
    if address == "local":
        os.environ.pop("RAY_ADDRESS", None)
    elif address:
        os.environ["RAY_ADDRESS"] = address
    common.init_ray()
    return True


def run_tasks(layout: str, plans: list[ShardPlan], out: str, args: argparse.Namespace,
              bar: tqdm) -> dict[str, dict[str, Any]]:
    """Write ``plans`` as Ray tasks; their records by shard name, printing bad files and
    advancing ``bar`` as each completes. On the first failure the rest are cancelled."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    options: dict[str, Any] = {"num_cpus": 1}
    if not args.shared_root:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False)
    task = ray.remote(pack_shard).options(**options)
    env = aws_environment()
    pending = {task.remote(layout, plan, out, args.strict, max(1, args.workers), env): plan
               for plan in plans}
    records: dict[str, dict[str, Any]] = {}
    try:
        while pending:
            [done], _ = ray.wait(list(pending), num_returns=1)
            plan = pending.pop(done)
            record = records[plan.name] = ray.get(done)
            for bad in record["skipped"]:
                tqdm.write(f"skipped {bad['path']}: {bad['reason']}", file=sys.stderr)
            bar.update(len(plan.items))
            if bar.disable:  # no terminal (e.g. a job's log): one line per shard instead
                print(f"{plan.name}: {record['samples']} samples ({len(records)}/{len(plans)} "
                      "shards written)", file=sys.stderr, flush=True)
    finally:
        for ref in pending:
            ray.cancel(ref)
    return records


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Plan, reuse finished shards, fan the rest out, write the manifest; returns it."""
    module = data_prep_cli.LAYOUTS[args.command]
    if not args.root.is_dir():
        raise PrepError(f"--root {args.root}: not a directory")
    began = time.monotonic()
    plans = plan_shards(module.plan(args.root, args), args.shard_size)
    with exclusive(args.out):  # a second prep into the same local folder is refused
        return _prepare(args, module, plans, began)


def _prepare(args: argparse.Namespace, module: Any, plans: list[ShardPlan],
             began: float) -> dict[str, Any]:
    names = prepare_output(args.out)
    records = {}
    for plan in plans:
        record = finished_record(args.out, plan, names)
        if record is not None:
            records[plan.name] = record
    todo = [plan for plan in plans if plan.name not in records]
    if todo:
        # A reader must never see a manifest that points at shards being replaced.
        if MANIFEST in names:
            storage.remove(storage.join(args.out, MANIFEST))
        started = start_ray(args.address)
        try:
            with tqdm(total=sum(len(p.items) for p in plans), unit="item", file=sys.stderr,
                      initial=sum(len(p.items) for p in plans if p.name in records),
                      desc=f"{module.NAME}: {len(todo)} tasks", disable=None) as bar:
                records.update(run_tasks(module.NAME, todo, args.out, args, bar))
        finally:
            if started:
                import ray

                ray.shutdown()
    manifest = write_manifest(
        module.NAME, plans, records, args.out, shard_size=args.shard_size,
        options=data_prep_cli.layout_options(args, ignore=_OWN))
    splits = ", ".join(f"{split} {info['samples']} samples / {len(info['shards'])} shards"
                       for split, info in manifest["splits"].items())
    print(f"{module.NAME}: {splits} -> {args.out} ({len(todo)} shards written by Ray tasks, "
          f"{len(plans) - len(todo)} finished shards reused) in {time.monotonic() - began:.1f} s",
          file=sys.stderr, flush=True)
    if manifest["skipped"]:
        print(f"{module.NAME}: skipped {len(manifest['skipped'])} bad source files (listed "
              f"under 'skipped' in {MANIFEST})", file=sys.stderr, flush=True)
    return manifest


def main(argv: list[str] | None = None) -> int:
    import ray.exceptions

    args = parse_args(argv)
    if args.command == "samples":  # small and local: nothing to fan out
        return data_prep_cli.main(argv)
    try:
        prepare(args)
    except ray.exceptions.RayTaskError as exc:
        if not isinstance(exc.cause, PrepError | StorageError):
            raise
        return common.fail(str(exc.cause), code=1)
    except OutputError as exc:  # an output that cannot be written, or is being written
        return common.fail(str(exc))
    except (PrepError, StorageError) as exc:
        return common.fail(str(exc), code=1)
    except ray.exceptions.RayError as exc:
        return common.fail(f"{exc}\nshards finished so far are kept: run the same command "
                           "again to write the rest", code=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
