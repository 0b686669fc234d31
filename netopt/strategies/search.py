"""Strategies that choose a whole width assignment at once, and what they share.

A `Trials` object is one such search's bookkeeping: it estimates a width assignment with every
constraint, rejects it without training when a budget is broken, fine-tunes and scores the
feasible ones (through an executor, each with its own seed), records every proposal, and at
the end returns the Pareto front of what it scored and the best network, long-term fine-tuned.
With a run directory, every scored trial is saved as it finishes and a resumed search reuses
it: strategies here propose the same assignments for the same seed, so nothing is redone.

`UniformWidth` (uniform.py), `RandomSearch` (random_search.py), `OptunaSearch` and
`GeometricProgram` are built on it; the first two show how short a strategy is.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from tqdm import tqdm

from netopt.errors import InfeasibleError
from netopt.ir import Network
from netopt.strategies.base import Candidate, Problem, Proposal, Result, Strategy
from netopt.strategies.engine import Ask, Engine, seed_for
from netopt.strategies.reward import MnasNetReward
from netopt.strategies.settings import WidthSearchSettings

if TYPE_CHECKING:
    pass

__all__ = ["Trials", "WidthSearch", "pareto_front", "ALL"]

ALL = "*"  # the `group` of a proposal that sets every group's width


def pareto_front(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates no other one beats on accuracy and every resource at once, largest first."""
    def dominates(a: Candidate, b: Candidate) -> bool:
        no_worse = a.accuracy >= b.accuracy and all(a.resources[r] <= b.resources[r] for r in b.resources)
        better = a.accuracy > b.accuracy or any(a.resources[r] < b.resources[r] for r in b.resources)
        return no_worse and better

    front = [c for c in candidates if not any(dominates(o, c) for o in candidates)]
    unique = {tuple(sorted(c.network.widths.items())): c for c in reversed(front)}  # the first of equals
    return sorted(unique.values(), key=lambda c: (-sum(c.resources.values()), c.iteration))


class Trials:
    """One width-assignment search's trials on an `Engine`, numbered in order; see the module docstring."""

    def __init__(self, engine: Engine, *, total: int | None = None, progress: bool | None = None,
                 label: str = "trials", reward: MnasNetReward | None = None) -> None:
        self.engine, self.reward = engine, reward
        self.problem, self.bounds = engine.problem, engine.bounds
        self.history: list[Proposal] = []
        self.scored: list[Candidate] = []
        self._bar = tqdm(desc=label, total=total, unit="trial", disable=None if progress is None else not progress)

    # --- estimates ---------------------------------------------------------------------------

    @property
    def network(self) -> Network:
        return self.problem.traced.network

    def resources(self, widths: dict[str, int]) -> dict[str, float]:
        return self.engine.budgets.resources(self.network.with_widths(widths))

    def violations(self, resources: dict[str, float]) -> dict[str, float]:
        """estimate / budget - 1 per resource: <= 0 within budget (Optuna's constraint convention)."""
        return {b.resource: resources[b.resource] / b.budget - 1.0 for b in self.bounds}

    def feasible(self, resources: dict[str, float]) -> bool:
        return self.engine.budgets.feasible(resources)

    @property
    def steps(self) -> int:
        """Training steps spent so far on short-term fine-tuning."""
        return sum(p.steps for p in self.history)

    # --- proposals -----------------------------------------------------------------------------

    def note(self, widths: dict[str, int], resources: dict[str, float]) -> Proposal:
        """Record an assignment that is only estimated (refused by the estimators, or a probe):
        no training, no score."""
        proposal = Proposal(len(self.history), ALL, self.network.with_widths(widths).widths, resources, None, 0)
        self.engine.note(proposal)
        self.history.append(proposal)
        return proposal

    def score(self, batch: Sequence[dict[str, int]]) -> list[Candidate]:
        """Fine-tune and score feasible assignments (all at once on the executor), in order."""
        for widths in batch:
            res = self.resources(widths)
            if not self.feasible(res):
                raise InfeasibleError(f"widths {widths} break a budget ({res}); note() them instead of scoring")
        return [c for c in self.evaluate(batch) if c is not None]

    def evaluate(self, batch: Sequence[dict[str, int]]) -> list[Candidate | None]:
        """Number the assignments in order; note the ones a budget refuses (None), fine-tune and
        score the others on the executor. Numbers and seeds depend only on the order, so any
        batch size and any worker count give the same history."""
        traced, start = self.problem.traced, len(self.history)
        items: list[Ask | Proposal] = []
        for n, widths in enumerate(batch, start):
            full, res = self.network.with_widths(widths).widths, self.resources(widths)
            items.append(Ask(n, ALL, full, res, traced, widths, seed_for(self.seed, "trial", n)) if self.feasible(res)
                         else Proposal(n, ALL, full, res, None, 0))
        out: list[Candidate | None] = []
        for item in self.engine.evaluate(items):
            if isinstance(item, Proposal):  # refused by a budget: recorded, never trained
                self.history.append(item)
                out.append(None)
                continue
            self.history.append(item.proposal)
            candidate = Candidate(item.proposal.iteration, self.network.with_widths(item.proposal.widths), item.module,
                                  _score(item.proposal), item.proposal.resources)
            self.scored.append(candidate)
            out.append(candidate)
            self._bar.update()
        return out

    @property
    def seed(self) -> int:
        return self.engine.seed

    # --- the end -------------------------------------------------------------------------------

    def result(self, strategy: str, long_term_steps: int, best: Candidate | None = None,
               front: Sequence[Candidate] | None = None) -> Result:
        """Long-term fine-tune `best` (default: the highest holdout score, then the cheapest) and
        return it with the front (default: the Pareto front of everything scored)."""
        self._bar.close()
        if not self.scored:
            raise InfeasibleError(f"{strategy} scored no network within every budget ({len(self.history)} "
                                  "proposals, all refused by the estimators); relax the budgets, raise "
                                  "max_rejections, or use UniformWidth or GeometricProgram, which aim at the budget")
        best = self.verified(strategy, best)
        family = list(front) if front is not None else pareto_front(self.scored)
        self.history[best.iteration] = replace(self.history[best.iteration], chosen=True)
        for member in family:
            self.engine.save_member(member, ALL)
        final = self.engine.finish(best, long_term_steps)
        return self.engine.result(strategy, final, family, self.history, self.steps + long_term_steps)

    def best(self) -> Candidate:
        """The scored network within every budget with the highest reward (MnasNet's) or holdout
        score, then the cheapest."""
        within = [c for c in self.scored if self.feasible(c.resources)]
        if not within:
            raise InfeasibleError("no scored network is within every budget")
        if self.reward is not None:
            reward = self.reward
            return max(within, key=lambda c: (reward(c.accuracy, c.resources, self.bounds), -c.iteration))
        return max(within, key=lambda c: (c.accuracy, -sum(c.resources[b.resource] / b.budget for b in self.bounds),
                                          -c.iteration))

    def verify(self, candidate: Candidate) -> bool:
        """Measure `candidate` end to end where a budget is checked that way; False when it misses
        one (the lookup table is recalibrated with it, and every scored network re-estimated)."""
        if not self.engine.budgets.verify(candidate):
            return True
        for c in self.scored:
            c.resources = self.engine.budgets.resources(c.network)
        return False

    def verified(self, strategy: str, best: Candidate | None = None) -> Candidate:
        """`best` (default: `best()`), or, where it misses a budget as measured, the best scored
        network that meets them all as measured: re-ranked on the recalibrated estimates."""
        pick = best or self.best()
        while not self.verify(pick):
            missed = self.engine.budgets.missed(pick)
            over = ", ".join(f"{r} measured {v:.4g} against {b:.4g}" for r, (v, b) in missed.items())
            try:
                pick = self.best()
            except InfeasibleError:
                raise InfeasibleError(
                    f"{strategy}: its best network within budget by estimate misses when measured ({over}), and after "
                    f"recalibrating the lookup table none of the {len(self.scored)} networks it scored is within every "
                    "budget; give it more trials or a looser budget") from None
        return pick


