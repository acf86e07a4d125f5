"""Does the embedded default learn? PSNR before and after ``python ray_jobs/train.py``, and
training throughput with 1 and 2 Ray workers.

1. The network the embedded default starts from (``Trainer(cfg)``: the same seed, so the same
   weights as step 0 of the run) is scored on held-out sample clips: the ``val`` and ``test``
   splits of the DAVIS-layout sample dataset, which training never reads. Every window, centre
   crop of ``--eval-crop`` pixels, scored the way the paper's tables were (rounded uint8
   embedding, images restored from it, RGB PSNR / SSIM per image, averaged over windows;
   "restored" covers all K images). Per frame as well: the restored PSNR of each of the K
   images and its copy baseline, the PSNR of the embedding itself taken as that image. A
   mean over all K hides a frame restored as little more than the reference.
2. The embedded default runs as a user runs it: ``python ray_jobs/train.py`` with no training
   arguments (2 CPU workers, ``configs/video-k3-small.yaml``). Only where its results go is
   changed: a temporary folder for Ray's storage and a temporary SQLite MLflow store, so the
   bench registers nothing in ``.iicnet/mlflow.db``. Its wall time includes starting Ray.
3. The final checkpoint is scored like the untrained network.
4. Throughput: ``samples_per_s`` as the run logged it to MLflow (training steps only, not
   validation or checkpoints; the first log interval, which includes start-up, is dropped),
   for that 2-worker run and for a short 1-worker run of the same config.

The requirements: training within 10 minutes, and after training, on each held-out split,
every image other than the reference at least 1.5 dB above its copy baseline, and the
reference at least at its copy baseline (the embedding's own PSNR, since the embedding is
trained to look like it). The gain over the untrained network (once required to be 5 dB) is
reported beside them.
Writes ``bench/results/convergence.json``. The machine is shared: the load average before
and after is recorded with the timings.

    python bench/convergence.py [--eval-crop 128] [--single-worker-steps 60]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from machine import describe  # noqa: E402

from iicnet.app.evaluation import evaluate  # noqa: E402
from iicnet.convert import Converter, ModelSource  # noqa: E402
from iicnet.formats import checkpoint  # noqa: E402
from iicnet.formats.config_file import load  # noqa: E402
from iicnet.formats.shards import read_manifest  # noqa: E402
from iicnet.model import IICNet  # noqa: E402
from iicnet.model.config import Config  # noqa: E402
from iicnet.tasks import evaluation_items  # noqa: E402
from iicnet.training import Trainer  # noqa: E402
from ray_jobs import common  # noqa: E402
from ray_jobs.options import DEFAULT_CONFIG  # noqa: E402

RESULTS = REPO / "bench" / "results"
HELD_OUT = ("val", "test")
REQUIRED_GAIN_DB = 5.0
REQUIRED_MARGIN_DB = 1.5


def machine() -> dict:
    import ray

    return {**describe(), "ray": ray.__version__, "platform": platform.platform()}


def score(model: IICNet, cfg: Config, shards: str, crop: int) -> dict:
    """Held-out scores on each split and on both together, overall and per frame (restored
    PSNR and the copy baseline), by ``iicnet eval``'s scorer
    (:func:`iicnet.app.evaluation.evaluate`) on centre crops of ``crop`` pixels."""
    conv = Converter(model, cfg, ModelSource("bench", "bench"))
    cfg = cfg.override([f"data.crop={crop}", "data.loader_workers=0"])
    torch.set_num_threads(os.cpu_count() or 1)
    model.eval()
    out = {split: _summary(evaluate(conv, evaluation_items(shards, cfg, split)), conv)
           for split in HELD_OUT}
    every = itertools.chain.from_iterable(evaluation_items(shards, cfg, split)
                                          for split in HELD_OUT)
    out["held_out"] = _summary(evaluate(conv, every), conv)
    return out


def _summary(result, conv: Converter) -> dict:
    """The figures this bench reports, frames in stack order (the reference first)."""
    r = lambda x: None if x is None else round(x, 3)  # noqa: E731
    scores = result.to_dict()
    frames = {}
    for position in conv.order:
        name = conv.names[position]
        copy = scores["copy"][name]
        frames[name] = {"restored_psnr": r(scores["images"][name]["psnr"]),
                        "copy_psnr": r(copy["psnr"]), "margin_db": r(copy["margin_db"]),
                        "windows_below_copy": copy["items_below"]}
    return {"embedding_psnr": r(scores["embedding"]["psnr"]),
            "embedding_ssim": r(scores["embedding"]["ssim"]),
            "restored_psnr": r(scores["restored"]["psnr"]),
            "restored_ssim": r(scores["restored"]["ssim"]),
            "windows": result.items, "frames": frames}


def every_frame_above_copy(result: dict) -> bool:
    """On every held-out split: each image other than the reference restored at least
    REQUIRED_MARGIN_DB above its copy baseline on average, and the reference restored at
    least as well as the embedding shows it. (The embedding is trained to look like the
    reference, so the reference's copy baseline is the embedding's own PSNR; the question
    is whether the other images come back at all.)"""
    def ok(k: int, frame: dict) -> bool:
        needed = REQUIRED_MARGIN_DB if k else 0.0
        return frame["margin_db"] is not None and frame["margin_db"] >= needed

    return all(ok(k, frame) for split in HELD_OUT
               for k, frame in enumerate(result[split]["frames"].values()))


def run_train(args: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    done = subprocess.run([sys.executable, str(REPO / "ray_jobs" / "train.py"), *args],
                          env=env, cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"ray_jobs/train.py {' '.join(args)} failed ({done.returncode})")
    return time.perf_counter() - began


def throughput(tracking: str, name: str) -> dict:
    from mlflow import MlflowClient

    client = MlflowClient(tracking)
    experiments = [e.experiment_id for e in client.search_experiments()]
    (run,) = client.search_runs(experiments, f"tags.`iicnet.run_name` = '{name}'")
    history = sorted(client.get_metric_history(run.info.run_id, "samples_per_s"),
                     key=lambda m: m.step)
    waits = client.get_metric_history(run.info.run_id, "data_wait_fraction")
    values = [m.value for m in history[1:]] or [m.value for m in history]
    return {"samples_per_s": round(statistics.mean(values), 2),
            "samples_per_s_per_interval": [round(v, 2) for v in values],
            "data_wait_fraction": round(statistics.mean(m.value for m in waits), 3)}


def latest_checkpoint(run_dir: Path) -> Path:
    steps = sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith("step-"))
    if not steps:
        raise SystemExit(f"{run_dir}: no checkpoints")
    return steps[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eval-crop", type=int, default=128,
                        help="side of the centre crops scored on held-out clips")
    parser.add_argument("--single-worker-steps", type=int, default=60,
                        help="length of the 1-worker throughput run")
    args = parser.parse_args()

    cfg = load(DEFAULT_CONFIG)
    shards = common.sample_shards()
    manifest = read_manifest(shards)
    load_before = os.getloadavg()
    before = score(Trainer(cfg).model, cfg, shards, args.eval_crop)
    print("untrained:", json.dumps(before["held_out"]), flush=True)

    with tempfile.TemporaryDirectory(prefix="iicnet-bench-") as tmp:
        tracking = f"sqlite:///{tmp}/mlflow.db"
        env = {**os.environ, "MLFLOW_TRACKING_URI": tracking}
        storage = Path(tmp, "ray_results")
        wall = run_train(["--storage", str(storage), "--name", "default"], env)
        final = latest_checkpoint(storage / "default")
        model, trained_cfg = checkpoint.load(final)
        after = score(model, trained_cfg, shards, args.eval_crop)
        print("trained:", json.dumps(after["held_out"]), flush=True)
        two = throughput(tracking, "default")
        run_train(["--storage", str(storage), "--name", "one-worker", "--num-workers", "1",
                   "--steps", str(args.single_worker_steps),
                   "--set", f"train.val_every={args.single_worker_steps}",
                   "--set", f"train.checkpoint_every={args.single_worker_steps}"], env)
        one = throughput(tracking, "one-worker")

    gain = {k: round(after["held_out"][k] - before["held_out"][k], 3)
            for k in ("embedding_psnr", "restored_psnr")}
    result = {
        "benchmark": "convergence of the embedded default (python ray_jobs/train.py)",
        "machine": {**machine(), "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()],
                    "note": "load averages around the run; both workers and their loader "
                   "processes share the machine's cores, so timings vary with other load"},
        "config": {"file": str(DEFAULT_CONFIG.relative_to(REPO)),
                   **{k: v for k, v in cfg.flat().items()
                      if k.split(".")[0] in ("model", "data", "optim", "train")}},
        "held_out": {"splits": list(HELD_OUT),
                     "clips": {s: [sh["name"] for sh in manifest["splits"][s]["shards"]]
                               for s in HELD_OUT},
                     "eval_crop": args.eval_crop, "metric": "RGB PSNR (dB) / SSIM, per image, "
                     "mean over windows; restored includes the reference",
                     "frames": "per image of the stack: restored_psnr; copy_psnr, the "
                     "embedding itself taken as that image (mean over windows where it is "
                     "finite); margin_db, restored minus copy per window, averaged; "
                     "windows_below_copy"},
        "before": before,
        "after": after,
        "gain_db": gain,
        "training": {"command": "python ray_jobs/train.py", "workers": 2,
                     "steps": cfg.train.steps, "wall_s": round(wall, 1),
                     "checkpoint": final.name},
        "throughput": {"workers_1": one, "workers_2": two,
                       "batch_per_worker": cfg.data.batch_size, "crop": cfg.data.crop},
        "requirement": {"frame_margin_db": REQUIRED_MARGIN_DB,
                        "every_frame_above_copy": every_frame_above_copy(after),
                        "training_under_10_min": wall < 600,
                        "met": every_frame_above_copy(after) and wall < 600,
                        "restored_psnr_gain_db": REQUIRED_GAIN_DB,
                        "gain_met": gain["restored_psnr"] >= REQUIRED_GAIN_DB,
                        "gain_note": "reported, not required: a 5 dB gain over "
                        "the untrained network was set on sample clips whose side frames "
                        "had moved out of view (copy baselines near 10 dB); on clips that "
                        "move as DAVIS does the untrained network already scores about "
                        "22 dB by returning near-copies, and the per-frame margin over "
                        "the copy baseline is the test of learning"},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "convergence.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"gain_db": gain, "training_wall_s": result["training"]["wall_s"],
                      "frames": {s: after[s]["frames"] for s in HELD_OUT},
                      "every_frame_above_copy": result["requirement"]["every_frame_above_copy"],
                      "throughput": {k: v["samples_per_s"] for k, v in
                                     result["throughput"].items() if isinstance(v, dict)}},
                     indent=2))
    return 0 if result["requirement"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
