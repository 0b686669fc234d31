"""`RandomSearch`: random widths on each group's grid; what a budget refuses costs no training."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from netopt.ir import Network
from netopt.strategies.base import Result
from netopt.strategies.search import Trials, WidthSearch
from netopt.strategies.settings import RandomSearchSettings

__all__ = ["RandomSearch"]


class RandomSearch(WidthSearch):
    """Random per-group widths on each group's step grid; assignments the estimators reject
    cost no training. Scores `trials` feasible networks and keeps the best.

    >>> import netopt
    >>> from netopt.testing.contract import small_network
    >>> from netopt.testing.problems import joint_problem
    >>> problem = joint_problem(small_network(), macs="60%", memory="90%")
    >>> result = netopt.RandomSearch(trials=3, short_term_steps=1, long_term_steps=1, progress=False).run(problem)
    >>> len([p for p in result.history if p.score is not None])
    3
    """

    name = "RandomSearch"
    Settings = RandomSearchSettings
    settings: RandomSearchSettings

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