def _score(proposal: Proposal) -> float:
    assert proposal.score is not None, proposal
    return proposal.score


class WidthSearch(Strategy):
    """A strategy that proposes whole width assignments and scores them with `Trials`.

    `trials` is its compute budget: at most that many networks are fine-tuned (each for
    `short_term_steps`), so it uses at most trials * short_term_steps + long_term_steps steps.
    """

    name = "WidthSearch"
    Settings = WidthSearchSettings
    settings: WidthSearchSettings

    def __init__(self, *, executor: Executor | None = None, progress: bool | None = None, **settings: Any) -> None:
        super().__init__(**settings)
        self.executor, self.progress = self._executor(executor), progress

    repairs: ClassVar[int] = 0
    """Networks fine-tuned again, at most, after the chosen one misses a budget as measured."""

    def training_budget(self, problem: Problem) -> int:
        return (self.trials + self.repairs) * self.short_term_steps + self.long_term_steps

    def run(self, problem: Problem, run_dir: str | Path | None = None, resume: bool = False) -> Result:
        engine = self.open_engine(problem, run_dir, resume)
        done = engine.finished(self.name)
        return done if done is not None else self.search(self.trials_on(engine))

    @property
    def _reward(self) -> MnasNetReward | None:
        return getattr(self.settings, "reward", None)

    def open_engine(self, problem: Problem, run_dir: str | Path | None, resume: bool) -> Engine:
        reward = self._reward
        soft = frozenset(c.resource for c in problem.constraints if reward is not None and reward.soft(c.resource))
        return Engine(problem, self.config(), short_term_steps=self.short_term_steps, seed=self.seed,
                      run_dir=run_dir, resume=resume, executor=self.executor, soft=soft, stacklevel=4)

    def trials_on(self, engine: Engine) -> Trials:
        return Trials(engine, total=self.trials, progress=self.progress, label=self.name, reward=self._reward)

    @abstractmethod
    def search(self, trials: Trials) -> Result:
        """Propose, score up to `self.trials` networks, and return `trials.result(...)`."""
