"""`RandomSearch`: random widths on each group's grid; what a budget refuses costs no training."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Executor
from typing import Any

import numpy as np

from netopt.errors import ConfigError
from netopt.ir import Network
from netopt.strategies.base import Result
from netopt.strategies.search import Trials, WidthSearch

__all__ = ["RandomSearch"]


class RandomSearch(WidthSearch):
    """Random per-group widths on each group's step grid; assignments the estimators reject
    cost no training. Scores `trials` feasible networks and keeps the best."""

    name = "RandomSearch"

    def __init__(self, *, trials: int = 20, short_term_steps: int = 100, long_term_steps: int = 1000, seed: int = 0,
                 executor: Executor | None = None, progress: bool | None = None,
                 max_rejections: int = 1000, batch_size: int = 1) -> None:
        super().__init__(trials=trials, short_term_steps=short_term_steps, long_term_steps=long_term_steps,
                         seed=seed, executor=executor, progress=progress)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"{self.name}: batch_size={batch_size!r} must be an integer >= 1 (feasible assignments "
                              "handed to the executor at once: its worker count, to use them all)")
        self.max_rejections = max_rejections
        self.batch_size = batch_size  # does not change the result: samples do not depend on scores

    def config(self) -> dict[str, Any]:
        return {**super().config(), "max_rejections": self.max_rejections}

    def search(self, trials: Trials) -> Result:
        rejected, batch, feasible = 0, [], 0
        for widths in self.samples(trials.network):
            if trials.feasible(trials.resources(widths)):
                feasible += 1
            else:
                rejected += 1
            batch.append(widths)
            full = feasible == self.batch_size or len(trials.scored) + feasible == self.trials
            if full or rejected > self.max_rejections:
                trials.evaluate(batch)
                batch, feasible = [], 0
            if len(trials.scored) == self.trials or rejected > self.max_rejections:
                break
        return trials.result(self.name, self.long_term_steps)

    def samples(self, net: Network) -> Iterator[dict[str, int]]:
        rng = np.random.default_rng(self.seed)
        while True:
            yield {g.id: int(rng.choice(g.valid_widths())) for g in net.groups}
