"""Send what a training run could not send to MLflow during an outage: its sync file.

    MLFLOW_TRACKING_URI=http://host:5000 \\
        python -m ray_jobs.sync_tracking RUN_DIR/tracking-sync.jsonl

The file (JSON lines, written by rank 0 beside the run's checkpoints when the tracking
server was unreachable at the end of training) names the MLflow run; this sends its metrics,
tags and files in order, and removes the file once all went. Exit status 0 synced, 2 a bad
file or an unreachable server (what was sent stays sent; the file keeps the rest).
"""

from __future__ import annotations

import argparse
import sys

from ray_jobs import common


def main(argv: list[str] | None = None) -> int:
    from iicnet import registry
    from iicnet.registry import buffered

    parser = argparse.ArgumentParser(prog="python -m ray_jobs.sync_tracking",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="the run's tracking-sync.jsonl (a path or s3:// URL)")
    args = parser.parse_args(argv)
    registry.quiet_console()
    buffered.bound_requests()
    try:
        uri = registry.tracking_uri()
        registry.check_tracking(uri)
        sent = buffered.sync(args.file, uri, {"register": lambda run_id, entry: registered(
            uri, run_id, entry)})
    except (registry.TrackingError, ValueError, OSError, KeyError) as exc:
        return common.fail(str(exc))
    except Exception as exc:  # noqa: BLE001  MLflow's errors: one line, not a traceback
        return common.fail(f"{args.file}: sync stopped ({exc}); run this command again")
    print(f"synced {sent} item(s) from {args.file} to {registry.redact(uri)}", flush=True)
    return 0


def registered(uri: str, run_id: str, entry: dict) -> None:
    """A registration the run could not do at its end: its final checkpoint, registered as
    ``ray_jobs/train.py`` would have (the version's tags, the model card, the alias)."""
    import json
    from pathlib import Path

    from iicnet.model.config import from_dict
    from ray_jobs.registration import register_directory, report_line

    directory = Path(entry["checkpoint"])
    config_file = directory / "config.json"
    cfg = from_dict(json.loads(config_file.read_text()), str(config_file))
    summary = register_directory(cfg, str(directory), uri, run_id, scores=entry["scores"],
                                 step=entry["step"], data=entry["data"],
                                 force_alias=entry.get("force_alias", False),
                                 model_name=entry.get("model_name"))
    print(report_line(summary), flush=True)


if __name__ == "__main__":
    sys.exit(main())
