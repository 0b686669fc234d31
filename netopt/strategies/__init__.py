"""Search strategies on the IR and budgets: NetAdapt's ProgressiveBarrier first.

Every strategy is registered once, in `netopt.strategies.registry`; a registered one not
imported here loads on first use.
"""

from typing import TYPE_CHECKING, Any

from netopt.strategies.base import (
    Candidate,
    Landing,
    Problem,
    Proposal,
    Result,
    Strategy,
    StrategySettings,
    check_feasible,
    smallest,
)
from netopt.strategies.engine import Ask, Engine, Told
from netopt.strategies.netadaptv2 import NetAdaptV2
from netopt.strategies.progressive import ProgressiveBarrier
from netopt.strategies.random_search import RandomSearch
from netopt.strategies.registry import STRATEGIES, StrategyEntry
from netopt.strategies.reward import MnasNetReward
from netopt.strategies.search import Trials, WidthSearch, pareto_front
from netopt.strategies.settings import (
    GeometricSettings,
    NetAdaptV2Settings,
    OptunaSettings,
    ProgressiveBarrierSettings,
    RandomSearchSettings,
    SelectionRule,
    UniformWidthSettings,
    WidthSearchSettings,
)
from netopt.strategies.uniform import UniformWidth

if TYPE_CHECKING:
    from netopt.strategies.geometric import GeometricProgram
    from netopt.strategies.optuna_search import OptunaSearch


def __getattr__(name: str) -> Any:
    """A registered strategy not imported above (OptunaSearch and GeometricProgram import optuna
    and cvxpy), from the registry: only when asked for."""
    if name in STRATEGIES:
        return STRATEGIES[name].load()
    raise AttributeError(f"module 'netopt.strategies' has no attribute {name!r}")


__all__ = [
    "StrategySettings",
    "ProgressiveBarrierSettings",
    "WidthSearchSettings",
    "UniformWidthSettings",
    "RandomSearchSettings",
    "OptunaSettings",
    "GeometricSettings",
    "NetAdaptV2Settings",
    "NetAdaptV2",
    "MnasNetReward",
    "Ask",
    "Engine",
    "Told",
    "GeometricProgram",
    "OptunaSearch",
    "Candidate",
    "Problem",
    "ProgressiveBarrier",
    "Proposal",
    "RandomSearch",
    "Trials",
    "UniformWidth",
    "WidthSearch",
    "pareto_front",
    "Result",
    "Landing",
    "SelectionRule",
    "Strategy",
    "check_feasible",
    "smallest",
    "STRATEGIES",
    "StrategyEntry",
]
__all__ += [name for name in STRATEGIES.names if name not in __all__]  # a new registration is exported
