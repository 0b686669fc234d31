"""Every resource netopt constrains, registered once: its constraint class and estimator factory.

An estimator factory takes `EstimatorSources`, the plain values an application has (the
lookup table's file, backend name, threads, calibration size) and returns the estimator the
constraint is priced by; the library never imports the application to read them. Adding a
resource is its constraint class plus one `ConstraintEntry` here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from netopt.constraints.base import Constraint, ReductionSchedule
from netopt.constraints.resources import (
    EnergyConstraint,
    LatencyConstraint,
    MACs,
    MACsConstraint,
    MemoryConstraint,
    Params,
    ParamsConstraint,
)
from netopt.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

    from netopt.constraints.amount import Amount
    from netopt.constraints.base import Basis
    from netopt.measure.base import Estimator

__all__ = ["CONSTRAINTS", "ConstraintEntry", "EstimatorSources"]


@dataclass(frozen=True)
class EstimatorSources:
    """What an estimator may be built from: where the latency lookup table lives, the registered
    backend that measures it (`netopt.measure.registry`), its threads, precision and calibration
    size, for int8 where the representative inputs come from (the objective's training
    inputs, asked for only when the backend quantizes), the traced model's opaque blocks
    (`Traced.opaque`), which a lookup table measures as units of their own, and whether the
    table is `frozen` (read, never written: `LookupTable.open(frozen=True)`)."""

    lut_path: str = "runs/lut-ort-cpu1.sqlite"
    backend: str = "onnxruntime"
    threads: int = 1
    calibration: int = 16
    precision: str = "fp32"
    representative: Callable[[], Sequence[torch.Tensor] | None] | None = None
    opaque: Mapping[str, nn.Module] | None = None
    frozen: bool = False


EstimatorFactory = Callable[[EstimatorSources], "Estimator"]


@dataclass(frozen=True)
class ConstraintEntry:
    """One resource: `name` (`resource` in a config file), its constraint class, the factory of
    its estimator, and whether its budget may resolve against a whole-network measurement.

    >>> from netopt.constraints.registry import CONSTRAINTS, EstimatorSources
    >>> CONSTRAINTS["macs"].make("50%", ReductionSchedule("2%"), EstimatorSources()).resource
    'macs'
    """

    name: str
    constraint: type[Constraint]
    estimator: EstimatorFactory
    measured: bool = False

    def make(self, budget: float | str | Amount, schedule: ReductionSchedule, sources: EstimatorSources,
             basis: Basis = "auto") -> Constraint:
        """The constraint at `budget`, its estimator built from `sources` (`basis` only where measured)."""
        extra = {"basis": basis} if self.measured else {}
        return self.constraint(budget, self.estimator(sources), schedule, **extra)  # type: ignore[call-arg]


def _lookup_table(sources: EstimatorSources) -> Estimator:
    """A lookup table at `lut_path` on the named backend (binding a constraint calibrates it)."""
    from netopt.lut import LookupTable
    from netopt.measure.registry import BACKENDS

    Path(sources.lut_path).parent.mkdir(parents=True, exist_ok=True)
    quantized = {} if sources.precision == "fp32" else {
        "precision": sources.precision, "representative": sources.representative() if sources.representative else None}
    backend = BACKENDS[sources.backend].make(threads=sources.threads, **quantized)
    return LookupTable.open(sources.lut_path, backend, calibration_networks=sources.calibration, opaque=sources.opaque,
                            frozen=sources.frozen)


def _registered(name: str) -> EstimatorFactory:
    """The registered measurement backend `name` with its default settings."""
    def make(_: EstimatorSources) -> Estimator:
        from netopt.measure.registry import BACKENDS

        return BACKENDS[name].make()  # type: ignore[no-any-return]
    return make


CONSTRAINTS: Registry[ConstraintEntry] = Registry("resource", [
    ConstraintEntry("latency", LatencyConstraint, _lookup_table, measured=True),
    ConstraintEntry("energy", EnergyConstraint, _registered("energy-model")),
    ConstraintEntry("memory", MemoryConstraint, _registered("memory")),
    ConstraintEntry("macs", MACsConstraint, lambda _: MACs()),
    ConstraintEntry("params", ParamsConstraint, lambda _: Params()),
], "register it in netopt/constraints/registry.py")
"""The resources a config file may constrain."""
