"""Embed + restore latency of one 480x854 K=5 clip: straightforward against fast.

Uses the published video K=5 design (random weights: latency does not depend on them) at
DAVIS 480p resolution, batch 1, as the paper's tables were measured. Each formulation runs in
its own process; peak memory is that process's own. Writes
``bench/results/inference-<device>.json``.

    python bench/inference.py [--repeats 2] [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import current_rss_mib, describe, peak_rss_mib  # noqa: E402

from iicnet.config import Config  # noqa: E402
from iicnet.model import IICNet  # noqa: E402

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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=854)
    p.add_argument("--device", default="auto")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
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
