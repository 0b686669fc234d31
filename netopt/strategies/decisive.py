"""Decisive measurements: a figure decides against a threshold only when its rounds agree.

A budget checked by measurement is decided by a figure measured side by side with the start in
rounds (windows), each round giving the network's ratio to the start under that round's load.
The figure is the start's measurement times the rounds' median ratio; its repeatability is a
t-interval of the rounds' ratios (their spread over the square root of their number, so it
narrows as rounds are added). Where the interval straddles a threshold the decision would hang
on the machine's noise: `Reading.settle` measures more rounds until it does not, up to
`Decisive.most`, and past that the median decides and the decision is flagged close.

    >>> reading = Reading(1.0, [0.48, 0.50, 0.52])
    >>> reading.value, reading.straddles(0.6), reading.straddles(0.51)
    (0.5, False, True)
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from statistics import NormalDist

from pydantic import Field, model_validator

from netopt.frozen import Frozen
from netopt.measure.base import MEASURED_PASSES

__all__ = ["Decisive", "Reading"]


class Decisive(Frozen):
    """How many side-by-side rounds a decision by measurement takes: `rounds` as a rule, more
    while its interval (at `level`) straddles the threshold, `most` at the very most."""

    rounds: int = Field(MEASURED_PASSES, ge=2, description="rounds every measured figure takes")
    most: int = Field(9, ge=2, description="rounds at most while the figure straddles its threshold")
    level: float = Field(0.9, gt=0.0, lt=1.0, description="two-sided confidence of the figure's interval")

    @model_validator(mode="after")
    def _consistent(self) -> Decisive:
        if self.most < self.rounds:
            raise ValueError(f"most={self.most} is below rounds={self.rounds}; raise most or lower rounds")
        return self


@cache
def _t(level: float, df: int) -> float:
    """Student's t quantile for a two-sided interval at `level` with `df` degrees of freedom:
    exact for 1 and 2, else the Cornish-Fisher expansion (within 0.2% of scipy's at 90-95% from
    3 on), which spares a decision scipy.stats' second-long import."""
    p = (1 + level) / 2
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    z = NormalDist().inv_cdf(p)
    terms = ((z**3 + z) / 4, (5 * z**5 + 16 * z**3 + 3 * z) / 96, (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
             (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160)
    return z + sum(term / df ** (k + 1) for k, term in enumerate(terms))


@dataclass
class Reading:
    """A figure measured in side-by-side rounds: `scale` (the start's measurement) times each
    round's ratio of the network to the start."""

    scale: float
    ratios: list[float] = field(default_factory=list)
    level: float = 0.9
    noisy: int = 0
    """Rounds measured in this process whose own spread was noisy (IQR/median > 10%)."""

    @property
    def value(self) -> float:
        """The figure: `scale` times the rounds' median ratio (one burst of load does not move it)."""
        return self.scale * statistics.median(self.ratios)

    def interval(self) -> tuple[float, float]:
        """The figure's repeatability: median ± t * stdev / sqrt(rounds), in the figure's unit."""
        if len(self.ratios) < 2:
            return -math.inf, math.inf
        half = _t(self.level, len(self.ratios) - 1) * statistics.stdev(self.ratios) / math.sqrt(len(self.ratios))
        centre = statistics.median(self.ratios)
        return self.scale * (centre - half), self.scale * (centre + half)

    def straddles(self, threshold: float) -> bool:
        """Whether the interval lies on both sides of `threshold`: a decision by it hangs on noise."""
        low, high = self.interval()
        return low < threshold < high

    def settle(self, thresholds: Sequence[float], settings: Decisive, more: Callable[[], tuple[float, bool]]) -> bool:
        """Measure `more` rounds (each: its ratio, whether it was noisy) until at least
        `settings.rounds` are taken and no threshold is straddled, or `settings.most` are; True
        where one still is (the decision was close, and the median decides)."""
        self.level = settings.level
        while len(self.ratios) < settings.rounds or (
                len(self.ratios) < settings.most and any(self.straddles(t) for t in thresholds)):
            ratio, noisy = more()
            self.ratios.append(ratio)
            self.noisy += noisy
        return any(self.straddles(t) for t in thresholds)
