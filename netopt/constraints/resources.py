"""The concrete constraints: direct metrics (latency, energy, memory) and the indirect ones
the paper compares against (MACs, parameters)."""

from __future__ import annotations

from netopt.constraints.amount import Amount
from netopt.constraints.base import Constraint, ReductionSchedule
from netopt.ir import Network, macs, params
from netopt.measure.base import Estimator, Fingerprint

__all__ = ["LatencyConstraint", "EnergyConstraint", "MemoryConstraint", "MACsConstraint", "ParamsConstraint",
           "MACs", "Params"]


class LatencyConstraint(Constraint):
    resource = "latency"


class EnergyConstraint(Constraint):
    resource = "energy"


class MemoryConstraint(Constraint):
    resource = "memory"


class MACs:
    """Multiply-accumulates from the IR (CONV and FC layers), as an Estimator."""

    unit = "MACs"
    fingerprint = Fingerprint({"estimator": "macs"})

    def estimate(self, network: Network) -> float:
        return float(macs(network))


class Params:
    """Trainable parameters from the IR, as an Estimator."""

    unit = "params"
    fingerprint = Fingerprint({"estimator": "params"})

    def estimate(self, network: Network) -> float:
        return float(params(network))


class MACsConstraint(Constraint):
    resource = "macs"

    def __init__(self, budget: float | str | Amount, estimator: Estimator | None = None,
                 schedule: ReductionSchedule | None = None) -> None:
        super().__init__(budget, estimator or MACs(), schedule)


class ParamsConstraint(Constraint):
    resource = "params"

    def __init__(self, budget: float | str | Amount, estimator: Estimator | None = None,
                 schedule: ReductionSchedule | None = None) -> None:
        super().__init__(budget, estimator or Params(), schedule)
