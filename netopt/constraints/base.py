"""`Constraint`: a resource, its budget, its estimator and its own reduction schedule.

A constraint is data. `bind(start)` fixes its relative amounts against the starting network
and returns a `Bound` constraint with absolute numbers, which every strategy reads alike:
`violation(net) <= 0` means the network is within budget.

Where the estimator can measure whole networks (a lookup table on its backend: a
`MeasuringEstimator`), `bind(start, traced)` calibrates it for the network once, and a
relative budget ("50%") resolves against the start's end-to-end measurement, not its
estimate: a 50% latency budget then means half the time the start takes on the device. The
bound says which (`basis`).
"""

from __future__ import annotations

import math
from abc import ABC
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from netopt.constraints.amount import Amount, check_unit, parse_amount
from netopt.errors import ConfigError
from netopt.ir import Network
from netopt.measure.base import Estimator, MeasuringEstimator, ModelAware

if TYPE_CHECKING:
    from netopt.bridge import Traced

__all__ = ["Constraint", "ReductionSchedule", "Bound", "Basis"]

Basis = Literal["auto", "measured", "estimated"]
"""What a relative budget resolves against: the start's end-to-end measurement ("measured",
which needs a MeasuringEstimator), its estimate ("estimated"), or the first where the
estimator can measure and the second elsewhere ("auto")."""


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
                 schedule: ReductionSchedule | None = None, basis: Basis = "auto") -> None:
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
        if basis not in ("auto", "measured", "estimated"):
            raise ConfigError(f"{self.resource} budget basis {basis!r} is not one of 'auto', 'measured', 'estimated'")
        if basis == "measured" and not isinstance(estimator, MeasuringEstimator):
            raise ConfigError(
                f"{self.resource} budget basis 'measured' needs an estimator that measures whole networks end to end "
                f"(a LookupTable on a backend), but {type(estimator).__name__} only estimates; use basis 'auto' or "
                "'estimated', or a LookupTable")
        self.basis: Basis = basis

    @property
    def measuring(self) -> bool:
        """Budgets and final networks are checked by end-to-end measurement."""
        return self.basis != "estimated" and isinstance(self.estimator, MeasuringEstimator)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(budget={self.budget}, unit={self.unit!r}, schedule={self.schedule})"

    def estimate(self, network: Network) -> float:
        value = float(self.estimator.estimate(network))
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{self.resource} estimator returned {value!r}; it must be a finite number >= 0")
        return value

    def bind(self, start: Network, traced: Traced | None = None) -> Bound:
        """Absolute budget and schedule against the starting network. With `traced` (the start's
        model) and a measuring estimator, the estimator is calibrated for the network first if
        it is not yet, and a relative budget resolves against the start's measured cost."""
        if traced is not None and isinstance(self.estimator, ModelAware):
            self.estimator.attach(traced)
        if traced is None or not self.measuring:
            initial = self.estimate(start)
            return Bound(self, initial, self.budget.resolve(initial))
        estimator: MeasuringEstimator = self.estimator  # type: ignore[assignment]
        if estimator.calibration(start) is None:
            estimator.calibrate(traced)
        initial = self.estimate(start)
        if not self.budget.relative:
            return Bound(self, initial, self.budget.value, "measured")
        measured = estimator.measured(traced, [start])[0].median
        return Bound(self, initial, self.budget.resolve(measured), "measured", measured)


@dataclass(frozen=True)
class Bound:
    """A constraint with absolute numbers: what strategies read."""

    constraint: Constraint
    initial: float
    """The start's estimate (what the schedule's relative reductions resolve against)."""
    budget: float
    basis: str = "estimated"
    """"measured": final networks are checked end to end against `budget` (which a relative
    amount resolved against `measured_start`); "estimated": by the estimator alone."""
    measured_start: float | None = None
    """The start's end-to-end measurement, where the budget resolved against it."""

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

    def target(self, iteration: int, previous: float, floor: float | None = None) -> float:
        """Tightened bound for iteration i (Eq. 2: Res(Net_{i-1}) - dR_i), never below `floor`
        (the budget, unless a strategy aims lower)."""
        return max(previous - self.constraint.schedule.reduction(iteration, self.initial),
                   self.budget if floor is None else floor)
