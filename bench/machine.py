"""Describe the machine a benchmark ran on, for the JSON results."""

from __future__ import annotations

import os
import platform
import resource

import torch


def describe() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def load_note(before: tuple, after: tuple) -> str:
    """How far the machine's load lets a reader trust absolute times (cores = full load)."""
    busiest = max(*before, *after)
    cores = os.cpu_count() or 1
    if busiest <= cores + 0.5:
        return f"quiet: load average at most {busiest:.1f} on {cores} cores (the benchmark itself)"
    return (f"loaded: load average up to {busiest:.1f} on {cores} cores from other jobs; "
            "compare the rows within this file only")


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
