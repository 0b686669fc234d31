"""`Problem`, `Strategy`, and what a strategy returns: candidates, a family, a history."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import StrictInt, ValidationError, field_validator

from netopt.constraints import Bound, Constraint
from netopt.errors import ConfigError, InfeasibleError
from netopt.frozen import Frozen
from netopt.ir import Network
from netopt.measure.base import setting_error
from netopt.objectives.base import Objective

if TYPE_CHECKING:
    from torch import nn

    from netopt.bridge import Traced

__all__ = ["Problem", "Strategy", "StrategySettings", "Candidate", "Proposal", "Result", "Landing", "LANDED", "LANDING",
           "smallest", "check_feasible", "non_negative", "changed", "validated"]


@dataclass(frozen=True)
class Problem:
    """Maximize the objective subject to every constraint (Eq. 1), starting from `traced`.

    >>> import torch, netopt
    >>> from netopt.zoo import MobileNetV1
    >>> traced = netopt.trace(MobileNetV1(0.25, 32, num_classes=10).eval(), torch.randn(1, 3, 32, 32))
    >>> def fine_tune(model, steps, seed, phase): pass  # your training loop
    >>> def score(model): return 0.5  # your holdout metric
    >>> problem = netopt.Problem(traced, [netopt.MACsConstraint("50%")], netopt.FunctionObjective(fine_tune, score))
    >>> [b.resource for b in problem.bind()]
    ['macs']
    """

    traced: Traced
    constraints: Sequence[Constraint]
    objective: Objective

    def __post_init__(self) -> None:
        """The objective's data must fit the traced network: refused here, not in the first proposal."""
        if not isinstance(self.objective, Objective):
            return  # a stand-in (testing.problems.ParamsKept) that has no data
        try:
            data = tuple(self.objective.example_input().shape[1:])
        except NotImplementedError:
            return  # an objective without an example input: nothing to compare
        model = tuple(self.traced.example_shape[1:])
        if data != model:
            raise ConfigError(f"the objective's data are shaped {data} but the model was traced on {model}; trace it "
                              "on an input like the data (e.g. netopt.trace(model, data.train_x[:1]))")

    def bind(self) -> list[Bound]:
        return [c.bind(self.traced.network, self.traced) for c in self.constraints]


@dataclass(frozen=True)
class Proposal:
    """One proposal of one iteration: which group, what widths, what it costs, how it scored."""

    iteration: int
    group: str
    widths: dict[str, int]
    resources: dict[str, float]
    score: float | None  # None: refused by the estimators, never trained
    steps: int
    chosen: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "group": self.group, "widths": self.widths,
                "resources": self.resources, "score": self.score, "steps": self.steps, "chosen": self.chosen}


@dataclass
class Candidate:
    """A network on the way: its IR (in the original network's terms), weights, and figures."""

    iteration: int
    network: Network
    module: nn.Module
    accuracy: float
    resources: dict[str, float]
    measured: dict[str, float] = field(default_factory=dict)
    test_accuracy: float | None = None


LANDED = 0.9
"""A final network has landed on a budget checked by measurement when it measures at least this
share of it (and at most all of it): `netopt.strategies.landing`."""
LANDING = "landing:"
"""How a landing's proposal names its groups in the run's history ("landing:g3+g5")."""


@dataclass(frozen=True)
class Landing:
    """Where the final network stands against each budget checked by measurement: its measured
    share of the budget (`shares`); where that is below LANDED, the share the smallest step up
    measures (`above`: over 1, so no network between meets the budget); and whether the landing
    ran (`on`: False where `land=False`).

    >>> Landing({"latency": 0.84}, {"latency": 1.03}).describe()
    'landed: latency at 84% of its budget (the smallest step up measures 103%)'
    """

    shares: dict[str, float]
    above: dict[str, float] = field(default_factory=dict)
    on: bool = True

    @property
    def short(self) -> dict[str, float]:
        """The budgets the final measures below LANDED of."""
        return {r: s for r, s in self.shares.items() if s < LANDED}

    def describe(self) -> str:
        """One line for a report: each budget's share, and why a short one is short."""
        def one(r: str, s: float) -> str:
            why = f" (the smallest step up measures {self.above[r]:.0%})" if r in self.above else ""
            return f"{r} at {s:.0%} of its budget{why}"
        return f"{'landed' if self.on else 'not landed (land=False)'}: " + ", ".join(
            one(r, s) for r, s in self.shares.items())

    def to_dict(self) -> dict[str, Any]:
        return {"shares": self.shares, "above": self.above, "on": self.on}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Landing:
        return cls(dict(doc["shares"]), dict(doc.get("above", {})), bool(doc.get("on", True)))


