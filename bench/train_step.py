"""Training-step speed and memory: the straightforward formulation against the fast one.

The published video K=5 design, 10 blocks, 144x144 crops, batch 2, same weights and batch
for every formulation. One step = forward, quantise, inverse, three losses, backward, Adam.
Speed: the formulations' steps are interleaved in one process (A, B, A, B, ...), so a busy
machine slows them alike and the ratio stays fair. Memory: each formulation runs one step in
a process of its own, and its peak memory above the idle model is reported. Results, with the
machine named, go to ``bench/results/train_step-<device>.json``.

    python bench/train_step.py [--steps 3] [--device auto|cpu|cuda]

It also records the ceiling of any exact reformulation: the step's FLOPs (torch's flop
counter), the straightforward step's GFLOP/s, and the best GFLOP/s this machine reaches on a
wide convolution; their ratio bounds the speed-up possible without changing the arithmetic.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import current_rss_mib, describe, peak_rss_mib  # noqa: E402

from iicnet.model import IICNet  # noqa: E402
from iicnet.model.config import Config  # noqa: E402
from iicnet.model.losses import iicnet_loss  # noqa: E402
from iicnet.training.trainer import build_optimizer, compiled, uses_bf16  # noqa: E402

FORMULATIONS = {
    "straightforward": {"fused": False, "memory_saving": False, "channels_last": False,
                        "amp": "off", "compile": "off"},
    "fast": {"fused": True, "memory_saving": False, "channels_last": False, "amp": "gpu",
             "compile": "off"},
    "fast+bf16": {"fused": True, "memory_saving": False, "channels_last": False,
                  "amp": "bf16", "compile": "off"},
    "fast+memory_saving": {"fused": True, "memory_saving": True, "channels_last": False,
                           "amp": "gpu", "compile": "off"},
    "fast+channels_last": {"fused": True, "memory_saving": False, "channels_last": True,
                           "amp": "gpu", "compile": "off"},
}
"""``amp`` is ``train.amp`` (:func:`iicnet.training.trainer.uses_bf16`): ``gpu`` is bf16
autocast on a GPU and float32 on a CPU, ``bf16`` is bf16 autocast everywhere (the trainer's
``auto`` on a CPU with native bf16). ``--compile`` adds ``fast+compile`` (``torch.compile``,
Inductor) and, on a GPU, ``fast+cuda-graphs``."""
COMPILED = {
    "fast+compile": {**FORMULATIONS["fast"], "compile": "default"},
    "fast+cuda-graphs": {**FORMULATIONS["fast"], "compile": "cuda-graphs"},
}
EVERY_FORMULATION = {**FORMULATIONS, **COMPILED}


def build(name: str, device: str, crop: int, batch: int, k: int):
    f = EVERY_FORMULATION[name]
    cfg = Config().override([f"model.num_images={k}", f"model.fused={f['fused']}",
                             f"model.memory_saving={f['memory_saving']}"])
    torch.manual_seed(0)
    model = IICNet(cfg).to(device).train()
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(batch, k, 3, crop, crop, generator=gen).to(device)
    if f["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    return cfg, model, images


def make_step(name: str, device: str, crop: int, batch: int, k: int):
    """One training step of a formulation as a closure (model, optimiser and batch bound):
    the trainer's own optimiser (fused Adam on a GPU) and compile setting."""
    cfg, model, images = build(name, device, crop, batch, k)
    f = EVERY_FORMULATION[name]
    amp = uses_bf16(f["amp"], torch.device(device))
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    opt = build_optimizer(model.parameters(), cfg.optim, torch.device(device))
    net = compiled(model, f["compile"], torch.device(device))

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            out = net(images)
            loss = iicnet_loss(out, images, images[:, 0], cfg.loss).total
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return float(loss.detach())

    step.model = model
    return step


def peak_memory(name: str, device: str, crop: int, batch: int, k: int) -> float:
    """MiB above the idle model that one step needs at its peak (run in a fresh process)."""
    step = make_step(name, device, crop, batch, k)
    if device == "cuda":
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    base = current_rss_mib()
    step()
    return peak_rss_mib() - base


