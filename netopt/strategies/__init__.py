"""Search strategies on the IR and budgets: NetAdapt's ProgressiveBarrier first."""

from netopt.strategies.base import Candidate, Problem, Proposal, Result, Strategy, check_feasible, smallest
from netopt.strategies.progressive import ProgressiveBarrier, SelectionRule

__all__ = [
    "Candidate",
    "Problem",
    "ProgressiveBarrier",
    "Proposal",
    "Result",
    "SelectionRule",
    "Strategy",
    "check_feasible",
    "smallest",
]
