"""The model zoo: ship a trained model into ``iicnet/zoo/models/NAME``, and measure every
shipped model the way a user meets it.

Each model is scored on full frames (854x480, not crops) of the held-out clips of the real
photo set (``make photos``: the ``val`` and ``test`` splits, whose photographs training never
saw), every window, rounded uint8 embedding, RGB PSNR: the embedding against the reference,
each restored frame, and each frame's copy baseline (the embedding itself taken as that
frame) with the margin over it. Its CPU speed is the whole ``iicnet.load(...).embed`` +
``.restore`` of one held-out K-frame clip at 854x480, best engine, warm, in seconds per
megapixel of one frame. Writes each model's ``card.json`` (sealed with the model's files)
and ``bench/results/zoo.json`` with the plot of the speed/quality front,
``bench/results/zoo.png``.

    python bench/zoo.py ship NAME --from MODEL --summary TEXT [--run RUN] [--data SHARDS]
    python bench/zoo.py measure [--data SHARDS]
    python bench/zoo.py front SWEEP_FOLDER [--data SHARDS]

``front`` measures every trial of a finished ``ray_jobs/tune.py`` sweep (its ``--storage``
folder of that sweep's name: the final checkpoint of each trial) the same way, with the
sweep's own validation scores beside them, into ``bench/results/front.json`` and
``front.png``: the speed/quality front of architectures trained for one budget.

``MODEL`` is anything ``iicnet`` loads (``models:/iicnet-video@candidate``, a checkpoint
folder); a registered model's MLflow run gives the card its training steps, hours, precision
and data.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from machine import describe  # noqa: E402

from iicnet import zoo  # noqa: E402
from iicnet.formats import checkpoint  # noqa: E402
from iicnet.model.config import MAX_CROP, parameter_count  # noqa: E402

RESULTS = REPO / "bench" / "results"
DEFAULT_DATA = REPO / "data" / "photos" / "shards"
MEASURED_ON = ("full 854x480 frames of the held-out photo clips (val + test: 8 photographs "
               "never seen in training, 16 clips, the middle window of each)")


WINDOW = 5
"""The window scored in each held-out clip: frames 5, 10, 15 of K=3 at step 5 (the middle of
the 21-frame clips); one per clip keeps a full-frame measure of 16 clips within minutes."""


def held_out_windows(data: str, cfg):
    """``(images, reference)`` of window :data:`WINDOW` of every val and test clip, full
    frames (a crop larger than the frames), in stack order."""
    from iicnet.data import make_dataset

    cfg = cfg.override([f"data.crop={MAX_CROP}", "data.loader_workers=0"])
    for split in ("val", "test"):
        for images, reference, key in make_dataset(data, cfg, split=split, train=False,
                                                   with_keys=True):
            if key.endswith(f"#{WINDOW}"):
                yield images, reference


def held_out_scores(uri: str, cfg, data: str) -> dict:
    """Full-frame held-out scores by ``iicnet eval``'s scorer
    (:func:`iicnet.app.evaluation.evaluate`, through the converter: tiled, best engine), per
    frame with the copy baseline (the embedding taken as that frame), frames in natural
    order."""
    import iicnet
    from iicnet.app.evaluation import evaluate

    conv = iicnet.load(uri, device="cpu")
    result = evaluate(conv, held_out_windows(data, cfg), tile=conv.tile)
    if not result.items:
        raise SystemExit(f"{data}: no held-out windows #{WINDOW} in val/test")
    scores = result.to_dict()
    names = conv.names
    frame_r = [scores["images"][name]["psnr"] for name in names]
    copies = [scores["copy"][name] for name in names]
    r = lambda x: round(x, 3)  # noqa: E731
    return {
        "measured_on": MEASURED_ON,
        "windows": result.items,
        "embedding_psnr": r(scores["embedding"]["psnr"]),
        "restored_psnr": r(scores["restored"]["psnr"]),
        "frames": names,
        "restored_psnr_per_frame": [r(v) for v in frame_r],
        "copy_psnr_per_frame": [r(c["psnr"]) for c in copies],
        "margin_db_per_frame": [r(c["margin_db"]) for c in copies],
        "worst_margin_db": r(result.lossless.worst_side_margin(conv.stack_names[1:])),
        "worst_frame_psnr": r(min(frame_r)),
        "windows_with_a_frame_below_copy": scores["items_with_a_side_image_below_copy"],
    }


def held_out_clip(data: str, cfg) -> list:
    """The frames of the first held-out test window, in the order a person gives them."""
    from iicnet.tasks import evaluation_items, get_task, natural_order

    cfg = cfg.override([f"data.crop={MAX_CROP}", "data.loader_workers=0"])
    images, _ = next(iter(evaluation_items(data, cfg, "test")))
    order = natural_order(get_task(cfg), cfg.model.num_images)[0]
    frames = [None] * len(order)
    for stack_index, natural in enumerate(order):
        frames[natural] = images[stack_index].permute(1, 2, 0).numpy()
    return frames


def cpu_speed(uri: str, frames: list) -> dict:
    """Seconds per frame megapixel of embed + restore, per engine (the second of two runs)."""
    import iicnet

    megapixels = frames[0].shape[0] * frames[0].shape[1] / 1e6
    out = {}
    for engine in ("torch", "openvino"):
        try:
            conv = iicnet.load(uri, device="cpu", engine=engine)
        except Exception as exc:  # OpenVINO not installed: torch only
            out[engine] = {"error": str(exc)}
            continue
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            png = conv.embed(frames)
            conv.restore(png)
            times.append(time.perf_counter() - t0)
        out[engine] = {"embed_restore_s": round(times[-1], 3),
                       "s_per_megapixel": round(times[-1] / megapixels, 3)}
    best = min(v["s_per_megapixel"] for v in out.values() if "s_per_megapixel" in v)
    return {"engines": out, "s_per_megapixel": best,
            "clip": f"{frames[0].shape[1]}x{frames[0].shape[0]}, K={len(frames)}"}


def training_record(uri: str, run_name: str | None = None) -> dict:
    """What made the model, from its MLflow run: a registered model's own, or the run named
    ``run_name`` (a checkpoint folder of an interrupted run); steps are the checkpoint's own
    where it has a training state. Empty when there is neither."""
    if not uri.startswith(("models:/", "runs:/")) and not run_name:
        return {}
    from mlflow.tracking import MlflowClient

    from iicnet import registry

    server = registry.tracking_uri()
    client = MlflowClient(server)
    record: dict = {}
    if run_name:
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(experiments, f"attributes.run_name = '{run_name}'")
        if not runs:
            raise SystemExit(f"--run {run_name}: no such MLflow run at {registry.redact(server)}")
        run = runs[0]
    else:
        name, version = registry.registered_version(uri, server)
        if version is None:
            return {}
        run = client.get_run(client.get_model_version(name, str(version)).run_id)
        record["registered"] = f"models:/{name}/{version}"
    params, tags = run.data.params, run.data.tags
    # A resumed run keeps its first params (MLflow's are immutable) and its start time; the
    # config it last ran with is its config.json, and its training time is the time between
    # logged steps, without the pauses between an interruption and the resume.
    with tempfile.TemporaryDirectory() as tmp:
        planned = json.loads(Path(client.download_artifacts(
            run.info.run_id, "config.json", tmp)).read_text())["train"]["steps"]
    history = sorted(client.get_metric_history(run.info.run_id, "loss/total"),
                     key=lambda m: m.step)
    steps = history[-1].step if history else int(params.get("train.steps", 0))
    state = Path(uri) / "trainer.json"
    if state.is_file():
        steps = int(json.loads(state.read_text())["step"])
    return {**record, "mlflow_run": run.info.run_name, "status": run.info.status,
            "steps": steps, "planned_steps": planned,
            "hours": round(training_seconds([m.timestamp for m in history]) / 3600, 2),
            "precision": tags.get("precision", "float32"), "workers": tags.get("num_workers"),
            "data": tags.get("data"),
            **({"fine_tuned_from": tags["init"]} if tags.get("init") else {}),
            "val_restored_psnr_crops": run.data.metrics.get("val/restored_psnr")}


PAUSE_MS = 15 * 60 * 1000
"""A gap between two logged steps longer than this is a pause (the run was stopped and
resumed later), not training."""


def training_seconds(stamps_ms: list[int]) -> float:
    """The time a run trained, from the timestamps (ms) of its logged steps: the sum of the
    gaps between consecutive ones, leaving out pauses (:data:`PAUSE_MS`)."""
    gaps = [b - a for a, b in zip(stamps_ms, stamps_ms[1:])]
    return sum(g for g in gaps if 0 < g <= PAUSE_MS) / 1000


def write_card(folder: Path, card: dict) -> None:
    (folder / zoo.CARD).write_text(json.dumps(card, indent=1) + "\n")
    checkpoint.seal(folder)


def ship(args: argparse.Namespace) -> int:
    import iicnet.app.api as api

    model, cfg, _ = api.load_model(args.source)
    target = zoo.MODELS / args.name
    staging = Path(tempfile.mkdtemp(prefix=f".{args.name}.", dir=zoo.MODELS.parent))
    try:
        checkpoint.write_model_files(staging, model, cfg)
        card = {"name": args.name, "summary": args.summary, "source": args.source,
                "task": cfg.data.task, "num_images": cfg.model.num_images,
                "parameters": parameter_count(cfg.model),
                "training": training_record(args.source, args.run)}
        write_card(staging, card)
        zoo.MODELS.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"shipped {zoo.SCHEME}{args.name} from {args.source}; measuring it", flush=True)
    return measure(argparse.Namespace(data=args.data, names=[args.name]))


def measure(args: argparse.Namespace) -> int:
    torch.set_num_threads(os.cpu_count() or 1)
    names = args.names or zoo.names()
    report_path = RESULTS / "zoo.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {"models": {}}
    frames = None
    for name in names:
        folder = zoo.folder(name)
        cfg = checkpoint.load_config(folder)
        card = zoo.card(name)
        print(f"{name}: held-out full frames ...", flush=True)
        card["scores"] = held_out_scores(f"{zoo.SCHEME}{name}", cfg, str(args.data))
        frames = frames or held_out_clip(str(args.data), cfg)
        speed = cpu_speed(f"{zoo.SCHEME}{name}", frames)
        card["cpu_s_per_megapixel"] = speed["s_per_megapixel"]
        card["cpu"] = describe().get("cpu", "this machine")
        write_card(folder, card)
        s = card["scores"]
        print(f"{name}: embedding {s['embedding_psnr']:.2f} dB, restored per frame "
              f"{s['restored_psnr_per_frame']}, worst margin {s['worst_margin_db']:+.2f} dB, "
              f"{speed['s_per_megapixel']:.2f} s/MP", flush=True)
        report["models"][name] = {**card, "speed": speed}
    report.update(benchmark="zoo: shipped models on held-out full frames",
                  machine=describe(), data=str(args.data),
                  machine_load_average=[round(x, 2) for x in os.getloadavg()])
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, RESULTS / "zoo.png")
    print(f"wrote {report_path} and {RESULTS / 'zoo.png'}")
    return 0


def front(args: argparse.Namespace) -> int:
    """Every trial of the sweep in ``args.sweep``, measured as the shipped models are."""
    torch.set_num_threads(os.cpu_count() or 1)
    sweep = Path(args.sweep)
    settings = json.loads((sweep / "iicnet-sweep.json").read_text())
    trials = sorted(p for p in (sweep / "train").iterdir() if p.is_dir())
    if not trials:
        raise SystemExit(f"{sweep}/train: no trial folders")
    models, frames = {}, None
    for trial in trials:
        steps = sorted(trial.glob("step-*"))
        if not steps:
            print(f"{trial.name}: no checkpoint; left out", flush=True)
            continue
        folder = steps[-1]
        cfg = checkpoint.load_config(folder)
        m = cfg.model
        label = f"b{m.blocks}-nf{m.nf}-g{m.growth}"
        print(f"{trial.name} ({label}, {folder.name}): held-out full frames ...", flush=True)
        scores = held_out_scores(str(folder), cfg, str(args.data))
        frames = frames or held_out_clip(str(args.data), cfg)
        speed = cpu_speed(str(folder), frames)
        models[label] = {"name": label, "trial": trial.name, "checkpoint": folder.name,
                         "blocks": m.blocks, "nf": m.nf, "growth": m.growth,
                         "crop": cfg.data.crop, "steps": cfg.train.steps,
                         "parameters": parameter_count(cfg.model), "scores": scores,
                         "cpu_s_per_megapixel": speed["s_per_megapixel"], "speed": speed}
        print(f"{label}: embedding {scores['embedding_psnr']:.2f} dB, restored per frame "
              f"{scores['restored_psnr_per_frame']}, worst margin "
              f"{scores['worst_margin_db']:+.2f} dB, {speed['s_per_megapixel']:.2f} s/MP",
              flush=True)
    base = settings["config"]
    report = {"benchmark": "front: one sweep's architectures on held-out full frames",
              "sweep": settings["name"], "space": settings["space"],
              "search": settings["search"],
              "budget": {"steps": base["train"]["steps"], "crop": base["data"]["crop"],
                         "batch_size": base["data"]["batch_size"],
                         "lr": base["optim"]["lr"], "milestones": base["optim"]["milestones"],
                         "workers_per_trial": settings["workers_per_trial"]},
              "models": models, "machine": describe(), "data": str(args.data),
              "machine_load_average": [round(x, 2) for x in os.getloadavg()]}
    out = RESULTS / "front.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, RESULTS / "front.png",
         title=f"sweep {settings['name']}: {len(models)} architectures, "
               f"{base['train']['steps']} steps each", legend="center right")
    print(f"wrote {out} and {RESULTS / 'front.png'}")
    return 0


def plot(report: dict, out: Path, title: str = "IICNet zoo: speed and quality (video, K=3)",
         legend: str = "lower right") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, m in sorted(report["models"].items()):
        x, s = m["cpu_s_per_megapixel"], m["scores"]
        ax.scatter([x], [s["worst_frame_psnr"]], color="tab:blue")
        ax.scatter([x], [s["embedding_psnr"]], color="tab:orange", marker="s")
        ax.annotate(f"{name}\n({m['parameters'] / 1e3:.0f}k params)", (x, s["worst_frame_psnr"]),
                    textcoords="offset points", xytext=(6, -4), fontsize=8)
    ax.scatter([], [], color="tab:blue", label="worst restored frame (mean over windows)")
    ax.scatter([], [], color="tab:orange", marker="s", label="embedding")
    ax.set_xscale("log")
    ax.set_xlabel("CPU embed + restore, seconds per frame megapixel (log)")
    ax.set_ylabel("PSNR on held-out full frames (dB)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc=legend)
    fig.tight_layout()
    fig.savefig(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("ship", help="copy a trained model into the zoo and measure it")
    s.add_argument("name")
    s.add_argument("--from", dest="source", required=True)
    s.add_argument("--summary", required=True, help="one line: what the model is for")
    s.add_argument("--run", help="the MLflow run that made a checkpoint folder (its name)")
    s.add_argument("--data", type=Path, default=DEFAULT_DATA)
    m = commands.add_parser("measure", help="measure shipped models (default: all)")
    m.add_argument("names", nargs="*")
    m.add_argument("--data", type=Path, default=DEFAULT_DATA)
    f = commands.add_parser("front", help="measure every trial of a finished sweep")
    f.add_argument("sweep", help="the sweep's folder in its --storage (with iicnet-sweep.json)")
    f.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    if not (Path(args.data) / "manifest.json").is_file():
        raise SystemExit(f"{args.data}: no shards; build the photo set with `make photos`")
    return {"ship": ship, "measure": measure, "front": front}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
