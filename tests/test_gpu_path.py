"""The GPU training path, checked where it can be on a CPU: bf16 autocast keeps the flow's
stream and scales in float32, channels_last computes the same step, the compile settings are
validated, and bench/gpu.sh is a dry run without a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from iicnet.model.config import ConfigError
from iicnet.model.modules.coupling import CouplingStack
from iicnet.training import Trainer
from tests.test_training import batch, tiny

REPO = Path(__file__).resolve().parent.parent


def test_bf16_autocast_keeps_the_coupling_stream_and_scales_in_float32():
    torch.manual_seed(0)
    stack = CouplingStack(channels=12, split=3, blocks=3, growth=8)
    for p in stack.parameters():  # the last convolutions start at zero: make them act
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 12, 16, 16)
    scales = []
    hooks = [b.H.register_forward_hook(lambda m, a, out: scales.append(out.dtype))
             for b in stack.blocks]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = stack(x)
        back = stack.inverse(y)
        assert stack.blocks[0]._log_scale(x[:, :3]).dtype == torch.float32
    for h in hooks:
        h.remove()
    assert set(scales) == {torch.bfloat16}, "the dense blocks themselves run in bf16"
    assert y.dtype == back.dtype == torch.float32
    # the inverse recomputes each block's bf16 sub-networks on the same inputs, so it undoes
    # the forward pass up to float32 rounding, not bf16's 3 digits
    assert (back - x).abs().max() < 1e-4
    with torch.no_grad():
        full = stack(x)
    assert (y - full).abs().max() > 1e-4, "autocast changed nothing: the check is void"


def test_channels_last_trains_the_same_step():
    images, reference = batch()
    losses = []
    for layout in ("false", "true"):
        trainer = Trainer(tiny(f"train.channels_last={layout}"))
        losses.append([trainer.train_step(images, reference).losses["loss/total"]
                       for _ in range(3)])
        if layout == "true":
            weight = trainer.model.coupling.blocks[0].F.convs[0].weight
            assert weight.is_contiguous(memory_format=torch.channels_last)
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)


def test_compile_settings_are_checked():
    with pytest.raises(ConfigError, match="train.compile"):
        tiny("train.compile=fast")
    with pytest.raises(ValueError, match="cuda-graphs needs a GPU"):
        Trainer(tiny("train.compile=cuda-graphs"))
    assert Trainer(tiny()).optimizer.defaults["fused"] is None  # fused Adam: GPU only


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, gpu.sh measures for real")
def test_gpu_bench_is_a_dry_run_without_a_gpu():
    results = REPO / "bench" / "results"
    before = {p.name: p.stat().st_mtime_ns for p in results.iterdir()}
    run = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh")], capture_output=True,
                         text=True, env={**os.environ, "PY": sys.executable}, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "dry run, no CUDA GPU" in run.stdout
    for bench in ("train_step.py", "inference.py", "precision.py"):
        assert f"bench/{bench}" in run.stdout
    assert "float32 and bf16 autocast" in run.stdout
    assert {p.name: p.stat().st_mtime_ns for p in results.iterdir()} == before
