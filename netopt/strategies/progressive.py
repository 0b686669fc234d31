"""`ProgressiveBarrier`: NetAdapt's Algorithm 1, for several resources at once.

Each iteration i tightens every resource j still over budget by its own schedule
(Eq. 2: Res_j(Net_{i-1}) - dR_{i,j}); a resource already within budget may not rise above
it. For every channel group it proposes the largest width meeting every tightened target
(ChooseNumFilters, counting the change in the layers downstream because the whole network is
estimated), materializes it with the selector's filters (ChooseWhichFilters), fine-tunes it
for a few steps and scores it on the holdout split. The selection rule picks one proposal;
its network becomes Net_i and a member of the family. When every budget is met, the last
network is fine-tuned for longer and measured end to end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from netopt.bridge import trace
from netopt.constraints import Bound
from netopt.ir import Network
from netopt.strategies.base import Candidate, Problem, Proposal, changed
from netopt.strategies.engine import Ask, Engine, seed_for
from netopt.strategies.iterative import Iterative, Step, cannot_shrink
from netopt.strategies.settings import ProgressiveBarrierSettings, SelectionRule

__all__ = ["ProgressiveBarrier", "ProgressiveBarrierSettings", "SelectionRule"]


@dataclass(frozen=True)
class _Plan:
    """One proposal before evaluation: a group, its new width, the network and its costs."""

    group: str
    network: Network  # in the original network's terms (what estimators and reports read)
    resources: dict[str, float]


class ProgressiveBarrier(Iterative):
    """NetAdapt for m resources; the result does not depend on the executor's worker count.

    Settings (`ProgressiveBarrierSettings`): short_term_steps, long_term_steps, seed, selection,
    block_size, max_iterations.

    >>> import netopt
    >>> from netopt.testing.contract import small_network
    >>> from netopt.testing.problems import joint_problem
    >>> problem = joint_problem(small_network(), macs="60%", memory="90%")
    >>> result = netopt.ProgressiveBarrier(short_term_steps=1, long_term_steps=1, progress=False).run(problem)
    >>> netopt.ir.macs(result.final.network) <= 0.6 * netopt.ir.macs(problem.traced.network)
    True
    """

    name = "ProgressiveBarrier"
    Settings = ProgressiveBarrierSettings
    settings: ProgressiveBarrierSettings

    def training_budget(self, problem: Problem) -> int:
        """Every iteration may fine-tune one proposal per group, at most max_iterations of them; the
        landing one more."""
        proposals = -(-len(problem.traced.network.groups) // self.block_size)  # blocks per iteration
        landing = 0 if self.land is False else 1
        return (self.max_iterations * proposals + landing) * self.short_term_steps + self.long_term_steps

    def _start(self, engine: Engine, prepared: None) -> Candidate:
        module = engine.problem.traced.materialize()  # a copy: the user's model is never trained
        initial = {b.resource: b.initial for b in engine.bounds}
        return Candidate(0, engine.network, module, engine.start_score(module), initial)

    def _iterate(self, engine: Engine, prepared: None, current: Candidate, family: Sequence[Candidate]) -> Step:
        i, bounds = current.iteration, engine.bounds
        targets = engine.budgets.targets(i, current.resources)
        plans = self._plans(bounds, current, targets)
        if not plans:
            raise cannot_shrink(engine, current, family)
        traced = trace(current.module, engine.problem.traced.example_input(), step=engine.network.step)
        told = engine.score([Ask(i, p.group, p.network.widths, p.resources, traced,
                                 changed(p.group, p.network.widths, traced.network), seed_for(self.seed, i, p.group))
                             for p in plans])
        proposals = [t.proposal for t in told]
        best = self._pick(proposals, current, bounds)
        proposals[best] = replace(proposals[best], chosen=True)
        return proposals, proposals[best], told[best].module

    def _describe(self, current: Candidate, picked: Proposal, proposals: Sequence[Proposal]) -> str:
        widths = ", ".join(str(current.network.widths[g]) for g in picked.group.split("+"))
        return f"{picked.group} -> {widths}"

    # --- ChooseNumFilters ---------------------------------------------------------------------

    def _plans(self, bounds: Sequence[Bound], current: Candidate, targets: dict[str, float]) -> list[_Plan]:
        ids = [g.id for g in current.network.groups]
        blocks = [tuple(ids[k:k + self.block_size]) for k in range(0, len(ids), self.block_size)]
        plans = [p for block in blocks if (p := largest_meeting(current.network, block, bounds, targets))]
        if not plans:  # no single block reaches the targets: take the biggest step toward them
            plans = [p for block in blocks if (p := smallest_step(current.network, block, bounds))]
        return plans

    # --- PickHighestAccuracy ------------------------------------------------------------------

    def _pick(self, proposals: Sequence[Proposal], current: Candidate, bounds: Sequence[Bound]) -> int:
        if self.selection is SelectionRule.ACCURACY:
            return max(range(len(proposals)), key=lambda k: (_scored(proposals[k]), -k))

        def drop_per_saving(k: int) -> float:
            p = proposals[k]
            saved = sum((current.resources[b.resource] - p.resources[b.resource]) / b.initial for b in bounds)
            return (current.accuracy - _scored(p)) / max(saved, 1e-12)

        return min(range(len(proposals)), key=lambda k: (drop_per_saving(k), k))


def _scored(proposal: Proposal) -> float:
    """Every ProgressiveBarrier proposal is fine-tuned and scored; none is refused unscored."""
    assert proposal.score is not None, proposal
    return proposal.score


def _steps_down(net: Network, block: tuple[str, ...], bypass: bool = False) -> list[dict[str, int]]:
    """The block's groups shrunk together, one grid step more each time (each stops at its minimum,
    or with `bypass` at 0 where that removes its residual branch)."""
    below = {g: [w for w in net.group(g).valid_widths(bypass) if w < net.group(g).width][::-1] for g in block}
    depth = max((len(ws) for ws in below.values()), default=0)
    return [{g: ws[min(k, len(ws) - 1)] for g, ws in below.items() if ws} for k in range(depth)]


class _Ladder:
    """A block's steps down from its current widths (`_steps_down`), each estimated at most once:
    the rungs the searches for the largest widths meeting the targets climb."""

    def __init__(self, net: Network, block: tuple[str, ...], bounds: Sequence[Bound],
                 targets: dict[str, float], bypass: bool = False) -> None:
        self.net, self.block, self.bounds, self.targets = net, block, bounds, targets
        self.steps = _steps_down(net, block, bypass)
        self.plans: dict[int, _Plan] = {}

    def meets(self, k: int) -> bool:
        if k not in self.plans:
            candidate = self.net.with_widths(self.steps[k])
            self.plans[k] = _Plan("+".join(self.block), candidate,
                                  {b.resource: b.estimate(candidate) for b in self.bounds})
        return all(self.plans[k].resources[r] <= self.targets[r] for r in self.targets)

    def first_meeting(self, lo: int, hi: int) -> _Plan:
        """The shallowest step in [lo, hi] meeting the targets, given that hi does and lo - 1 does not."""
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if self.meets(mid) else (mid + 1, hi)
        return self.plans[hi]


def largest_meeting(net: Network, block: tuple[str, ...], bounds: Sequence[Bound],
                     targets: dict[str, float], bypass: bool = False) -> _Plan | None:
    """ChooseNumFilters: the largest widths of the block's groups below their current ones
    meeting every target (for one group: its largest width that does).

    Resources shrink with width, so the assignments that meet the targets are the deepest ones:
    a bisection finds the shallowest of them with log2(n) whole-network estimates instead of n.
    """
    ladder = _Ladder(net, block, bounds, targets, bypass)
    if not ladder.steps or not ladder.meets(len(ladder.steps) - 1):
        return None
    return ladder.first_meeting(0, len(ladder.steps) - 1)


def smallest_step(net: Network, block: tuple[str, ...], bounds: Sequence[Bound], bypass: bool = False) -> _Plan | None:
    steps = _steps_down(net, block, bypass)
    if not steps:
        return None
    candidate = net.with_widths(steps[-1])
    return _Plan("+".join(block), candidate, {b.resource: b.estimate(candidate) for b in bounds})
