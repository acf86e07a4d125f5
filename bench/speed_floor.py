"""How fast can the video design go on this CPU? Embed + restore of one 854x480 clip of K=3
frames, through ``iicnet.load(...).embed`` / ``.restore`` (tiled, PNG in and out, as a user
runs it), for the smallest architectures of the family, with random weights (speed does not
depend on what the weights are), per engine: torch, OpenVINO float32 and OpenVINO bf16 (its
inference-precision hint; ``native_bf16`` in the JSON says whether this CPU has bf16 units).

The architectures are rounds of (coupling blocks, nf, growth), down to 1 block of width 4.
Each engine and architecture runs once to warm up (OpenVINO converts and compiles), then
``--rounds`` times, interleaved (every architecture and engine once per round, so a change in
the machine's load touches all alike); the median is kept. Writes
``bench/results/speed-floor-cpu.json``.

    python bench/speed_floor.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

ARCHITECTURES = [(1, 8, 8), (1, 8, 4), (2, 4, 4), (1, 4, 4), (1, 4, 2)]
"""(blocks, nf, growth): the zoo's smallest sweep point (1, 8, 8) and narrower ones."""
ENGINES = [("torch", "torch", "f32"), ("openvino-f32", "openvino", "f32"),
           ("openvino-bf16", "openvino", "bf16")]
HEIGHT, WIDTH = 480, 854
TARGET_S_PER_MP = 1.0


def build(folder: Path, blocks: int, nf: int, growth: int) -> Path:
    """A checkpoint folder of the embedded default's design at this size, random weights."""
    from iicnet.formats import checkpoint
    from iicnet.formats.config_file import load
    from iicnet.model import IICNet

    cfg = load(REPO / "configs" / "video-k3-small.yaml").override(
        [f"model.blocks={blocks}", f"model.nf={nf}", f"model.growth={growth}"])
    torch.manual_seed(0)
    model = IICNet(cfg)
    with torch.no_grad():
        for p in model.parameters():  # the last convolutions start at zero: make them work
            p.normal_(0.0, 0.01)
    return checkpoint.save(folder / f"b{blocks}-nf{nf}-g{growth}", model, cfg)


def once(converter, frames: list) -> float:
    began = time.perf_counter()
    converter.restore(converter.embed(frames))
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from machine import describe

    import iicnet
    from iicnet.convert import engine as engines
    from iicnet.training.trainer import native_bf16

    megapixels = HEIGHT * WIDTH / 1e6
    frames = [np.random.default_rng(i).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
              for i in range(3)]
    kinds = [e for e in ENGINES if e[1] == "torch" or engines.openvino_available()]
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["IICNET_CACHE"] = str(Path(tmp) / "cache")
        converters, params = {}, {}
        for arch in ARCHITECTURES:
            folder = build(Path(tmp), *arch)
            for name, engine, precision in kinds:
                os.environ["IICNET_OPENVINO_PRECISION"] = precision
                converter = iicnet.load(str(folder), device="cpu", engine=engine)
                once(converter, frames)  # warm: conversion, compilation
                converters[arch, name] = converter
            params[arch] = sum(p.numel() for p in converters[arch, "torch"].model.parameters())
        times: dict = {key: [] for key in converters}
        for _ in range(args.rounds):
            for key, converter in converters.items():
                times[key].append(once(converter, frames))
    rows = []
    for arch in ARCHITECTURES:
        row = {"blocks": arch[0], "nf": arch[1], "growth": arch[2], "parameters": params[arch]}
        for name, _, _ in kinds:
            seconds = statistics.median(times[arch, name])
            row[name] = {"embed_restore_s": round(seconds, 3),
                         "s_per_megapixel": round(seconds / megapixels, 3),
                         "rounds_s": [round(t, 3) for t in times[arch, name]]}
        row["best_s_per_megapixel"] = min(row[n]["s_per_megapixel"] for n, _, _ in kinds)
        rows.append(row)
        print(f"blocks {arch[0]} nf {arch[1]} growth {arch[2]} ({params[arch]} parameters): "
              + ", ".join(f"{n} {row[n]['s_per_megapixel']:.2f}" for n, _, _ in kinds)
              + " s/MP", flush=True)
    fastest = min(r["best_s_per_megapixel"] for r in rows)
    report = {
        "benchmark": "speed floor: embed + restore of the smallest video designs (random "
                     "weights), per engine",
        "setup": {"clip": f"{WIDTH}x{HEIGHT}, K=3", "config": "configs/video-k3-small.yaml "
                  "with model.blocks/nf/growth set", "rounds": args.rounds,
                  "statistic": "median of the rounds, after one warm-up",
                  "threads": torch.get_num_threads()},
        "machine": describe(),
        "native_bf16": native_bf16(torch.device("cpu")),
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "architectures": rows,
        "fastest_s_per_megapixel": fastest,
        "target_s_per_megapixel": TARGET_S_PER_MP,
        "target_met": fastest < TARGET_S_PER_MP,
    }
    out = REPO / "bench" / "results" / "speed-floor-cpu.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"fastest {fastest:.2f} s/MP (target under {TARGET_S_PER_MP}); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
