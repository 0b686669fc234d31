"""Search strategies on the IR and budgets: NetAdapt's ProgressiveBarrier first."""

from netopt.strategies.base import Candidate, Problem, Proposal, Result, Strategy, check_feasible, smallest
from netopt.strategies.progressive import ProgressiveBarrier, SelectionRule
from netopt.strategies.search import RandomSearch, Trials, UniformWidth, WidthSearch, pareto_front

__all__ = [
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