def interleaved_times(names: list[str], device: str, steps: int, crop: int, batch: int,
                      k: int) -> dict:
    """Seconds per step of each formulation, their steps interleaved; the first step is
    warm-up (and, compiled, compilation)."""
    closures = {name: make_step(name, device, crop, batch, k) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(steps + 1):
        for name, step in closures.items():
            t0 = time.perf_counter()
            step()
            if i:
                times[name].append(time.perf_counter() - t0)
            print(f"  step {i} {name}: {time.perf_counter() - t0:.2f} s", flush=True)
    return times


def max_difference(device: str, crop: int, batch: int, k: int) -> float:
    """Largest |difference| of embedding and restored stack between the formulations."""
    outs = []
    for name in FORMULATIONS:
        if FORMULATIONS[name]["amp"] == "bf16":
            continue  # reduced precision: compared in bench/precision.py, not here
        cfg, model, images = build(name, device, crop, batch, k)
        with torch.no_grad():
            out = model(images, generator=torch.Generator(device).manual_seed(2))
        outs.append(torch.cat([out.embedding.flatten(), out.restored.flatten()]).float().cpu())
    return max(float((o - outs[0]).abs().max()) for o in outs[1:])


def profile(device: str, crop: int, batch: int, k: int) -> dict:
    """Where one fast step's time goes: by operator (forward and backward together, as
    torch's profiler counts self time) and by module (the forward pass of each part of the
    network, from hooks; a module's backward runs as the operators above)."""
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    step = make_step("fast", device, crop, batch, k)
    step()
    ranges: list = []

    def enter(name):
        def hook(module, args):
            ranges.append(record_function(f"module::{name}"))
            ranges[-1].__enter__()
        return hook

    def leave(module, args, output):
        ranges.pop().__exit__(None, None, None)

    handles = []
    for name, module in step.model.named_children():
        handles += [module.register_forward_pre_hook(enter(name)),
                    module.register_forward_hook(leave)]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        step()
    for h in handles:
        h.remove()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events if not e.key.startswith("module::"))
    groups = {"convolution forward": ("aten::mkldnn_convolution", "aten::cudnn_convolution",
                                      "aten::_convolution", "aten::convolution"),
              "convolution backward": ("aten::convolution_backward",),
              "cat / split / copies": ("aten::cat", "aten::copy_", "aten::split",
                                       "aten::slice", "aten::narrow", "aten::contiguous",
                                       "aten::clone"),
              "activations": ("aten::leaky_relu", "aten::leaky_relu_backward",
                              "aten::sigmoid", "aten::sigmoid_backward", "aten::exp")}
    by_op = {g: 0.0 for g in groups} | {"other": 0.0}
    for e in events:
        if e.key.startswith("module::"):
            continue
        group = next((g for g, keys in groups.items() if e.key in keys), "other")
        by_op[group] += e.self_cpu_time_total
    modules = {e.key.removeprefix("module::"): e.cpu_time_total / 1e6 for e in events
               if e.key.startswith("module::")}
    top = sorted(((e.key, e.self_cpu_time_total) for e in events
                  if not e.key.startswith("module::")), key=lambda t: -t[1])[:8]
    return {"step_s": total / 1e6,
            "by_operator_share": {g: round(v / total, 4) for g, v in by_op.items()},
            "top_operators_s": {key: round(v / 1e6, 3) for key, v in top},
            "by_module_forward_s": {m: round(v, 3) for m, v in modules.items()},
            "forward_s": round(sum(modules.values()), 3)}


