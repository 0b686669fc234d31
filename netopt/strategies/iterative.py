"""`Iterative`: the loop of a strategy that goes from network to network (NetAdapt's Algorithm 1).

Each iteration starts from Net_{i-1}: the network is tracked (measured where its estimate
nears a measured budget), the loop stops once every budget is met as estimated and as
measured, and otherwise the strategy proposes, scores and picks the next network (`_iterate`),
which joins the family. At the end the last network is fine-tuned for longer, tested and
measured. Before that, the last network is landed on its measured budgets
(`netopt.strategies.landing`; setting `land`). ProgressiveBarrier and NetAdaptV2 differ only in
how they propose and pick; the loop, its landing, its resume, its log lines and its progress bar
are written once, here.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from netopt.bridge import trace
from netopt.errors import InfeasibleError
from netopt.strategies.base import Candidate, Problem, Proposal, Result, Strategy, changed
from netopt.strategies.engine import Ask, Engine, Serial, seed_for
from netopt.strategies.landing import Landing, land, shares

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Iterative", "AtFloor", "Step", "cannot_shrink"]

LOG = logging.getLogger("netopt.progress")
"""One INFO line per iteration: what a log shows where no progress bar is drawn (no TTY)."""

Step = tuple[list[Proposal], Proposal, "nn.Module"]
"""One iteration's outcome: every proposal scored, the one picked, and its weights."""


class AtFloor(InfeasibleError):
    """No channel group can shrink any further; `holds`: the network meets every budget as measured."""

    def __init__(self, message: str, holds: bool) -> None:
        super().__init__(message)
        self.holds = holds


class Iterative(Strategy):
    """A strategy that adapts one network an iteration; subclasses propose and pick (`_iterate`)."""

    label = "adapting"
    """What the progress bar says it is doing."""

    def __init__(self, *, executor: Executor | None = None, progress: bool | None = None, **settings: Any) -> None:
        super().__init__(**settings)
        self.executor = self._executor(executor) or Serial()
        self.progress = progress

    def run(self, problem: Problem, run_dir: str | Path | None = None, resume: bool = False) -> Result:
        """Adapt; with `run_dir` every step is saved, and `resume=True` continues a stopped run
        there, redoing only the proposals that had not finished (a finished run is read back)."""
        engine = self._engine(problem, run_dir, resume)
        done = engine.finished(self.name)
        if done is not None:
            return done
        prepared = self._prepare(engine)
        search_began = engine.clock.objective
        family = engine.log.family(problem) if engine.log and engine.log.members() else [
            self._saved_start(engine, prepared)]
        history = engine.log.proposals(family) if engine.log else []
        current = self._loop(engine, prepared, family, history)
        current, landing = self._land(engine, prepared, family, history, current)
        finishing = engine.clock.objective
        final = engine.finish(current, self.long_term_steps, landing)
        result = engine.result(self.name, final, family, history, self._steps_taken(history), landing)
        self._timed(result, prepared, searching=finishing - search_began, final=engine.clock.objective - finishing)
        return result

    def _loop(self, engine: Engine, prepared: Any, family: list[Candidate], history: list[Proposal]) -> Candidate:
        """Iterate from the family's last member until `turn` says it is finished; the last network."""
        current = family[-1]
        bar = tqdm(desc=self.label, unit="iteration", disable=None if self.progress is None else not self.progress)
        engine.budgets.catch_up()  # the calibrations a stopped run had added
        while True:
            current, step = turn(engine, current, family, bar, self.max_iterations,
                                 lambda now: self._iterate(engine, prepared, now, family))
            if step is None:
                break
            proposals, picked, module = step
            history += proposals
            assert picked.score is not None, picked  # an iterative strategy scores what it picks
            current = Candidate(current.iteration + 1, engine.network.with_widths(picked.widths), module,
                                picked.score, picked.resources)
            engine.save_member(current, picked.group)
            family.append(current)
            resources = ", ".join(f"{b.resource} {current.resources[b.resource]:.4g}/{b.budget:.4g}"
                                  for b in engine.bounds)
            LOG.info("iteration %d: %s; %s; holdout %.3f", current.iteration,
                     self._describe(current, picked, proposals), resources, current.accuracy)
            bar.update()
            bar.set_postfix({b.resource: f"{current.resources[b.resource]:.4g}/{b.budget:.4g}" for b in engine.bounds})
        bar.close()
        return current

    def _land(self, engine: Engine, prepared: Any, family: list[Candidate], history: list[Proposal],
              current: Candidate) -> tuple[Candidate, Landing]:
        """The loop's last network landed on its measured budgets (`netopt.strategies.landing`;
        with `land=False` only where it stands); a proposal the landing scored joins `history`."""
        if getattr(self.settings, "land", None) is False:
            return current, Landing(shares(engine, current), on=False)
        final, proposals, landing = land(engine, family, current,
                                         lambda member, group, widths, resources: self._landing_ask(
                                             engine, prepared, member, group, widths, resources))
        history += proposals
        if final is not current:
            LOG.info("landed from iteration %d: %s", final.iteration, landing.describe())
        return final, landing

    def _saved_start(self, engine: Engine, prepared: Any) -> Candidate:
        start = self._start(engine, prepared)
        engine.save_member(start, None)
        return start

    # --- what a subclass decides ---------------------------------------------------------------

    def _engine(self, problem: Problem, run_dir: str | Path | None, resume: bool) -> Engine:
        return Engine(problem, self.config(), short_term_steps=self.short_term_steps, seed=self.seed,
                      run_dir=run_dir, resume=resume, executor=self.executor, stacklevel=4)

    def _prepare(self, engine: Engine) -> Any:
        """Work before the first iteration (NetAdaptV2: its super-network); passed to the hooks."""
        return None

    @abstractmethod
    def _start(self, engine: Engine, prepared: Any) -> Candidate:
        """Net_0: the starting network, scored."""

    @abstractmethod
    def _iterate(self, engine: Engine, prepared: Any, current: Candidate, family: Sequence[Candidate]) -> Step:
        """One iteration from `current`: propose, score, pick; `cannot_shrink` where nothing can."""

    def _landing_ask(self, engine: Engine, prepared: Any, member: Candidate, group: str, widths: dict[str, int],
                     resources: dict[str, float]) -> Ask:
        """The landing's network (`widths`, less cut than the step after `member`), fine-tuned
        from `member`'s weights as a proposal of the iteration after it."""
        traced = trace(member.module, engine.problem.traced.example_input(), step=engine.network.step)
        block = "+".join(g for g in widths if widths[g] != member.network.widths[g])
        return Ask(member.iteration, group, widths, resources, traced, changed(block, widths, traced.network),
                   seed_for(self.seed, member.iteration, group))

    def _describe(self, current: Candidate, picked: Proposal, proposals: Sequence[Proposal]) -> str:
        """The iteration's log line: what was picked."""
        return picked.group

    def _steps_taken(self, history: Sequence[Proposal]) -> int:
        """Training steps the run took: every proposal's fine-tuning and the final network's."""
        return sum(p.steps for p in history) + self.long_term_steps

    def _timed(self, result: Result, prepared: Any, searching: float, final: float) -> None:
        """Add the strategy's own split of the time to `result.timings` (none by default)."""


