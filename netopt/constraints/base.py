"""`Constraint`: a resource, its budget, its estimator and its own reduction schedule.

A constraint is data. `bind(start)` fixes its relative amounts against the starting network
and returns a `Bound` constraint with absolute numbers, which every strategy reads alike:
`violation(net) <= 0` means the network is within budget.
"""

from __future__ import annotations

import math
from abc import ABC
from dataclasses import dataclass
from typing import ClassVar

from netopt.constraints.amount import Amount, check_unit, parse_amount
from netopt.errors import ConfigError
from netopt.ir import Network
from netopt.measure.base import Estimator

__all__ = ["Constraint", "ReductionSchedule", "Bound"]


@dataclass(frozen=True, init=False)
class ReductionSchedule:
    """dR_i = initial * decay**i (paper: 0.5 ms for the small MobileNetV1, decay 0.96)."""

    initial: Amount
    decay: float

    def __init__(self, initial: float | str | Amount = "2%", decay: float = 0.96) -> None:
        amount = parse_amount(initial, None, "schedule initial reduction")
        if amount.relative and amount.value >= 1:
            raise ConfigError(f"schedule initial reduction {initial!r} would cut the whole starting cost (or more) in "
                              "one iteration; give a share below 100%, e.g. '4%'")
        object.__setattr__(self, "initial", amount)
        if not (isinstance(decay, int | float) and math.isfinite(decay) and 0 < decay <= 1):
            raise ConfigError(f"schedule decay {decay!r} must be in (0, 1]; the paper uses 0.96")
        object.__setattr__(self, "decay", float(decay))

    def reduction(self, iteration: int, start: float) -> float:
        """dR for `iteration` (0-based), in absolute units given the starting resource."""
        return self.initial.resolve(start) * self.decay**iteration


class Constraint(ABC):
    """Keep `resource` of the network within `budget`, as estimated by `estimator`.

    Abstract: a subclass names its resource (`resource = "latency"`) and may fix its estimator;
    see LatencyConstraint, EnergyConstraint, MemoryConstraint, MACsConstraint, ParamsConstraint.
    """

    resource: ClassVar[str]

    def __init__(self, budget: float | str | Amount, estimator: Estimator,
                 schedule: ReductionSchedule | None = None) -> None:
        if not isinstance(getattr(self, "resource", None), str):
            raise ConfigError(f"{type(self).__name__} is abstract: subclass Constraint with a `resource` name, "
                            "e.g. class SRAMConstraint(Constraint): resource = 'sram'")
        if not isinstance(estimator, Estimator):
            raise ConfigError(
                f"{type(self).__name__}: estimator {estimator!r} has no estimate(network); pass a "
                "LookupTable, EnergyModel, MemoryModel or another netopt.measure.Estimator"
            )
        self.estimator = estimator
        self.unit = estimator.unit
        self.budget = parse_amount(budget, self.unit, f"{self.resource} budget")
        if self.budget.relative and self.budget.value > 1:
            raise ConfigError(f"{self.resource} budget {budget!r} is above the starting network's cost, so it is met "
                              "before anything is adapted; give a share of at most 100%, e.g. \"50%\"")
        self.schedule = schedule or ReductionSchedule()
        check_unit(self.schedule.initial, self.unit, f"{self.resource} schedule initial reduction")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(budget={self.budget}, unit={self.unit!r}, schedule={self.schedule})"

    def estimate(self, network: Network) -> float:
        value = float(self.estimator.estimate(network))
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{self.resource} estimator returned {value!r}; it must be a finite number >= 0")
        return value

    def bind(self, start: Network) -> Bound:
        """Absolute budget and schedule against the starting network."""
        initial = self.estimate(start)
        return Bound(self, initial, self.budget.resolve(initial))


@dataclass(frozen=True)
class Bound:
    """A constraint with absolute numbers: what strategies read."""

    constraint: Constraint
    initial: float
    budget: float

    @property
    def resource(self) -> str:
        return self.constraint.resource

    @property
    def unit(self) -> str:
        return self.constraint.unit

    def estimate(self, network: Network) -> float:
        return self.constraint.estimate(network)

    def violation(self, network: Network) -> float:
        """estimate / budget - 1: <= 0 within budget; comparable across resources."""
        return self.estimate(network) / self.budget - 1.0

    def met(self, value: float) -> bool:
        return value <= self.budget

    def target(self, iteration: int, previous: float) -> float:
        """Tightened bound for iteration i (Eq. 2: Res(Net_{i-1}) - dR_i), never below budget."""
        return max(previous - self.constraint.schedule.reduction(iteration, self.initial), self.budget)
