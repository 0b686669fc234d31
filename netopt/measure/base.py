"""The measurement contract: `Measurement`, `Fingerprint`, `MeasureSettings` and `Backend`.

A backend measures a whole network (an nn.Module with its example input) and carries a
fingerprint that identifies the platform: two measurements are comparable only when their
fingerprints are equal, and lookup tables key every entry by it.
"""

from __future__ import annotations

import hashlib
import json
import random
import statistics
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import BaseModel, Field, ValidationError, model_validator

from netopt.errors import ConfigError
from netopt.frozen import Frozen, did_you_mean

if TYPE_CHECKING:
    import torch
    from torch import nn

    from netopt.bridge import Traced
    from netopt.ir import Network

__all__ = [
    "Backend",
    "Estimator",
    "MeasuringEstimator",
    "ModelAware",
    "Fingerprint",
    "MeasureSettings",
    "Measurement",
    "NoisyMeasurementWarning",
    "setting_error",
    "settings_from",
    "steady",
    "summarize",
    "time_interleaved",
]

NOISY_IQR = 0.10
"""IQR/median above which a measurement is flagged noisy (torch.utils.benchmark's threshold)."""


def settings_from(cls: type[BaseModel], values: dict[str, Any], what: str) -> Any:
    """Validate keyword settings, turning pydantic's report into one ConfigError line."""
    try:
        return cls(**values)
    except ValidationError as exc:
        raise setting_error(exc, cls, what) from None


def setting_error(exc: ValidationError, cls: type[BaseModel], what: str) -> ConfigError:
    """pydantic's report on `cls` as one ConfigError line: the setting, its value, the rule, the valid names."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "?"
    hint = did_you_mean(err["loc"][-1], list(cls.model_fields)) if err["type"] == "extra_forbidden" else ""
    return ConfigError(f"{what}: setting {field}={err.get('input')!r} is invalid: {err['msg']}{hint or ';'} "
                       f"valid settings: {sorted(cls.model_fields)}")


class NoisyMeasurementWarning(UserWarning):
    """A measurement whose spread (IQR/median) exceeds 10%: quote it with care."""


class MeasureSettings(Frozen):
    """The protocol: warm-ups, then at least `runs` timed runs and at least `min_seconds`."""


    warmup: int = Field(10, ge=1, description="untimed runs first (caches, allocator, JIT)")
    runs: int = Field(50, ge=5, description="minimum number of timed runs")
    min_seconds: float = Field(0.2, ge=0.0, description="keep timing until this much time has passed")
    max_runs: int = Field(2000, ge=5, description="stop after this many timed runs whatever the time")

    @model_validator(mode="after")
    def _consistent(self) -> MeasureSettings:
        if self.max_runs < self.runs:
            raise ValueError(f"max_runs={self.max_runs} is below runs={self.runs}; raise max_runs or lower runs")
        if self.min_seconds == float("inf"):
            raise ValueError("min_seconds must be finite")
        return self


@dataclass(frozen=True)
class Measurement:
    """Samples of one quantity (milliseconds, or millijoules) and their robust summary."""

    unit: str
    samples: tuple[float, ...]
    median: float
    min: float
    p90: float
    iqr: float
    fingerprint: str = ""

    @property
    def iqr_ratio(self) -> float:
        """IQR / median: the relative spread; above 0.10 the measurement is noisy."""
        return self.iqr / self.median if self.median else 0.0

    @property
    def noisy(self) -> bool:
        return self.iqr_ratio > NOISY_IQR

    def scaled(self, factor: float) -> Measurement:
        """The same samples times `factor`: a figure taken side by side with a reference,
        expressed at the level the reference was measured at first."""
        return Measurement(self.unit, tuple(s * factor for s in self.samples), self.median * factor,
                           self.min * factor, self.p90 * factor, self.iqr * factor, self.fingerprint)

    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "samples": list(self.samples), "median": self.median, "min": self.min,
                "p90": self.p90, "iqr": self.iqr, "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Measurement:
        return cls(str(d["unit"]), tuple(float(s) for s in d["samples"]), float(d["median"]), float(d["min"]),
                   float(d["p90"]), float(d["iqr"]), str(d.get("fingerprint", "")))


def summarize(samples: Sequence[float], unit: str, fingerprint: str = "", what: str = "measurement") -> Measurement:
    """Median, min, p90 and IQR of the samples; warns when IQR/median exceeds 10%."""
    if not samples:
        raise ValueError("no samples to summarize")
    ordered = sorted(samples)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
        p90 = statistics.quantiles(ordered, n=10, method="inclusive")[-1]
    else:
        q1 = q3 = p90 = ordered[0]
    m = Measurement(unit, tuple(samples), statistics.median(ordered), ordered[0], p90, q3 - q1, fingerprint)
    if m.noisy:
        warnings.warn(
            f"{what}: IQR/median is {m.iqr_ratio:.0%} (> {NOISY_IQR:.0%}); the machine is busy or the "
            "workload too short: quote the minimum, or measure again with more runs",
            NoisyMeasurementWarning, stacklevel=3,
        )
    return m


def steady(measure: Callable[[], Measurement], tries: int = 3) -> Measurement:
    """Measure again while the result is noisy (IQR/median > 10%), up to `tries` times in all;
    return the steadiest. A burst of interference on a shared machine spoils one window of
    runs, rarely three in a row."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoisyMeasurementWarning)
        results = [measure()]
        while results[-1].noisy and len(results) < tries:
            results.append(measure())
    best = min(results, key=lambda m: m.iqr_ratio)
    if best.noisy:
        warnings.warn(f"still noisy after {tries} tries (IQR/median {best.iqr_ratio:.0%}); the machine is busy",
                      NoisyMeasurementWarning, stacklevel=2)
    return best


