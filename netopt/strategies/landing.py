"""Landing: the final network of an iterative strategy brought onto its measured budgets.

An iterative strategy stops at the first network whose estimates meet every budget. A table
that over-estimates, or a last step that cut a whole group at once, leaves that network well
under a budget checked by measurement: time the user allowed, and accuracy left unused. After
the loop, `land` walks back along the family to the last member that misses a budget as
measured, and takes from it the smallest part of the step that followed which every budget
still holds, as measured (the step's groups shrunk a grid step at a time, the cut found by
bisection). That network is scored as the strategy scores a proposal (from that member's
weights), recorded in the run's history (group `landing:...`), and becomes the final. Every
figure it was decided by is kept in the run's calibration record, so a resumed run lands alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from netopt.strategies.base import LANDED, LANDING, Candidate, Landing, Proposal
from netopt.strategies.engine import Ask, Engine, Told

if TYPE_CHECKING:
    from netopt.constraints import Bound
    from netopt.ir import Network

__all__ = ["Landing", "land", "shares", "LANDED", "LANDING"]

Propose = Callable[[Candidate, str, dict[str, int], dict[str, float]], Ask]
"""The strategy's way of scoring a network from a member: (member, group, widths, resources) -> Ask."""


def shares(engine: Engine, current: Candidate) -> dict[str, float]:
    """`current`'s measured share of each hard budget checked by measurement."""
    return {b.resource: _figure(engine, b, current) / b.budget for b in _measuring(engine)}


def land(engine: Engine, family: Sequence[Candidate], current: Candidate,
         propose: Propose) -> tuple[Candidate, list[Proposal], Landing]:
    """The final network landed (see the module docstring), the proposal it scored (if any), and
    where it stands. `current` is the loop's last network (the family's last member)."""
    if not _measuring(engine) or all(s >= LANDED for s in shares(engine, current).values()):
        return current, [], Landing(shares(engine, current))
    lower, upper = _segment(engine, family, current)
    path = _path(lower.network, upper.network) if lower is not None else []
    k = _first_holding(engine, path)
    if k == len(path):  # no part of the step holds: the member below is the final
        up = path[-2] if len(path) > 1 else None
        final = current if upper is current else _as_measured(engine, upper)
        return final, [], _where(engine, final, up, lower)
    assert lower is not None
    landed, proposal = _score(engine, lower, path[k], current.iteration, propose)
    return landed, [proposal], _where(engine, landed, path[k - 1] if k else None, lower)


def _measuring(engine: Engine) -> list[Bound]:
    return [b for b in engine.budgets.measuring() if b.resource not in engine.soft]


def _figure(engine: Engine, bound: Bound, member: Candidate) -> float:
    """A member's measured figure: as verified, as tracked, or measured now (and recorded)."""
    if bound.resource in member.measured:
        return member.measured[bound.resource]
    return engine.budgets.landing_figure(bound, member.network, member.iteration)


def _holds(engine: Engine, net: Network, iteration: int | None = None) -> bool:
    """Every hard budget met: as measured where checked by measurement, else as estimated."""
    measuring = _measuring(engine)
    estimated = engine.budgets.resources(net)
    return all(engine.budgets.landing_figure(b, net, iteration) <= b.budget for b in measuring) and all(
        estimated[b.resource] <= b.budget for b in engine.bounds
        if b not in measuring and b.resource not in engine.soft)


def _as_measured(engine: Engine, member: Candidate) -> Candidate:
    """`member` as a final: its figures as measured where a budget is checked by measurement."""
    measured = {b.resource: _figure(engine, b, member) for b in _measuring(engine)}
    return replace(member, resources={**member.resources, **measured}, measured={**member.measured, **measured})


def _segment(engine: Engine, family: Sequence[Candidate],
             current: Candidate) -> tuple[Candidate | None, Candidate]:
    """(the last member that misses a budget as measured, the member after it); walking back
    from `current` while members still hold (None: even the start holds)."""
    upper = current
    for member in reversed(family[:-1]):
        if not _holds(engine, member.network, member.iteration):
            return member, upper
        upper = member
    return None, upper


def _path(lower: Network, upper: Network) -> list[Network]:
    """The networks from one grid step below `lower` down to `upper` (its last): the groups the
    step between them cut, shrunk in turn a grid step at a time (one group per network, so that
    a step that cut several groups at once is split as finely as the grid allows)."""
    cut = {g: [w for w in lower.group(g).valid_widths(True) if upper.widths[g] <= w < lower.widths[g]][::-1]
           for g in lower.widths if upper.widths[g] < lower.widths[g]}
    widths, path = dict(lower.widths), []
    for k in range(max((len(ws) for ws in cut.values()), default=0)):
        for g, ws in cut.items():
            if k < len(ws):
                widths[g] = ws[k]
                path.append(lower.with_widths(widths))
    return path


def _first_holding(engine: Engine, path: Sequence[Network]) -> int:
    """The first (largest) network of `path` that holds every budget (bisection: the last is a
    member that holds), or len(path) where only the last does or the path is empty."""
    if len(path) < 2:
        return len(path)
    lo, hi = 0, len(path) - 1  # invariant: path[hi] holds
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _holds(engine, path[mid]) else (mid + 1, hi)
    return hi if hi < len(path) - 1 else len(path)


def _score(engine: Engine, lower: Candidate, net: Network, iteration: int,
           propose: Propose) -> tuple[Candidate, Proposal]:
    """`net`, scored from `lower`'s weights as the strategy scores a proposal; its resources as
    measured where a budget is checked by measurement."""
    groups = "+".join(g for g in net.widths if net.widths[g] != lower.network.widths[g])
    measured = {b.resource: engine.budgets.landing_figure(b, net) for b in _measuring(engine)}
    resources = {**engine.budgets.resources(net), **measured}
    (told,) = engine.evaluate([propose(lower, LANDING + groups, net.widths, resources)])
    assert isinstance(told, Told) and told.proposal.score is not None, told
    landed = Candidate(iteration, net, told.module, told.proposal.score, resources, measured=measured)
    return landed, told.proposal


def _where(engine: Engine, final: Candidate, up: Network | None, lower: Candidate | None) -> Landing:
    """Where `final` stands; for a budget it measures short of, the share of the step up."""
    now = shares(engine, final)
    if up is None and lower is None:
        return Landing(now)

    def above(b: Bound) -> float:
        return engine.budgets.landing_figure(b, up) if up is not None else _figure(engine, b, lower)  # type: ignore[arg-type]

    return Landing(now, {b.resource: above(b) / b.budget for b in _measuring(engine) if now[b.resource] < LANDED})
