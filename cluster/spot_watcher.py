"""Turn an EC2 spot interruption notice into a Ray drain of this node.

EC2 gives a spot instance two minutes' notice before it reclaims it: the instance metadata
path ``/latest/meta-data/spot/instance-action`` answers 404 until then, and afterwards
``{"action": "terminate", "time": "2026-12-02T22:00:00Z"}``. This watcher polls it (IMDSv2:
a session token first) and, when the notice comes, runs ``ray drain-node`` for this node with
reason preemption and the notice's deadline. Ray Train then tells the training loop, which
writes a checkpoint at once (``ray_jobs/train.py``), and restarts the worker group on
another node when this one goes, losing almost nothing.

Started on each spot worker by ``cluster/template.yaml``::

    python cluster/spot_watcher.py --address HEAD_IP:6379

``--node-id`` names the node (default: the node id of the one raylet on this machine);
``--metadata-url`` is for tests (a loopback stand-in for the metadata service). Exits 0 after
draining, 2 on bad arguments, 1 if the drain fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

METADATA = "http://169.254.169.254"
NOTICE = "/latest/meta-data/spot/instance-action"
TOKEN = "/latest/api/token"


def notice(base: str, timeout: float = 2.0) -> dict | None:
    """The spot interruption notice, or None while there is none."""
    token_request = urllib.request.Request(
        base + TOKEN, method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"})
    with urllib.request.urlopen(token_request, timeout=timeout) as answer:
        token = answer.read().decode()
    request = urllib.request.Request(base + NOTICE,
                                     headers={"X-aws-ec2-metadata-token": token})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def seconds_left(found: dict, now: float | None = None) -> int:
    """Seconds until the notice's ``time`` (at least 0); 120 when it has none."""
    when = found.get("time")
    if not when:
        return 120
    deadline = datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()
    return max(0, int(deadline - (time.time() if now is None else now)))


def local_node_id() -> str | None:
    """The node id of the raylet running on this machine, from its command line; None while
    none runs (the watcher starts before Ray does)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not args or not args[0].endswith(b"raylet"):
            continue
        found |= {a.split(b"=", 1)[1].decode() for a in args if a.startswith(b"--node_id=")}
    if len(found) > 1:
        raise SystemExit(f"spot_watcher: {len(found)} raylets on this machine; pass --node-id")
    return found.pop() if found else None


def drain(address: str, node_id: str, found: dict) -> int:
    ray = str(Path(sys.executable).with_name("ray"))
    left = seconds_left(found)
    command = [ray, "drain-node", "--address", address, "--node-id", node_id,
               "--reason", "DRAIN_NODE_REASON_PREEMPTION",
               "--reason-message", f"EC2 spot interruption: {found.get('action', '?')} at "
                                   f"{found.get('time', '?')}",
               "--deadline-remaining-seconds", str(left)]
    print(f"spot_watcher: {found.get('action', '?')} notice, {left} s left: draining node "
          f"{node_id}", flush=True)
    return 0 if subprocess.run(command).returncode == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", required=True, help="the head's GCS address, HOST:PORT")
    parser.add_argument("--node-id", help="this node's Ray id (default: the local raylet's)")
    parser.add_argument("--metadata-url", default=METADATA,
                        help="instance metadata service (default: EC2's)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between polls")
    args = parser.parse_args(argv)
    if args.interval <= 0:
        parser.error(f"--interval: must be positive, got {args.interval}")
    node_id = args.node_id
    while node_id is None:
        node_id = local_node_id()
        if node_id is None:
            time.sleep(args.interval)
    while True:
        try:
            found = notice(args.metadata_url.rstrip("/"))
        except (OSError, ValueError) as exc:  # the service hiccups; keep watching
            print(f"spot_watcher: metadata service: {exc}", file=sys.stderr, flush=True)
            found = None
        if found is not None:
            return drain(args.address, node_id, found)
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
