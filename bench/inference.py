"""Embed + restore latency of one 480x854 K=5 clip: straightforward against fast.

Uses the published video K=5 design (random weights: latency does not depend on them) at
DAVIS 480p resolution, batch 1, as the paper's tables were measured. Each formulation runs in
its own process; peak memory is that process's own. Writes
``bench/results/inference-<device>.json``.

    python bench/inference.py [--repeats 2] [--device auto|cpu|cuda]

``--cli`` measures the command line end to end instead (section "CLI" below): ``iicnet embed``
and ``iicnet restore`` as separate processes on K=5 clips of 480x854 and 1920x1080, each
command's wall time and peak resident memory, into ``bench/results/inference-cli-<device>.json``.

    python bench/inference.py --cli [--device auto|cpu|cuda] [--tile 512]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import current_rss_mib, describe, peak_rss_mib  # noqa: E402

from iicnet.model import IICNet  # noqa: E402
from iicnet.model.config import Config  # noqa: E402

FORMULATIONS = {"straightforward": {"fused": False}, "fast": {"fused": True}}


def _model_and_clip(name: str, device: str, k: int, h: int, w: int):
    cfg = Config().override([f"model.num_images={k}",
                             f"model.fused={FORMULATIONS[name]['fused']}"])
    torch.manual_seed(0)
    model = IICNet(cfg).to(device).eval()
    gen = torch.Generator().manual_seed(1)
    clip = torch.randint(0, 256, (1, k, 3, h, w), generator=gen, dtype=torch.uint8).to(device)
    return model, clip


def run_one(name: str, device: str, repeats: int, k: int, h: int, w: int) -> dict:
    model, clip = _model_and_clip(name, device, k, h, w)
    base = current_rss_mib()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    encode, decode = [], []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        emb = model.encode(clip)
        if device == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        restored = model.decode(emb)
        if device == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if i:
            encode.append(t1 - t0)
            decode.append(t2 - t1)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else peak_rss_mib() - base)
    return {"encode_s": statistics.median(encode), "decode_s": statistics.median(decode),
            "embed_restore_s": statistics.median(encode) + statistics.median(decode),
            "peak_memory_mib": peak,
            "checksum": int(emb.sum()) + int(restored.sum())}


# -- CLI ------------------------------------------------------------------------------------
# The published video K=5 design (random weights, seed 0) saved as a checkpoint directory;
# five frames panning across a real photograph resized to the clip's size, saved as PNG. Each
# command runs in its own process, so its time includes starting Python, loading the model,
# reading and writing the files; its peak memory is its own maximum resident set (wait4).

CLI_CLIPS = {"480x854": (480, 854), "1920x1080": (1080, 1920)}


def _clip_files(folder: Path, k: int, height: int, width: int) -> list[Path]:
    from PIL import Image
    from skimage import data

    shift = max(2, width // 200)
    photo = Image.fromarray(data.astronaut()).resize((width + shift * (k - 1), height),
                                                     Image.Resampling.BICUBIC)
    paths = []
    for j in range(k):
        paths.append(folder / f"{j:02d}.png")
        photo.crop((j * shift, 0, j * shift + width, height)).save(paths[-1])
    return paths


def _timed(cmd: list[str]) -> dict:
    """Wall time and peak resident memory of one command (its own process)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        process = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - t0
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({process.returncode}):\n"
                               f"{err.read().decode()}")
        return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024,
                "output": out.read().decode().strip()}


def run_cli(device: str, tile: int, clips: list[str]) -> dict:
    from iicnet.formats import checkpoint
    from iicnet.formats.embedding_png import read

    iicnet_cli = [sys.executable, "-m", "iicnet.app.cli"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        cfg = Config()
        torch.manual_seed(0)
        ckpt = checkpoint.save(base / "video-k5", IICNet(cfg), cfg)
        for name in clips:
            height, width = CLI_CLIPS[name]
            folder = base / name
            folder.mkdir()
            frames = _clip_files(folder, cfg.model.num_images, height, width)
            emb = folder / "embedding.png"
            model = ["--model", str(ckpt), "--device", device, "--tile", str(tile)]
            embed = _timed([*iicnet_cli, "embed", *model, *map(str, frames), "-o", str(emb)])
            restore = _timed([*iicnet_cli, "restore", *model, str(emb),
                              "-o", str(folder / "restored")])
            _, info = read(emb)
            results[name] = {
                "tiles": f"{len(info.tile_rows) - 1}x{len(info.tile_cols) - 1}",
                "tile_rows": info.tile_rows, "tile_cols": info.tile_cols,
                "embedding_png_bytes": emb.stat().st_size,
                "embed": embed, "restore": restore,
                "total_s": embed["wall_s"] + restore["wall_s"],
            }
            print(f"{name:>10}: embed {embed['wall_s']:.1f} s (peak {embed['peak_rss_mib']:.0f} "
                  f"MiB), restore {restore['wall_s']:.1f} s (peak "
                  f"{restore['peak_rss_mib']:.0f} MiB), {results[name]['tiles']} tiles",
                  flush=True)
    return results


def cli_main(args: argparse.Namespace, device: str) -> int:
    load_before = os.getloadavg()
    results = run_cli(device, args.tile, args.clips)
    report = {
        "benchmark": "inference-cli",
        "setup": {"config": "video-k5 (published, random weights)", "k": 5,
                  "device": device, "tile": args.tile,
                  "commands": "iicnet embed FRAMES -o emb.png; iicnet restore emb.png -o DIR"},
        "machine": {**describe(), "load_average_before": load_before,
                    "load_average_after": os.getloadavg()},
        "results": results,
    }
    out = Path(__file__).resolve().parent / "results" / f"inference-cli-{device}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=854)
    p.add_argument("--device", default="auto")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--cli", action="store_true", help="time the iicnet CLI end to end")
    p.add_argument("--tile", type=int, default=512, help="--tile of the CLI (0: no tiling)")
    p.add_argument("--clips", nargs="+", default=list(CLI_CLIPS), choices=list(CLI_CLIPS))
    args = p.parse_args()
    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    if args.cli:
        return cli_main(args, device)
    shape = (args.k, args.height, args.width)
    if args.one:
        print(json.dumps(run_one(args.one, device, args.repeats, *shape)))
        return 0
    results = {}
    for name in FORMULATIONS:
        cmd = [sys.executable, __file__, "--one", name, "--device", device, "--repeats",
               str(args.repeats), "--k", str(args.k), "--height", str(args.height),
               "--width", str(args.width)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
        r = results[name]
        print(f"{name:>16}: encode {r['encode_s']:.2f} s + decode {r['decode_s']:.2f} s, "
              f"peak {r['peak_memory_mib']:.0f} MiB", flush=True)
    report = {
        "benchmark": "inference",
        "setup": {"config": "video-k5 (published)", "k": args.k, "height": args.height,
                  "width": args.width, "batch": 1, "device": device},
        "machine": describe(),
        "results": results,
        "speedup_fast": (results["straightforward"]["embed_restore_s"]
                         / results["fast"]["embed_restore_s"]),
        "outputs_identical": results["fast"]["checksum"] == results["straightforward"]["checksum"],
    }
    out = Path(__file__).resolve().parent / "results" / f"inference-{device}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"speed-up {report['speedup_fast']:.2f}x; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
