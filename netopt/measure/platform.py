"""Facts about this machine that belong in every fingerprint."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

__all__ = ["cores", "cpu_model"]


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), or the platform's best guess."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cores() -> int:
    """The CPU cores this process may run on (its affinity where the OS keeps one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