@dataclass(frozen=True)
class Fingerprint:
    """What identifies a platform: backend, its settings, library versions, CPU, threads."""

    fields: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """A short stable hash of every field: the platform part of a lookup-table key."""
        text = json.dumps(dict(self.fields), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.fields.items()))

    def diff(self, other: Fingerprint) -> list[str]:
        keys = sorted(set(self.fields) | set(other.fields))
        return [f"{k}: {self.fields.get(k)!r} != {other.fields.get(k)!r}"
                for k in keys if self.fields.get(k) != other.fields.get(k)]


class Backend(ABC):
    """Measures a cost of running a network on one platform."""

    unit: str = "ms"

    @property
    @abstractmethod
    def fingerprint(self) -> Fingerprint:
        """Identifies the platform and settings; equal fingerprints mean comparable numbers."""

    @abstractmethod
    def measure(self, module: nn.Module, example_input: torch.Tensor) -> Measurement:
        """Measure the whole module on inputs shaped like `example_input`."""

    def runner(self, module: nn.Module, example_input: torch.Tensor) -> Callable[[], object] | None:
        """`module` prepared to run once per call (its session built, its input bound), for
        `measure_together`; None (the default) where this backend measures one model at a time."""
        return None

    @property
    def interleaves(self) -> bool:
        """Whether `measure_together` times its models call by call in turn (a `runner` exists)."""
        return type(self).runner is not Backend.runner

    def measure_together(self, items: Sequence[tuple[nn.Module, torch.Tensor]], seed: int = 0,
                         warm: bool = False) -> list[Measurement]:
        """Measure several modules side by side: call by call in turn where this backend has a
        `runner`, so that every figure is taken under the same load and the ratios between them
        hold even where the machine's speed moves; else one after another. `warm`: each visit
        calls a model once untimed before its timed call (`time_interleaved`)."""
        if not self.interleaves or len(items) < 2:
            return [self.measure(m, x) for m, x in items]
        runs = [self.runner(m, x) for m, x in items]
        settings = getattr(self, "settings", None) or MeasureSettings()
        return time_interleaved([r for r in runs if r is not None], settings, self.fingerprint.key,
                                f"{len(items)} models side by side", seed, warm)

    def close(self) -> None:  # noqa: B027 - an optional hook, a no-op by default
        """Release sessions, connections or threads (optional)."""


