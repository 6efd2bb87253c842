"""The machine a benchmark ran on, recorded with its results.

Ratios between methods depend on the processor, not only on the code: a long prefill's large
products and attention gain more from wide vector units than the short passes of a reuse method
do, so every run says which CPU (and GPU) gave its numbers.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")


def cpu_model(cpuinfo: Path = CPUINFO) -> str:
    """The processor's model name (Linux's /proc/cpuinfo), else what `platform` reports."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine() -> dict[str, Any]:
    """CPU model, the vector capability torch dispatches to, its threads and cores, and the GPU if any."""
    import torch  # here, so the HTTP load driver that imports this module does not load torch

    return {
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
    }


def machine_phrase(meta: dict[str, Any]) -> str:
    """The machine of a run's `meta` as its report says it ("not recorded" for older runs)."""
    info = meta.get("machine")
    if not info:
        return "machine not recorded"
    phrase = f"{info['cpu']} ({info['cpu_capability']}, {info['torch_threads']} torch threads)"
    return phrase + (f", GPU {info['gpu']}" if info.get("gpu") else "")
