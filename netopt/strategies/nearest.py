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

from netopt.strategies.progressive import _Ladder, _Plan

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
    ladder = _Ladder(net, block, bounds, targets, bypass)
    last = len(ladder.steps) - 1
    missed, k = -1, 0  # invariant: step `missed` misses the targets (-1: the current widths)
    while k <= last and not ladder.meets(k):
        missed, k = k, min(2 * k + 1, last) if k < last else last + 1
    return None if k > last else ladder.first_meeting(missed + 1, k)