@runtime_checkable
class Estimator(Protocol):
    """Anything that puts a number on a network from its IR alone: a lookup table, an analytical
    energy or memory model. Constraints read resources through this one method."""

    unit: str

    @property
    def fingerprint(self) -> Fingerprint:
        """What the numbers depend on (platform, cost table): part of every cache key."""
        ...

    def estimate(self, network: Network) -> float:
        """The network's cost in `unit`, at its current widths."""
        ...


MEASURED_PASSES = 3
"""Windows over the networks a figure that checks a budget takes (each network's samples pooled
over them): a table's kept figures and a verification's side-by-side ones, so one burst of load
must not decide it."""


@runtime_checkable
class ModelAware(Protocol):
    """An estimator that needs the traced model itself, not only its networks: a lookup table
    prices opaque blocks with their modules. Binding a constraint hands it the model every run,
    so a warm table (calibrated in an earlier run) still has them."""

    def attach(self, traced: Traced) -> None:
        """Keep what estimates of `traced`'s networks need from the model (its opaque blocks)."""
        ...


@runtime_checkable
class MeasuringEstimator(Estimator, Protocol):
    """An estimator that can also measure whole networks end to end (a lookup table, on its
    backend), and corrects its estimates with those measurements: budgets resolve against the
    start's measurement, and every strategy's final network is checked by measurement."""

    measure_seconds: float
    """Wall time this estimator has spent measuring (the rest of a search is other work)."""

    def measure_module(self, module: nn.Module, example_input: torch.Tensor) -> Measurement:
        """One end-to-end measurement of `module`."""
        ...

    def measure_networks(self, traced: Traced, nets: Sequence[Network], passes: int = 2) -> list[Measurement]:
        """End-to-end measurements of `nets` materialized from `traced`, side by side, taken now."""
        ...

    def measured(self, traced: Traced, nets: Sequence[Network]) -> list[Measurement]:
        """End-to-end measurements of `nets`, each taken once and kept: the same figure every time."""
        ...

    def calibration(self, net: Network) -> Any:
        """The correction fitted for `net`'s structure, or None."""
        ...

    def calibrate(self, traced: Traced) -> Any:
        """Fit the correction for `traced`'s structure on whole-network measurements, and keep it."""
        ...

    def recalibrate(self, traced: Traced, nets: Sequence[Network],
                    figures: Sequence[float | None] | None = None) -> Any:
        """Add the measurements of `nets` (`figures` where given, measured at the level the
        table keeps the full network) to the correction of their structure, and keep it."""
        ...

    def pin(self, net: Network, points: Sequence[Sequence[float]]) -> None:
        """Use the calibration of `points` for `net`'s structure in this process (a resumed run's own)."""
        ...


def time_interleaved(runs: Sequence[Callable[[], object]], settings: MeasureSettings, fingerprint: str = "",
                     what: str = "measurement", seed: int = 0, warm: bool = False) -> list[Measurement]:
    """Milliseconds per call of each of `runs`, timed in cycles that call every one of them
    once, each cycle in a new order (so that no run always follows the same neighbour).

    Each run gets the protocol of `settings` as if timed alone: at least `runs` cycles, and
    cycles until each has had `min_seconds` of its own on average; at most `max_runs` cycles.

    `warm`: each visit calls its run once untimed first, so that it is timed from its own
    caches, not its predecessor's: the lookup table times units so, since a small unit timed
    after a large one runs from cold caches and its figure would follow its window's company.
    Whole networks are timed cold, as they run in use (docs/decisions.md).
    """
    for run in runs:
        for _ in range(settings.warmup):
            run()
    samples: list[list[float]] = [[] for _ in runs]
    order = list(range(len(runs)))
    rng = random.Random(seed)
    wanted = settings.min_seconds * len(runs)
    cycles, start = 0, time.perf_counter()
    while cycles < settings.max_runs and (cycles < settings.runs or time.perf_counter() - start < wanted):
        rng.shuffle(order)
        for i in order:
            if warm:
                runs[i]()
            t0 = time.perf_counter_ns()
            runs[i]()
            samples[i].append((time.perf_counter_ns() - t0) / 1e6)
        cycles += 1
    return [summarize(s, "ms", fingerprint, what) for s in samples]
