"""Resource constraints: budgets, estimators and reduction schedules (Eq. 1 and Eq. 2)."""

from netopt.constraints.amount import Amount, parse_amount
from netopt.constraints.base import Bound, Constraint, ReductionSchedule
from netopt.constraints.resources import (
    EnergyConstraint,
    LatencyConstraint,
    MACs,
    MACsConstraint,
    MemoryConstraint,
    Params,
    ParamsConstraint,
)

__all__ = [
    "Amount",
    "Bound",
    "Constraint",
    "EnergyConstraint",
    "LatencyConstraint",
    "MACs",
    "MACsConstraint",
    "MemoryConstraint",
    "Params",
    "ParamsConstraint",
    "ReductionSchedule",
    "parse_amount",
]