def step_flops(device: str, crop: int, batch: int, k: int) -> float:
    """FLOPs of one straightforward step (convolutions and matrix products, forward and
    backward), counted by ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    step = make_step("straightforward", device, crop, batch, k)
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def best_conv_rate(device: str, repeats: int = 4) -> dict:
    """The fastest this machine runs a convolution: wide 3x3 ones (64 and 128 channels in
    and out, at least as wide as the published design's, 2x144x144), forward and backward,
    best of ``repeats``. The training step's FLOPs are ~90% convolutions, most of them
    narrower (32 outputs) and slower than these, so the best rate bounds what any exact
    reformulation could reach."""
    gen = torch.Generator().manual_seed(0)
    rates = {}
    for width in (64, 128):
        x = torch.randn(2, width, 144, 144, generator=gen).to(device).requires_grad_()
        conv = torch.nn.Conv2d(width, width, 3, padding=1).to(device)
        flops = 3 * 2 * 2 * width * width * 9 * 144 * 144  # forward, input and weight grads
        best = float("inf")
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            conv(x).sum().backward()
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        rates[f"{width}->{width}"] = flops / best / 1e9
    return {"shapes": "2xWx144x144, 3x3, W -> W, forward + backward (GFLOP/s by W)",
            "gflop_per_s_by_width": rates, "gflop_per_s": max(rates.values())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--crop", type=int, default=144)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile (and CUDA graphs on a GPU)")
    p.add_argument("--only", nargs="+", choices=list(EVERY_FORMULATION), metavar="NAME",
                   help="time only these (straightforward is always timed): "
                        + ", ".join(EVERY_FORMULATION))
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")
    if args.one:
        print(json.dumps(peak_memory(args.one, device, args.crop, args.batch, args.k)))
        return 0
    names = list(FORMULATIONS)
    if args.only:
        names = ["straightforward", *(n for n in args.only if n != "straightforward")]
    elif args.compile:
        names += [n for n in COMPILED if device == "cuda" or "cuda" not in n]
    results = {}
    for name in names:
        cmd = [sys.executable, __file__, "--one", name, "--device", device,
               "--crop", str(args.crop), "--batch", str(args.batch), "--k", str(args.k)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[name] = {"peak_memory_mib": json.loads(out.strip().splitlines()[-1])}
        print(f"{name:>20}: peak {results[name]['peak_memory_mib']:.0f} MiB", flush=True)
    times = interleaved_times(names, device, args.steps, args.crop, args.batch, args.k)
    for name, ts in times.items():
        sec = statistics.median(ts)
        results[name].update(seconds_per_step=sec, samples_per_s=args.batch / sec, step_times=ts)
        print(f"{name:>20}: {sec:.2f} s/step, {args.batch / sec:.3f} samples/s", flush=True)
    base = results["straightforward"]
    flops = step_flops(device, args.crop, args.batch, args.k)
    conv = best_conv_rate(device)
    achieved = flops / base["seconds_per_step"] / 1e9
    ceiling = {
        "step_gflop": flops / 1e9,
        "straightforward_gflop_per_s": achieved,
        "best_conv": conv,
        "max_speedup_at_same_flops": conv["gflop_per_s"] / achieved,
        "note": "an exact reformulation keeps the step's FLOPs; it can be at most "
                "max_speedup_at_same_flops times faster than the straightforward one unless "
                "it runs convolutions faster than the best convolution measured here",
    }
    print(f"{flops / 1e12:.2f} TFLOP/step, straightforward {achieved:.0f} GFLOP/s, best conv "
          f"{conv['gflop_per_s']:.0f} GFLOP/s: at most "
          f"{ceiling['max_speedup_at_same_flops']:.2f}x at the same FLOPs", flush=True)
    breakdown = profile(device, args.crop, args.batch, args.k)
    print("where the fast step's time goes:", json.dumps(breakdown["by_operator_share"]),
          flush=True)
    report = {
        "benchmark": "train_step",
        "setup": {"config": "video-k5 (published)", "crop": args.crop, "batch": args.batch,
                  "k": args.k, "blocks": 10, "device": device, "steps_timed": args.steps},
        "machine": describe(),
        "formulations": {n: EVERY_FORMULATION[n] for n in names},
        "results": results,
        "speedup_over_straightforward": {n: base["seconds_per_step"]
                                         / results[n]["seconds_per_step"] for n in names},
        "memory_ratio_over_straightforward": {n: results[n]["peak_memory_mib"]
                                              / base["peak_memory_mib"] for n in names},
        "profile_fast": breakdown,
        "max_abs_difference": max_difference(device, args.crop, 1, args.k),
        "ceiling": ceiling,
        "machine_load_average": [round(x, 2) for x in os.getloadavg()],
    }
    for key, name in (("speedup_fast", "fast"), ("speedup_bf16", "fast+bf16")):
        if name in results:
            report[key] = report["speedup_over_straightforward"][name]
    print("speed-up over straightforward: " + ", ".join(
        f"{n} {v:.2f}x" for n, v in report["speedup_over_straightforward"].items())
        + f"; max |diff| (float32 formulations) {report['max_abs_difference']:.2e}")
    out = Path(__file__).resolve().parent / "results" / f"train_step-{device}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