@dataclass
class Result:
    """The final network, the family (one per iteration: the frontier) and every proposal."""

    final: Candidate
    family: list[Candidate]
    history: list[Proposal]
    training_steps: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    strategy: str = ""
    start: Network | None = None  # the network the search started from
    budgets: dict[str, float] = field(default_factory=dict)
    """Each constraint's budget, in its unit."""
    basis: dict[str, str] = field(default_factory=dict)
    """Each budget's basis: "measured" (a relative budget resolved against the start's end-to-end
    measurement, and the final network checked end to end) or "estimated" (the estimator alone)."""
    starts: dict[str, float] = field(default_factory=dict)
    """Each relative measured budget's start, measured end to end when it was bound. The final's
    measured figure is this times its ratio to the start measured side by side, in one minute."""
    landing: Landing | None = None
    """An iterative strategy's: where the final stands against each budget checked by measurement."""

    @property
    def over_budget(self) -> dict[str, float]:
        """Estimate / budget of the final network for every budget it exceeds: empty unless a soft
        reward (MnasNet's) let it go over a target."""
        return {r: self.final.resources[r] / b for r, b in self.budgets.items()
                if r in self.final.resources and self.final.resources[r] > b}

    @property
    def framework_share(self) -> float:
        """Share of wall time outside training, evaluation and measurement (netopt's own work)."""
        total = self.timings.get("total", 0.0)
        return self.timings.get("framework", 0.0) / total if total else 0.0


class StrategySettings(Frozen):
    """A strategy's settings: frozen, keyword-only, unknown names refused; the one source of its
    defaults. `config()` (what a run directory records and a resume checks) is derived from
    them, less the `RUNTIME` ones, which change how a run is carried out but not its result."""

    RUNTIME: ClassVar[frozenset[str]] = frozenset()
    TRAINING: ClassVar[frozenset[str]] = frozenset({"short_term_steps", "long_term_steps"})
    """The `[training]` steps of a config file this strategy takes."""

    short_term_steps: StrictInt = 60
    """Fine-tuning steps of each proposal (NetAdapt's short-term fine-tuning)."""
    long_term_steps: StrictInt = 300
    """Fine-tuning steps of the final network."""
    seed: StrictInt = 0

    @field_validator("short_term_steps", "long_term_steps")
    @classmethod
    def _steps(cls, value: int, info: Any) -> int:
        return non_negative(info.field_name, value, "training steps")


def non_negative(name: str, value: int, meaning: str) -> int:
    """A setting that must be an integer >= 0 (`meaning` says what it counts)."""
    if value < 0:
        raise ValueError(f"{name}={value!r} must be an integer >= 0 ({meaning})")
    return value


