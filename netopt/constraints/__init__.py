"""Resource constraints: budgets, estimators and reduction schedules (Eq. 1 and Eq. 2).

Every resource is registered once, with its estimator factory, in `netopt.constraints.registry`.
"""

from netopt.constraints.amount import Amount, parse_amount
from netopt.constraints.base import Bound, Constraint, ReductionSchedule
from netopt.constraints.registry import CONSTRAINTS, ConstraintEntry, EstimatorSources
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
    "CONSTRAINTS",
    "ConstraintEntry",
    "EstimatorSources",
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
