"""ChooseNumFilters searched from the current widths down: the answer of a bisection, with the
networks it estimates kept near the current one.

A bisection over a block's grid steps (`progressive.largest_meeting`) first estimates the block
at its minimum widths and then half-way down: networks far from the answer, whose layers a
lookup table has never seen and must measure, and that the search never visits again.
NetAdaptV2 plans many multi-group blocks an iteration, so those far probes were most of the
units it measured. `nearest_meeting` gallops instead (1, 2, 4, ... grid steps down) and
bisects only the last gap: the same largest widths meeting every target, since resources shrink
with width, from networks within twice the answer's step of the current one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from netopt.strategies.progressive import _Plan, _steps_down

if TYPE_CHECKING:
    from netopt.constraints import Bound
    from netopt.ir import Network

__all__ = ["nearest_meeting"]


def nearest_meeting(net: Network, block: tuple[str, ...], bounds: Sequence[Bound], targets: dict[str, float],
                    bypass: bool = False) -> _Plan | None:
    """The largest widths of the block's groups below their current ones meeting every target
    (None where even the smallest do not), found by galloping down from the current widths.

    >>> from netopt.testing.contract import small_network
    >>> from netopt.constraints import MACsConstraint
    >>> from netopt.strategies.progressive import largest_meeting
    >>> net = small_network()
    >>> bound = MACsConstraint("50%").bind(net)
    >>> targets = {"macs": 0.9 * bound.initial}
    >>> block = tuple(g.id for g in net.groups[:2])
    >>> nearest_meeting(net, block, [bound], targets).network == largest_meeting(net, block, [bound], targets).network
    True
    """
    steps = _steps_down(net, block, bypass)
    plans: dict[int, _Plan] = {}

    def meets(k: int) -> bool:
        if k not in plans:
            candidate = net.with_widths(steps[k])
            plans[k] = _Plan("+".join(block), candidate, {b.resource: b.estimate(candidate) for b in bounds})
        return all(plans[k].resources[r] <= targets[r] for r in targets)

    missed, k = -1, 0  # invariant: steps[missed] misses the targets (-1: the current widths)
    while k < len(steps) and not meets(k):
        missed, k = k, min(2 * k + 1, len(steps) - 1) if k < len(steps) - 1 else len(steps)
    if k >= len(steps):
        return None
    lo, hi = missed + 1, k  # steps[hi] meets; every step above lo - 1 misses
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if meets(mid) else (mid + 1, hi)
    return plans[hi]