def validated(kind: type[StrategySettings], values: Mapping[str, Any], strategy: str) -> Any:
    """`kind(**values)`, or one ConfigError line that names the strategy, the setting and the rule."""
    try:
        return kind(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        if err["type"] == "value_error":  # our own rules say value, rule and fix themselves
            raise ConfigError(f"{strategy}: {err['ctx']['error']!s}") from None
        raise setting_error(exc, kind, strategy) from None


class Strategy(ABC):
    """Turns a Problem into a Result. The contract (checked for every strategy by
    `netopt.testing.contract`): the result meets every constraint by its estimator (one checked
    by measurement: as measured, which an iterative strategy's landing goes by), or
    InfeasibleError is raised; it uses at most `training_budget(problem)` training steps; the
    same seed gives the same result; every proposal is in the result's history.

    Its settings are a `StrategySettings` model (`Strategy.Settings`), validated at construction and
    readable as attributes (`strategy.seed`); `config()` is derived from them."""

    name: ClassVar[str] = "Strategy"
    Settings: ClassVar[type[StrategySettings]] = StrategySettings
    settings: StrategySettings

    def __init__(self, **settings: Any) -> None:
        self.settings = validated(type(self).Settings, settings, self.name)

    def _executor(self, executor: Any) -> Any:
        """`executor` if it is a concurrent.futures.Executor (or None; a Dask Client becomes a
        `netopt.cluster.DaskExecutor`), else one ConfigError line."""
        if executor is not None and type(executor).__module__.startswith("distributed"):
            from netopt.cluster import as_executor

            executor = as_executor(executor)
        if executor is not None and not isinstance(executor, Executor):
            raise ConfigError(f"{self.name}: executor={executor!r} is not a concurrent.futures.Executor; pass e.g. "
                              "ProcessPoolExecutor(4), a dask.distributed Client, or None to evaluate in this process")
        return executor

    def __getattr__(self, name: str) -> Any:
        settings = self.__dict__.get("settings")
        if settings is not None and name in type(settings).model_fields:
            return getattr(settings, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @abstractmethod
    def run(self, problem: Problem, run_dir: str | Path | None = None, resume: bool = False) -> Result:
        """Search; with `run_dir` everything is saved as it happens, and `resume=True` continues
        a stopped run there."""

    def config(self) -> dict[str, Any]:
        """The settings that decide the result (recorded in a run directory, checked on resume)."""
        return {"strategy": self.name, **self.settings.model_dump(mode="json", exclude=set(self.settings.RUNTIME))}

    @abstractmethod
    def training_budget(self, problem: Problem) -> int:
        """The most training steps a run on `problem` may use (search and long-term together)."""


def changed(block: str, widths: dict[str, int], current: Network) -> dict[str, int]:
    """The widths a proposal for `block` ("g" or "g1+g2") sets in `current` (the network of the
    iteration's start, re-traced): its own groups' only, less those already at their minimum
    there (they cannot shrink, so they are not groups of `current` at all)."""
    prunable = current.widths
    return {g: widths[g] for g in block.split("+") if g in prunable}


def smallest(network: Network, bypass: bool = False) -> Network:
    """Every prunable group at its minimum width: the cheapest network the IR allows (with
    `bypass`, every residual branch removed)."""
    return network.with_widths({g.id: g.valid_widths(bypass)[0] for g in network.groups})


def check_feasible(bounds: Sequence[Bound], network: Network, bypass: bool = False,
                   traced: Traced | None = None) -> None:
    """Fail early when even the smallest network breaks a budget, saying what is achievable; a
    budget checked by measurement (with `traced`), by the smallest network's measurement."""
    floor = smallest(network, bypass)
    for bound in bounds:
        if traced is not None and bound.basis == "measured":
            table = bound.constraint.estimator
            least = table.measured(traced, [floor])[0].median  # type: ignore[attr-defined]
            if least > bound.budget:
                start = "" if bound.measured_start is None else (
                    f" ({least / bound.measured_start:.0%} of the start's measured {bound.measured_start:.4g} "
                    f"{bound.unit})")
                raise InfeasibleError(
                    f"{bound.resource} budget {bound.budget:.4g} {bound.unit} cannot be met: the smallest network the "
                    f"channel groups allow measures {least:.4g} {bound.unit} end to end{start}; relax the budget to at "
                    "least that")
            continue
        least = bound.estimate(floor)
        if least > bound.budget:
            raise InfeasibleError(
                f"{bound.resource} budget {bound.budget:.4g} {bound.unit} cannot be met: the smallest network "
                f"the channel groups allow is estimated at {least:.4g} {bound.unit} "
                f"({least / bound.initial:.0%} of the start); relax the budget to at least that"
            )
