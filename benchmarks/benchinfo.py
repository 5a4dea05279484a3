"""What every benchmark result records about the machine it ran on (imported by the bench scripts, which
run with this folder first on ``sys.path``)."""
from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _memory_gib() -> float | None:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal"):
            return round(int(line.split()[1]) / 2**20, 1)
    return None


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_info(packages: Iterable[str] = (), **extra: Any) -> dict[str, Any]:
    """Platform, CPU, cores, memory, the load average when the run started (the development machines are
    shared, so wall-clock rates swing with it), the versions of ``packages``, and ``extra`` fields."""
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_model": _cpu_model(),
            "cpu_count": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)), "memory_gib": _memory_gib(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "packages": {p: _version(p) for p in packages}, **extra}
