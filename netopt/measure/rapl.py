"""`RaplEnergy`: millijoules an inference from Linux powercap RAPL package counters, as codecarbon
and Zeus read them; where none is readable it says so at construction. The analytical model, for
machines without counters, is `netopt.measure.energy.EnergyModel`.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from netopt.errors import MeasurementError
from netopt.frozen import Frozen
from netopt.measure.base import Backend, Fingerprint, Measurement, MeasureSettings, settings_from, summarize
from netopt.measure.onnxrt import OnnxRuntimeCPU, export_onnx

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["RaplDomain", "RaplEnergy", "RaplSettings", "counter_delta", "find_rapl_domains"]


_PACKAGE_ZONE = re.compile(r"intel-rapl:\d+")
_NO_RAPL_HINT = "estimate energy analytically with netopt.measure.energy.EnergyModel instead"


class RaplSettings(Frozen):
    """How many energy samples to take; each sample is one block of runs between two readings."""


    samples: int = Field(5, ge=1, le=1000, description="blocks of timed runs, one energy sample each")


def counter_delta(before: int, after: int, max_range: int) -> int:
    """Microjoules between two readings of a counter that wraps to 0 past `max_range`.

    One wrap at most is detectable: a block must be shorter than the counter's wrap period
    (minutes to hours at package power).
    """
    return after - before if after >= before else max_range - before + after


def _read_int(path: Path) -> int:
    """The integer in a sysfs file; MeasurementError saying why when it cannot be read."""
    try:
        return int(path.read_text().strip())
    except PermissionError:
        raise MeasurementError(
            f"RAPL counter {path} exists but is not readable (since Linux 5.10 energy_uj is root-only); "
            f"run as root or grant read access (chmod a+r {path}), or {_NO_RAPL_HINT}"
        ) from None
    except (OSError, ValueError) as exc:
        raise MeasurementError(f"RAPL counter {path} cannot be read ({exc}); {_NO_RAPL_HINT}") from None


@dataclass(frozen=True)
class RaplDomain:
    """One RAPL package zone: its name ("package-0"), sysfs folder and wrap-around range."""

    name: str
    path: Path
    max_range_uj: int

    def read_uj(self) -> int:
        return _read_int(self.path / "energy_uj")


def _zone_name(zone: Path) -> str:
    """The zone's `name` ("package-0", "psys"), or its folder name where the file is missing."""
    name_file = zone / "name"
    return name_file.read_text().strip() if name_file.is_file() else zone.name


def _package_zones(base: Path) -> list[Path]:
    """Top-level zones with a counter; sub-zones (core, dram) and psys would count twice."""
    if not base.is_dir():
        return []
    zones = sorted(p for p in base.glob("intel-rapl:*") if _PACKAGE_ZONE.fullmatch(p.name))
    return [z for z in zones if (z / "energy_uj").exists() and not _zone_name(z).startswith("psys")]


def find_rapl_domains(root: str | os.PathLike[str] = "/sys/class/powercap") -> tuple[RaplDomain, ...]:
    """The package domains under a powercap root, each checked readable now."""
    base = Path(root)
    zones = _package_zones(base)
    if not zones:
        raise MeasurementError(
            f"RaplEnergy: no RAPL package domain under {base} (no intel-rapl:N/energy_uj): this machine "
            f"exposes no energy counter (virtual machines usually do not); {_NO_RAPL_HINT}"
        )
    domains = tuple(RaplDomain(_zone_name(z), z, _read_int(z / "max_energy_range_uj")) for z in zones)
    for domain in domains:
        domain.read_uj()  # fail now, not mid-measurement, when the counter is unreadable
    return domains


class RaplEnergy(Backend):
    """Energy (mJ) of one inference through ONNX Runtime on the CPU, from RAPL package counters.

    After `warmup` runs, each sample reads the counters, runs the model until `runs` and
    `min_seconds` are met (the latency protocol), reads them again, and divides the energy by
    the runs. It is the whole package's energy while the model runs, idle power included.
    """

    unit = "mJ"

    def __init__(self, root: str | os.PathLike[str] = "/sys/class/powercap", threads: int = 1,
                 settings: MeasureSettings | None = None, samples: int = 5, **ort: Any) -> None:
        self.domains = find_rapl_domains(root)
        self.rapl: RaplSettings = settings_from(RaplSettings, {"samples": samples}, "RaplEnergy")
        self.runtime = OnnxRuntimeCPU(threads=threads, settings=settings, **ort)
        self.settings = self.runtime.settings

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint({**self.runtime.fingerprint.fields, "backend": "rapl-onnxruntime-cpu",
                            "rapl_domains": ",".join(d.name for d in self.domains)})

    def read(self) -> tuple[int, ...]:
        """Counter readings of every domain, in microjoules."""
        return tuple(d.read_uj() for d in self.domains)

    def energy_uj(self, before: tuple[int, ...], after: tuple[int, ...]) -> int:
        """Microjoules spent between two `read()`s, summed over domains, wrap-around handled."""
        return sum(counter_delta(b, a, d.max_range_uj) for b, a, d in zip(before, after, self.domains, strict=True))

    def measure(self, module: nn.Module, example_input: torch.Tensor) -> Measurement:
        import numpy as np

        session = self.runtime.session(export_onnx(module, example_input, self.runtime.ort.exporter))
        x = np.random.default_rng(0).standard_normal(tuple(example_input.shape)).astype(np.float32)
        feed = {session.get_inputs()[0].name: x}
        return self.measure_calls(lambda: session.run(None, feed), type(module).__name__)

    def measure_calls(self, run: Callable[[], object], what: str = "measurement") -> Measurement:
        """Millijoules per call of `run`: warm-ups, then one sample per block of runs."""
        for _ in range(self.settings.warmup):
            run()
        samples = [self._block(run) for _ in range(self.rapl.samples)]
        return summarize(samples, self.unit, self.fingerprint.key, what)

    def _block(self, run: Callable[[], object]) -> float:
        """Energy per run (mJ) over one block of runs meeting the protocol's count and time."""
        before, count, start = self.read(), 0, time.perf_counter()
        while count < self.settings.max_runs and (
            count < self.settings.runs or time.perf_counter() - start < self.settings.min_seconds
        ):
            run()
            count += 1
        return self.energy_uj(before, self.read()) / count / 1000
