"""Search strategies on the IR and budgets: NetAdapt's ProgressiveBarrier first."""

from typing import TYPE_CHECKING, Any

from netopt.strategies._engine import Ask, Engine, Told
from netopt.strategies.base import (
    Candidate,
    Problem,
    Proposal,
    Result,
    Strategy,
    StrategySettings,
    check_feasible,
    smallest,
)
from netopt.strategies.netadaptv2 import NetAdaptV2
from netopt.strategies.progressive import ProgressiveBarrier
from netopt.strategies.random_search import RandomSearch
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

_LAZY = {"OptunaSearch": "netopt.strategies.optuna_search", "GeometricProgram": "netopt.strategies.geometric"}


def __getattr__(name: str) -> Any:
    """OptunaSearch and GeometricProgram import optuna and cvxpy: only when asked for."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
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
    "SelectionRule",
    "Strategy",
    "check_feasible",
    "smallest",
]
