"""Embed + restore latency of one 480x854 K=5 clip: straightforward against fast.

Uses the published video K=5 design (random weights: latency does not depend on them) at
DAVIS 480p resolution, batch 1, as the paper's tables were measured. Each formulation runs in
its own process; peak memory is that process's own. Writes
``bench/results/inference-<device>.json``.

    python bench/inference.py [--repeats 2] [--device auto|cpu|cuda]

``--cli`` measures the command line end to end instead (section "CLI" below): ``iicnet embed``
and ``iicnet restore`` as separate processes on K=5 clips of 480x854 and 1920x1080, each
command's wall time and peak resident memory, per engine (``--engines torch openvino``: the
speed-up of each over torch, and whether their outputs are equal), into
``bench/results/inference-cli-<device>.json`` (one engine) or
``bench/results/inference-engines-<device>.json`` (several). OpenVINO's one-time conversion
is done before timing (a warm user cache, as every run after a model's first).

    python bench/inference.py --cli [--device auto|cpu|cuda] [--tile 512] [--engines ...]

``--halo`` measures how much context a tile needs (section "Halo" below): a trained model
(the authors' st-06 checkpoint from ``../shared/parity``, video K=3 x2, 10 blocks) on a real
photograph, embedded and restored on a grid of small tiles with growing halos, against the
untiled result; into ``bench/results/halo.json``. ``--big`` is the one heavy check: a
1920x1080 K=5 clip of the published design (perturbed random weights), tiled at the default
tile and halo against untiled: differences, time and peak memory, into
``bench/results/halo-1080p.json``.

    python bench/inference.py --halo [--halos 0 8 16 24 32 48] [--tile 64]
    python bench/inference.py --big

``--bf16`` measures OpenVINO's bf16 inference against its float32 (section "bf16" below) on
the 480x854 clip: time, the embedding's differences and the restored frames' PSNR, for the
published K=5 design and two trained models, into ``bench/results/inference-bf16-cpu.json``.

    python bench/inference.py --bf16 [--repeats 2]
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
from machine import current_rss_mib, describe, load_note, peak_rss_mib  # noqa: E402

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
        load = os.getloadavg()
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
        return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024, "load_average": load,
                "output": out.read().decode().strip()}


def run_cli(device: str, tile: int, clips: list[str], engine: str = "torch",
            base: Path | None = None, tag: str = "") -> dict:
    from iicnet.formats import checkpoint
    from iicnet.formats.embedding_png import read

    iicnet_cli = [sys.executable, "-m", "iicnet.app.cli"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = base or Path(tmp)
        cfg = Config()
        torch.manual_seed(0)
        ckpt = base / "video-k5"
        if not ckpt.is_dir():
            checkpoint.save(ckpt, IICNet(cfg), cfg)
        if engine == "openvino":
            from iicnet.convert import weights_fingerprint
            from iicnet.convert.engine import OpenVinoEngine

            model, _ = checkpoint.load(ckpt)
            warm = OpenVinoEngine(model.eval(), weights_fingerprint(model))
            for direction in ("embed", "restore"):
                warm.exported(direction)
        for name in clips:
            height, width = CLI_CLIPS[name]
            folder = base / f"{name}-{engine}{tag}"
            folder.mkdir()
            frames = _clip_files(folder, cfg.model.num_images, height, width)
            emb = folder / "embedding.png"
            model = ["--model", str(ckpt), "--device", device, "--tile", str(tile),
                     "--engine", engine]
            embed = _timed([*iicnet_cli, "embed", *model, *map(str, frames), "-o", str(emb)])
            restore = _timed([*iicnet_cli, "restore", *model, str(emb),
                              "-o", str(folder / "restored")])
            _, info = read(emb)
            results[name] = {"folder": str(folder),
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
    if len(args.engines) > 1:
        return engines_main(args, device)
    load_before = os.getloadavg()
    results = run_cli(device, args.tile, args.clips, args.engines[0])
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


# -- Halo ----------------------------------------------------------------------------------
# Tiled against untiled, uint8 at both ends: how many values differ, by how much, and the
# time, for each halo. Both the embedding and the images restored from it are compared (the
# restored ones each from its own path's embedding, as a user would get them).

PARITY = Path(__file__).resolve().parent.parent.parent / "shared" / "parity"


def _differences(a: torch.Tensor, b: torch.Tensor) -> dict:
    diff = (a.to(torch.int16) - b.to(torch.int16)).abs()
    return {"max": int(diff.max()), "mean": float(diff.float().mean()),
            "fraction_differing": float((diff > 0).float().mean()),
            "fraction_over_1": float((diff > 1).float().mean())}


def _round_trip(conv, stack: torch.Tensor, tile: int, halo: int) -> tuple[dict, torch.Tensor,
                                                                           torch.Tensor]:
    from iicnet.convert import tile_bounds

    m = conv.multiple
    rows, cols = (tile_bounds(stack.shape[2], tile, m), tile_bounds(stack.shape[3], tile, m))
    t0 = time.perf_counter()
    embedding = conv.encode_stack(stack, rows, cols, halo)
    t1 = time.perf_counter()
    restored = conv.decode_stack(embedding, rows, cols, halo)
    t2 = time.perf_counter()
    return {"embed_s": t1 - t0, "restore_s": t2 - t1,
            "tiles": f"{len(rows) - 1}x{len(cols) - 1}"}, embedding, restored


def _photo_stack(k: int, height: int, width: int, shift: int = 4) -> torch.Tensor:
    """K frames panning across a real photograph, ``(K, 3, H, W)`` uint8."""
    from skimage import data

    photo = torch.from_numpy(data.coffee()).permute(2, 0, 1)
    return torch.stack([photo[:, 20:20 + height, 20 + j * shift:20 + j * shift + width]
                        for j in range(k)]).contiguous()


def halo_main(args: argparse.Namespace) -> int:
    from iicnet.convert import Converter, ModelSource
    from iicnet.formats import official

    load_before = os.getloadavg()
    imported = official.import_checkpoint(PARITY / "st-06.pth")
    conv = Converter(imported.model, imported.config, ModelSource("st-06", "st-06"),
                     engine="torch")
    stack = _photo_stack(conv.num_images, args.height, args.width)
    _, whole_e, whole_r = _round_trip(conv, stack, 0, 0)
    curve = []
    for halo in args.halos:
        timing, e, r = _round_trip(conv, stack, args.tile, halo)
        curve.append({"halo": halo, **timing, "embedding": _differences(e, whole_e),
                      "restored": _differences(r, whole_r)})
        c = curve[-1]
        print(f"halo {halo:3d}: embedding max {c['embedding']['max']} "
              f"({c['embedding']['fraction_differing']:.4%} differ), restored max "
              f"{c['restored']['max']} ({c['restored']['fraction_differing']:.4%} differ, "
              f"{c['restored']['fraction_over_1']:.4%} by >1), "
              f"{c['embed_s'] + c['restore_s']:.1f} s", flush=True)
        _write_halo(args, conv, load_before, curve)
    return 0


def _write_halo(args: argparse.Namespace, conv, load_before: tuple, curve: list) -> None:
    """The curve so far (written after each halo, so a stopped run keeps its rows)."""
    report = {
        "benchmark": "halo",
        "setup": {"model": "official st-06 (video K=3, x2 Haar, 10 blocks, trained)",
                  "clip": f"{conv.num_images} frames of {args.height}x{args.width} panning "
                          "across skimage's coffee photo", "tile": args.tile,
                  "compared": "tiled vs untiled uint8: the embedding, and the images each "
                              "path restores from its own embedding"},
        "machine": {**describe(), "load_average_before": load_before,
                    "load_average_after": os.getloadavg()},
        "curve": curve,
    }
    out = Path(__file__).resolve().parent / "results" / "halo.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


def perturbed_published() -> tuple[IICNet, Config]:
    """The published K=5 design (seed 0) with every weight moved by 0.02-sigma noise (seed 0),
    so no coupling is the identity that a fresh network starts as."""
    cfg = Config()
    torch.manual_seed(0)
    model = IICNet(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return model, cfg


def big_main(args: argparse.Namespace) -> int:
    """1920x1080 K=5, the published design with perturbed weights: tiled (default tile and
    halo) against untiled, each in its own process for its own peak memory."""
    from iicnet.convert import DEFAULT_HALO, DEFAULT_TILE

    if args.one:
        tile, halo = (int(v) for v in args.one.split(","))
        from iicnet.convert import Converter, ModelSource

        model, cfg = perturbed_published()
        conv = Converter(model.eval(), cfg, ModelSource("k5", "k5"), engine=args.engine)
        stack = _clip_stack(cfg.model.num_images, 1080, 1920)
        _round_trip(conv, stack[:, :, :64, :64].contiguous(), 0, 0)  # engine set up, untimed
        base = current_rss_mib()
        timing, e, r = _round_trip(conv, stack, tile, halo)
        timing["peak_memory_mib"] = peak_rss_mib() - base
        torch.save({"e": e, "r": r}, args.out)
        print(json.dumps(timing))
        return 0
    load_before = os.getloadavg()
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, tile, halo in (("tiled", DEFAULT_TILE, DEFAULT_HALO), ("untiled", 0, 0)):
            out = Path(tmp) / f"{name}.pt"
            cmd = [sys.executable, __file__, "--big", "--one", f"{tile},{halo}", "--out",
                   str(out), "--engine", args.engine]
            text = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            runs[name] = {"tile": tile, "halo": halo,
                          **json.loads(text.strip().splitlines()[-1])}
            runs[name]["outputs"] = torch.load(out, weights_only=True)
            print(name, {k: v for k, v in runs[name].items() if k != "outputs"}, flush=True)
        tiled, whole = runs["tiled"].pop("outputs"), runs["untiled"].pop("outputs")
    load_after = os.getloadavg()
    report = {
        "benchmark": "halo-1080p",
        "setup": {"config": "video-k5 (published design, random weights + 0.02 noise)",
                  "clip": "5 frames of 1920x1080 panning across skimage's astronaut photo",
                  "device": "cpu", "engine": args.engine},
        "machine": {**describe(), "load_average_before": load_before,
                    "load_average_after": load_after, "note": load_note(load_before, load_after)},
        "runs": runs,
        "embedding": _differences(tiled["e"], whole["e"]),
        "restored": _differences(tiled["r"], whole["r"]),
        "extra_time": ((runs["tiled"]["embed_s"] + runs["tiled"]["restore_s"])
                       / (runs["untiled"]["embed_s"] + runs["untiled"]["restore_s"])),
    }
    out = Path(__file__).resolve().parent / "results" / "halo-1080p.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("embedding", "restored", "extra_time")}))
    return 0


# -- bf16 ----------------------------------------------------------------------------------
# OpenVINO at float32 against OpenVINO at bf16 (its CPU plugin's inference precision), same
# weights, same clip, the default tile and halo, as ``iicnet embed`` / ``restore`` run them.
# Random weights as initialised leave the dense blocks out of the result (the couplings start
# near identity), so the published design gets the perturbation --big uses; the two trained
# models show what the precision does to weights that learned something.

BF16_LIMITS = {"embedding_max": 1, "embedding_fraction_differing": 1e-4,
               "restored_psnr_change_db": 0.05}


def _bf16_models():
    from iicnet import zoo
    from iicnet.formats import checkpoint, official

    model, cfg = perturbed_published()
    yield "video-k5 (published design, random weights + 0.02 noise)", model, cfg
    if (PARITY / "st-06.pth").is_file():
        imported = official.import_checkpoint(PARITY / "st-06.pth")
        yield "official st-06 (video K=3, 10 blocks, trained)", imported.model, imported.config
    model, cfg = checkpoint.load(zoo.folder("zoo:video-k3-m"))
    yield "zoo:video-k3-m (trained)", model, cfg


def _bf16_decision(rows: list[dict]) -> str:
    """Why OpenVINO's default precision is what it is, from the measured rows."""
    failing = [r for r in rows if not r["within_limits"]]
    if not failing:
        return "bf16 by default: every model within the limits"
    worst = max(failing, key=lambda r: r["embedding_f32_vs_bf16"]["fraction_differing"])
    e, limits = worst["embedding_f32_vs_bf16"], BF16_LIMITS
    speedups = [r["speedup_bf16"] for r in rows]
    return (f"float32 kept: bf16 moves the embedding PNG by up to {e['max']} levels on "
            f"{e['fraction_differing']:.2%} of its values ({worst['model']}; the limit is "
            f"{limits['embedding_max']} level on {limits['embedding_fraction_differing']:g}), "
            "though restored PSNR moves by at most "
            f"{max(abs(r['restored_psnr_change_db']) for r in rows):.4f} dB and it runs "
            f"{min(speedups):.1f}-{max(speedups):.1f}x faster; opt in with "
            "IICNET_OPENVINO_PRECISION=bf16")


