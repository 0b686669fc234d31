"""Facts about this machine that belong in every fingerprint."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

__all__ = ["cpu_model"]


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), or the platform's best guess."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
