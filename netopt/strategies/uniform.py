"""`UniformWidth`: the paper's width multiplier, one fraction for every group, found by bisection."""

from __future__ import annotations

from typing import Any

from netopt.errors import ConfigError
from netopt.strategies.base import Result
from netopt.strategies.search import Trials, WidthSearch

__all__ = ["UniformWidth"]


class UniformWidth(WidthSearch):
    """The paper's width multiplier: one fraction for every group, the largest meeting every
    budget, found by bisection on the estimators; then that network is fine-tuned."""

    name = "UniformWidth"

    def __init__(self, *, short_term_steps: int = 100, long_term_steps: int = 1000, seed: int = 0,
                 tolerance: float = 1e-3, progress: bool | None = None) -> None:
        super().__init__(trials=1, short_term_steps=short_term_steps, long_term_steps=long_term_steps, seed=seed,
                         progress=progress)
        if not 0 < tolerance < 1:
            raise ConfigError(f"{self.name}: tolerance={tolerance!r} must lie in (0, 1): the bisection stops when the "
                              "multiplier is known to within it (default 1e-3)")
        self.tolerance = tolerance

    def config(self) -> dict[str, Any]:
        return {**super().config(), "tolerance": self.tolerance}

    def search(self, trials: Trials) -> Result:
        net = trials.network
        fraction = self.multiplier(trials)
        widths = net.scaled(fraction).widths
        trials.score([widths])
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
