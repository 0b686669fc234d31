"""MnasNet's reward (Tan et al., CVPR 2019, Eq. 2): accuracy and resources in one number.

    reward(m) = score(m) x prod_j [Res_j(m) / T_j]^w_j,   w_j = alpha if Res_j(m) <= T_j else beta

with T_j the problem's budgets. The soft reward (alpha = beta = -0.07, the paper's) turns budgets
into targets: a network a little over one may win if it scores higher, so a result may exceed
its budget (the `Result` says so in `over_budget`). The hard variant (alpha = 0, beta = -1)
ignores resources within budget and penalizes overshoot steeply. `resources` names the budgets
the reward softens; the others stay strict constraints. The score must be positive (accuracy,
PSNR, mIoU), since the penalty multiplies it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from netopt.frozen import Frozen

if TYPE_CHECKING:
    from netopt.constraints import Bound

__all__ = ["MnasNetReward"]


class MnasNetReward(Frozen):
    """score x prod_j (Res_j / T_j)^w_j over the soft budgets (all of them by default)."""


    alpha: float = Field(-0.07, allow_inf_nan=False)
    """The exponent within budget (0: no reward for being smaller)."""
    beta: float = Field(-0.07, allow_inf_nan=False)
    """The exponent over budget (-1: the hard variant)."""
    resources: tuple[str, ...] | None = None
    """The budgets the reward softens (None: every one); the others stay strict."""

    @field_validator("alpha", "beta")
    @classmethod
    def _not_positive(cls, value: float, info: object) -> float:
        if value > 0:
            name = getattr(info, "field_name", "exponent")
            raise ValueError(f"{name}={value!r} is positive: a reward that grows with the resource would prefer "
                             "bigger networks; give an exponent <= 0 (soft: -0.07, hard: alpha=0, beta=-1)")
        return value

    def soft(self, resource: str) -> bool:
        return self.resources is None or resource in self.resources

    def __call__(self, score: float, resources: Mapping[str, float], bounds: Sequence[Bound]) -> float:
        reward = score
        for b in bounds:
            if self.soft(b.resource):
                ratio = resources[b.resource] / b.budget
                reward *= math.pow(ratio, self.alpha if ratio <= 1 else self.beta)
        return reward

    def describe(self) -> str:
        which = "every budget" if self.resources is None else ", ".join(self.resources)
        return f"MnasNet reward (alpha {self.alpha:g}, beta {self.beta:g}; soft: {which})"