def bf16_main(args: argparse.Namespace) -> int:
    from iicnet.convert import DEFAULT_TILE, Converter, ModelSource, tile_bounds
    from iicnet.convert.engine import OpenVinoEngine
    from iicnet.model.metrics import psnr

    load_before = os.getloadavg()
    rows_out = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, model, cfg in _bf16_models():
            conv = Converter(model.eval(), cfg, ModelSource(label, label), engine="torch")
            stack = _clip_stack(conv.num_images, 480, 854)
            rows = tile_bounds(480, DEFAULT_TILE, conv.multiple)
            cols = tile_bounds(854, DEFAULT_TILE, conv.multiple)
            runs = {}
            for precision in ("f32", "bf16"):
                conv.engine = OpenVinoEngine(conv.model, conv.fingerprint, Path(tmp), precision)
                for direction in ("embed", "restore"):
                    conv.engine.exported(direction)  # the one-time conversion, untimed
                times = []
                for _ in range(args.repeats):
                    load = os.getloadavg()[0]
                    t0 = time.perf_counter()
                    e = conv.encode_stack(stack, rows, cols)
                    t1 = time.perf_counter()
                    r = conv.decode_stack(e, rows, cols)
                    times.append({"embed_s": t1 - t0, "restore_s": time.perf_counter() - t1,
                                  "load_average_1min": load})
                per_frame = psnr(r, stack)  # stack order, the reference first
                runs[precision] = {"times": times, "e": e,
                                   "restored_psnr_db": float(per_frame.mean()),
                                   "restored_psnr_per_frame_db": per_frame.tolist()}
                print(label, precision, times, f"{runs[precision]['restored_psnr_db']:.3f} dB",
                      flush=True)
            diff = _differences(runs["f32"].pop("e"), runs["bf16"].pop("e"))
            change = runs["bf16"]["restored_psnr_db"] - runs["f32"]["restored_psnr_db"]
            passes = (diff["max"] <= BF16_LIMITS["embedding_max"]
                      and diff["fraction_differing"] <= BF16_LIMITS["embedding_fraction_differing"]
                      and abs(change) <= BF16_LIMITS["restored_psnr_change_db"])
            best = {p: min(t["embed_s"] + t["restore_s"] for t in runs[p]["times"])
                    for p in runs}
            rows_out.append({"model": label, "runs": runs, "embedding_f32_vs_bf16": diff,
                             "restored_psnr_change_db": change,
                             "speedup_bf16": best["f32"] / best["bf16"],
                             "within_limits": passes})
            print(json.dumps({k: v for k, v in rows_out[-1].items() if k != "runs"}), flush=True)
    load_after = os.getloadavg()
    report = {
        "benchmark": "inference-bf16",
        "setup": {"clip": "480x854, frames panning across skimage's astronaut photo",
                  "engine": "openvino, INFERENCE_PRECISION_HINT f32 vs bf16",
                  "tile": DEFAULT_TILE, "repeats": args.repeats,
                  "rounds": "per model: f32 runs, then bf16 runs",
                  "limits_for_default": BF16_LIMITS},
        "machine": {**describe(), "load_average_before": load_before,
                    "load_average_after": load_after, "note": load_note(load_before, load_after)},
        "results": rows_out,
        "bf16_by_default": all(r["within_limits"] for r in rows_out),
        "decision": _bf16_decision(rows_out),
    }
    out = Path(__file__).resolve().parent / "results" / "inference-bf16-cpu.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def _clip_stack(k: int, height: int, width: int) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        files = _clip_files(Path(tmp), k, height, width)
        frames = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    order = [k // 2, *[j for j in range(k) if j != k // 2]]
    return torch.from_numpy(np.stack([frames[j] for j in order])).permute(0, 3, 1, 2)


def engines_main(args: argparse.Namespace, device: str) -> int:
    """The CLI per engine on the same clips and checkpoint, the engines interleaved round by
    round (torch, openvino, torch, openvino, ...); speed-ups over torch, outputs compared."""
    import numpy as np
    from PIL import Image

    from iicnet.formats.embedding_png import read

    load_before = os.getloadavg()
    per_engine: dict[str, list[dict]] = {e: [] for e in args.engines}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        env_cache = os.environ.setdefault("IICNET_CACHE", str(base / "cache"))
        for i in range(args.rounds):
            for e in args.engines:
                per_engine[e].append(run_cli(device, args.tile, args.clips, e, base, f"-{i}"))
        comparison, speedups = {}, {}
        for name in args.clips:
            ref = per_engine["torch"][0][name]
            for engine in args.engines:
                got = per_engine[engine][0][name]
                a = read(Path(ref["folder"]) / "embedding.png")[0].astype(np.int16)
                b = read(Path(got["folder"]) / "embedding.png")[0].astype(np.int16)
                restored = [np.abs(np.asarray(Image.open(x), np.int16)
                                   - np.asarray(Image.open(y), np.int16))
                            for x, y in zip(sorted((Path(ref["folder"]) / "restored").iterdir()),
                                            sorted((Path(got["folder"]) / "restored").iterdir()))]
                r = np.stack(restored)
                comparison[f"{name} {engine} vs torch"] = {
                    "embedding_max": int(np.abs(a - b).max()),
                    "embedding_fraction_differing": float((a != b).mean()),
                    "restored_max": int(r.max()), "restored_fraction_differing":
                    float((r > 0).mean())}
                speedups[f"{name} {engine}"] = {
                    part: [t[name][part]["wall_s"] / g[name][part]["wall_s"]
                           for t, g in zip(per_engine["torch"], per_engine[engine])]
                    for part in ("embed", "restore")}
    load_after = os.getloadavg()
    report = {
        "benchmark": "inference-engines",
        "setup": {"config": "video-k5 (published, random weights)", "k": 5, "device": device,
                  "tile": args.tile, "engines": args.engines, "cache": env_cache,
                  "rounds": args.rounds, "order": "interleaved: each round runs every engine",
                  "commands": "iicnet embed FRAMES -o emb.png --engine E; iicnet restore "
                              "emb.png -o DIR --engine E (each its own process)"},
        "machine": {**describe(), "load_average_before": load_before,
                    "load_average_after": load_after,
                    "note": load_note(load_before, load_after)},
        "results": per_engine,
        "speedup_over_torch_per_round": speedups,
        "outputs": comparison,
    }
    out = Path(__file__).resolve().parent / "results" / f"inference-engines-{device}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    for key, parts in speedups.items():
        print(f"{key}: embed {', '.join(f'{v:.2f}x' for v in parts['embed'])}; restore "
              f"{', '.join(f'{v:.2f}x' for v in parts['restore'])}")
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
    p.add_argument("--engines", nargs="+", default=["torch"], choices=["torch", "openvino"],
                   help="--engine of the CLI; several: compare them (torch first)")
    p.add_argument("--rounds", type=int, default=2,
                   help="with several engines: rounds of all engines, interleaved")
    p.add_argument("--halo", action="store_true", help="the halo / difference / time curve")
    p.add_argument("--halos", type=int, nargs="+", default=[0, 8, 16, 24, 32, 48])
    p.add_argument("--big", action="store_true", help="1920x1080 K=5 tiled vs untiled")
    p.add_argument("--engine", default="torch", choices=["torch", "openvino"],
                   help="the engine of --big (halo effects do not depend on it)")
    p.add_argument("--bf16", action="store_true",
                   help="OpenVINO float32 against bf16 on the 480x854 clip")
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.halo:
        args.height, args.width, args.tile = (args.height if args.height != 480 else 192,
                                              args.width if args.width != 854 else 320,
                                              args.tile if args.tile != 512 else 64)
        return halo_main(args)
    if args.big:
        return big_main(args)
    if args.bf16:
        return bf16_main(args)
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
        "checksums_equal": results["fast"]["checksum"] == results["straightforward"]["checksum"],
    }
    out = Path(__file__).resolve().parent / "results" / f"inference-{device}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"speed-up {report['speedup_fast']:.2f}x; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