def turn(engine: Engine, current: Candidate, family: Sequence[Candidate], bar: tqdm[Any], max_iterations: int,
         iterate: Callable[[Candidate], Step]) -> tuple[Candidate, Step | None]:
    """One turn of the loop: (current, None) once it is finished (`settled`, or at the smallest
    network within budget as measured); else (current, `iterate(current)`), `current` being the
    measured copy after a measured miss. Past `max_iterations`, or at the smallest network over a
    budget, InfeasibleError."""
    current = engine.budgets.track(current)
    current, done = settled(engine, current, family, bar)
    if done:
        return current, None
    if current.iteration >= max_iterations:
        raise InfeasibleError(f"budgets not met after {max_iterations} iterations; raise max_iterations or the "
                              "schedules' initial reductions")
    try:
        return current, iterate(current)
    except AtFloor as floor:
        if floor.holds:  # the estimates aimed lower than the measurement needs
            return current, None
        raise


def settled(engine: Engine, current: Candidate, family: Sequence[Candidate],
            bar: tqdm[Any]) -> tuple[Candidate, bool]:
    """The stopping rule: (current, True) once its estimates meet every budget and its
    measurement too; after a measured miss, the measured copy, and the bar says so."""
    budgets = engine.budgets
    if not budgets.met(current.resources):
        return current, False
    current, holds = budgets.verified(current, family)
    if not holds:
        bar.set_postfix({r: f"measured {v:.4g}/{b:.4g}" for r, (v, b) in budgets.missed(current).items()})
    return current, holds


def cannot_shrink(engine: Engine, current: Candidate, family: Sequence[Candidate]) -> AtFloor:
    """What an iteration raises when no group can shrink any further: `holds` where `current`
    still meets every budget as measured (estimated, for one only estimated), and the loop
    finishes it; else an InfeasibleError with both figures."""
    bounds, budgets = engine.bounds, engine.budgets
    estimated = all(current.resources[b.resource] <= b.budget for b in bounds if b.basis != "measured")
    holds = bool(budgets.measuring()) and estimated and not budgets.verify(current, family)
    figures = "; ".join(
        f"{b.resource} {current.resources[b.resource]:.4g} {b.unit}"
        + (f" (measured {current.measured[b.resource]:.4g})" if b.resource in current.measured else "")
        + f" against {b.budget:.4g}" for b in bounds)
    return AtFloor(f"iteration {current.iteration}: no channel group can shrink any further, yet not every budget "
                   f"is met ({figures}); relax them", holds)
