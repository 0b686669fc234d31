"""`UniformWidth`: the paper's width multiplier, one fraction for every group, found by bisection."""

from __future__ import annotations

from netopt.strategies.base import Result
from netopt.strategies.search import Trials, WidthSearch
from netopt.strategies.settings import UniformWidthSettings

__all__ = ["UniformWidth"]


class UniformWidth(WidthSearch):
    """The paper's width multiplier: one fraction for every group, the largest meeting every
    budget, found by bisection on the estimators; then that network is fine-tuned.

    >>> import netopt
    >>> from netopt.testing.contract import small_network
    >>> from netopt.testing.problems import joint_problem
    >>> problem = joint_problem(small_network(), macs="60%", memory="90%")
    >>> result = netopt.UniformWidth(short_term_steps=1, long_term_steps=1, progress=False).run(problem)
    >>> result.over_budget
    {}
    """

    name = "UniformWidth"
    Settings = UniformWidthSettings
    settings: UniformWidthSettings

    repairs = 3

    def search(self, trials: Trials) -> Result:
        """The multiplier's network; where it misses a budget as measured, the multiplier again on
        the recalibrated estimates (at most `repairs` times)."""
        net = trials.network
        for _ in range(1 + self.repairs):
            widths = net.scaled(self.multiplier(trials)).widths
            if any(c.network.widths == net.with_widths(widths).widths for c in trials.scored):
                break  # nothing new to try: the result says which budget is missed
            (candidate,) = trials.score([widths])
            if trials.verify(candidate):
                break
        return trials.result(self.name, self.long_term_steps)

    def multiplier(self, trials: Trials) -> float:
        """The largest fraction (to `tolerance`) whose scaled network meets every budget."""
        net = trials.network
        if trials.feasible(trials.resources(net.widths)):
            return 1.0
        lo, hi = 0.0, 1.0  # scaled(0) is the smallest network, feasible by check_feasible
        while hi - lo > self.tolerance:
            mid = (lo + hi) / 2
            widths = net.scaled(mid).widths
            resources = trials.resources(widths)
            trials.note(widths, resources)
            lo, hi = (mid, hi) if trials.feasible(resources) else (lo, mid)
        return lo
