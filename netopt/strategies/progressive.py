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

import logging
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from netopt.bridge import trace
from netopt.constraints import Bound
from netopt.ir import Network
from netopt.strategies._engine import Ask, Engine, Serial, seed_for
from netopt.strategies.base import Candidate, Problem, Proposal, Result, Strategy, changed
from netopt.strategies.settings import ProgressiveBarrierSettings, SelectionRule

if TYPE_CHECKING:
    from torch import nn


__all__ = ["ProgressiveBarrier", "ProgressiveBarrierSettings", "SelectionRule"]

LOG = logging.getLogger("netopt.progress")
"""One INFO line per iteration: what a log shows where no progress bar is drawn (no TTY)."""


@dataclass(frozen=True)
class _Plan:
    """One proposal before evaluation: a group, its new width, the network and its costs."""

    group: str
    network: Network  # in the original network's terms (what estimators and reports read)
    resources: dict[str, float]


class ProgressiveBarrier(Strategy):
    """NetAdapt for m resources; the result does not depend on the executor's worker count.

    Settings (`ProgressiveBarrierSettings`): short_term_steps, long_term_steps, seed, selection,
    block_size, max_iterations."""

    name = "ProgressiveBarrier"
    Settings = ProgressiveBarrierSettings
    settings: ProgressiveBarrierSettings

    def __init__(self, *, executor: Executor | None = None, progress: bool | None = None, **settings: Any) -> None:
        super().__init__(**settings)
        self.executor = self._executor(executor) or Serial()
        self.progress = progress

    # --- the loop ----------------------------------------------------------------------------

    def training_budget(self, problem: Problem) -> int:
        """Every iteration may fine-tune one proposal per group; at most max_iterations of them."""
        proposals = -(-len(problem.traced.network.groups) // self.block_size)  # blocks per iteration
        return self.max_iterations * proposals * self.short_term_steps + self.long_term_steps

    def run(self, problem: Problem, run_dir: str | Path | None = None, resume: bool = False) -> Result:
        """Adapt; with `run_dir` every step is saved, and `resume=True` continues a stopped run
        there, redoing only the proposals that had not finished."""
        engine = Engine(problem, self.config(), short_term_steps=self.short_term_steps, seed=self.seed,
                        run_dir=run_dir, resume=resume, executor=self.executor)
        family = engine.log.family(problem) if engine.log and engine.log.members() else [self._start(engine)]
        history = engine.log.proposals(family) if engine.log else []
        current = family[-1]
        bar = tqdm(desc="adapting", unit="iteration", disable=None if self.progress is None else not self.progress)
        engine.catch_up()  # the calibrations a stopped run had added
        while True:
            current, step = engine.turn(current, family, bar, self.max_iterations,
                                        lambda now: self._iterate(engine, now, family))
            if step is None:
                break
            proposals, picked, module = step
            history += proposals
            current = Candidate(current.iteration + 1, problem.traced.network.with_widths(picked.widths), module,
                                _scored(picked), picked.resources)
            engine.save_member(current, picked.group)
            family.append(current)
            LOG.info("iteration %d: %s -> %s; %s; holdout %.3f", current.iteration, picked.group,
                     ", ".join(str(current.network.widths[g]) for g in picked.group.split("+")),
                     ", ".join(f"{b.resource} {current.resources[b.resource]:.4g}/{b.budget:.4g}"
                               for b in engine.bounds), current.accuracy)
            bar.update()
            bar.set_postfix({b.resource: f"{current.resources[b.resource]:.4g}/{b.budget:.4g}" for b in engine.bounds})
        bar.close()
        final = engine.finish(current, self.long_term_steps)
        return engine.result(self.name, final, family, history, sum(p.steps for p in history) + self.long_term_steps)

    def _start(self, engine: Engine) -> Candidate:
        module = engine.problem.traced.materialize()  # a copy: the user's model is never trained
        initial = {b.resource: b.initial for b in engine.bounds}
        start = Candidate(0, engine.network, module, engine.start_score(module), initial)
        engine.save_member(start, None)
        return start

    def _iterate(self, engine: Engine, current: Candidate,
                 family: Sequence[Candidate]) -> tuple[list[Proposal], Proposal, nn.Module]:
        i, bounds = current.iteration, engine.bounds
        targets = engine.targets(i, current.resources)
        plans = self._plans(bounds, current, targets)
        if not plans:
            raise engine.cannot_shrink(current, family)
        traced = trace(current.module, engine.problem.traced.example_input(), step=engine.network.step)
        told = engine.score([Ask(i, p.group, p.network.widths, p.resources, traced,
                                    changed(p.group, p.network.widths, traced.network), seed_for(self.seed, i, p.group))
                                for p in plans])
        proposals = [t.proposal for t in told]
        best = self._pick(proposals, current, bounds)
        proposals[best] = replace(proposals[best], chosen=True)
        return proposals, proposals[best], told[best].module

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


def largest_meeting(net: Network, block: tuple[str, ...], bounds: Sequence[Bound],
                     targets: dict[str, float], bypass: bool = False) -> _Plan | None:
    """ChooseNumFilters: the largest widths of the block's groups below their current ones
    meeting every target (for one group: its largest width that does).

    Resources shrink with width, so the assignments that meet the targets are the deepest ones:
    a bisection finds the shallowest of them with log2(n) whole-network estimates instead of n.
    """
    steps = _steps_down(net, block, bypass)
    plans: dict[int, _Plan] = {}

    def meets(k: int) -> bool:
        if k not in plans:
            candidate = net.with_widths(steps[k])
            plans[k] = _Plan("+".join(block), candidate, {b.resource: b.estimate(candidate) for b in bounds})
        return all(plans[k].resources[r] <= targets[r] for r in targets)

    if not steps or not meets(len(steps) - 1):
        return None
    lo, hi = 0, len(steps) - 1  # invariant: steps[hi] meets the targets
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if meets(mid) else (mid + 1, hi)
    return plans[hi]


def smallest_step(net: Network, block: tuple[str, ...], bounds: Sequence[Bound], bypass: bool = False) -> _Plan | None:
    steps = _steps_down(net, block, bypass)
    if not steps:
        return None
    candidate = net.with_widths(steps[-1])
    return _Plan("+".join(block), candidate, {b.resource: b.estimate(candidate) for b in bounds})
