"""Samples/s of the training input pipeline: local shards, loopback S3 and loose files.

The training pipeline of the video task as published (K=5, step 5, random 144x144 crops,
batch 2) over the DAVIS-layout sample dataset (854x480 JPEG frames), decoding in
``data.loader_workers`` DataLoader worker processes:

- ``local_shards``: ``make_loader`` in resampled (epoch-less) mode over shards on disk;
- ``s3_shards``: the same over the same shards uploaded to ``rclone serve s3`` on loopback
  (started here, with random keys);
- ``loose_files``: a map-style dataset over the DAVIS folder itself that opens and decodes
  the K JPEG files of each window with PIL, as a loader without shards would.

A sample is one (K frames, reference) training item. The requirement is at least 5x
the samples/s that training the published config consumes on this machine: the fastest
formulation in ``bench/results/train_step-cpu.json`` when it exists, else batch 2 per the
18 s step measured on this CPU class (``shared/STACK.md``). Writes
``bench/results/loader.json``.

    python bench/loader.py [--batches 250] [--workers 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from data_prep import davis, samples
from data_prep.cli import main as prep
from iicnet.data import make_loader
from iicnet.model.config import Config, from_dict
from iicnet.tasks import get_task
from iicnet.tasks.base import crop_offset

RESULTS = Path(__file__).parent / "results"
PUBLISHED_STEP_S = 18.0  # shared/STACK.md: K=5, 10 blocks, nf 64, 144 crops, batch 2, 2 threads


class LooseWindows(Dataset):
    """Every video window of the DAVIS train split, read from the JPEG files themselves."""

    def __init__(self, root: Path, cfg: Config):
        self.task = get_task(cfg)
        self.cfg = cfg
        span = cfg.data.step * (cfg.model.num_images - 1)
        clips = davis.plan(root, argparse.Namespace(split="train"))["train"]
        self.windows = [(list(item.files.values()), start) for item in clips
                        for start in range(len(item.files) - span)]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        frames, start = self.windows[index]
        paths = [frames[start + self.cfg.data.step * j] for j in self.task.order]
        arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
        height, width = arrays[0].shape[:2]
        crop = self.cfg.data.crop
        rng = np.random.default_rng()
        top, left = crop_offset(height, crop, rng), crop_offset(width, crop, rng)
        images = torch.from_numpy(np.stack([a[top:top + crop, left:left + crop]
                                            for a in arrays])).permute(0, 3, 1, 2)
        return images.contiguous(), self.task.reference(images[0])


def rate(batches, count: int, warmup: int = 20) -> dict[str, float]:
    """Samples/s over ``count`` batches after ``warmup`` (worker start-up excluded)."""
    iterator = iter(batches)
    for _ in range(warmup):
        next(iterator)
    seen, start = 0, time.perf_counter()
    for _ in range(count):
        images, _ = next(iterator)
        seen += images.shape[0]
    seconds = time.perf_counter() - start
    return {"samples_per_s": round(seen / seconds, 2), "samples": seen,
            "seconds": round(seconds, 2)}


@contextlib.contextmanager
def loopback_s3(root: Path):
    """``rclone serve s3`` on 127.0.0.1 with random keys; sets the AWS variables for it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    access, secret = f"bench{secrets.token_hex(8)}", secrets.token_hex(20)
    rclone = Path(sys.executable).with_name("rclone")
    (root / "rclone.conf").write_text("")
    process = subprocess.Popen(
        [str(rclone), "serve", "s3", "--config", str(root / "rclone.conf"), "--auth-key",
         f"{access},{secret}", "--addr", f"127.0.0.1:{port}", str(root / "data")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("rclone serve s3 did not start")
            time.sleep(0.05)
        os.environ.update({"AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret,
                           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                           "AWS_DEFAULT_REGION": "us-east-1"})
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)


def machine() -> dict[str, object]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform(),
            "load_average_1m_at_start": round(os.getloadavg()[0], 2)}


def consumption(batch_size: int) -> tuple[float, str]:
    """Samples/s one training process consumes: the fastest formulation measured by
    ``bench/train_step.py`` on this CPU for the published setup (K=5, 144 crops) when its
    results exist, else the published step time."""
    path = RESULTS / "train_step-cpu.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        measured = json.loads(path.read_text())
        setup = measured["setup"]
        if (setup["k"], setup["crop"], setup["batch"]) == (5, 144, batch_size):
            name, fastest = max(measured["results"].items(),
                                key=lambda kv: kv[1]["samples_per_s"])
            return float(fastest["samples_per_s"]), f"{path.name} ({name})"
    return batch_size / PUBLISHED_STEP_S, f"{PUBLISHED_STEP_S:.0f} s/step, shared/STACK.md"


def run(batches: int, workers: int) -> dict[str, object]:
    cfg = from_dict({"data": {"task": "video", "step": 5, "crop": 144, "batch_size": 2,
                              "loader_workers": workers},
                     "model": {"num_images": 5}})
    results = {}
    host = machine()  # before the benchmark loads the machine itself
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        root = Path(tmp)
        built = samples.build(root / "samples")
        local = root / "shards"
        assert prep(["davis", "--root", str(built["davis"]), "--out", str(local)]) == 0
        loader = make_loader(str(local), cfg, split="train", train=True, resampled=True)
        results["local_shards"] = rate(loader, batches)
        (root / "s3" / "data" / "bench").mkdir(parents=True)
        with loopback_s3(root / "s3"):
            remote = "s3://bench/davis"
            assert prep(["davis", "--root", str(built["davis"]), "--out", remote]) == 0
            loader = make_loader(remote, cfg, split="train", train=True, resampled=True)
            results["s3_shards"] = rate(loader, batches)
        loose = DataLoader(LooseWindows(built["davis"], cfg), batch_size=2, shuffle=True,
                           num_workers=workers, drop_last=True)
        results["loose_files"] = rate(endless(loose), batches)
    consumed, consumed_source = consumption(cfg.data.batch_size)
    slowest = min(r["samples_per_s"] for r in results.values())
    return {
        "benchmark": "training input pipeline, video task",
        "machine": host,
        "config": {"task": "video", "num_images": 5, "step": 5, "crop": 144, "batch_size": 2,
                   "loader_workers": workers, "shuffle_buffer": cfg.data.shuffle_buffer,
                   "frames": "854x480 JPEG (data_prep samples, DAVIS layout)",
                   "timed_batches": batches},
        "results": results,
        "requirement": {
            "samples_consumed_per_s": round(consumed, 3), "consumed_source": consumed_source,
            "needed_samples_per_s": round(5 * consumed, 3),
            "slowest_samples_per_s": slowest,
            "headroom_over_consumption": round(slowest / consumed, 1),
            "met": slowest >= 5 * consumed,
        },
    }


def endless(loader: DataLoader):
    """Epochs of a map-style loader back to back, like the resampled shard loaders."""
    while True:
        yield from loader


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=250)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "loader.json")
    args = parser.parse_args()
    report = run(args.batches, args.workers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    cli()
