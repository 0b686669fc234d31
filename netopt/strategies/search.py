"""Strategies that choose a whole width assignment at once, and what they share.

A `Trials` object is one such search's bookkeeping: it estimates a width assignment with every
constraint, rejects it without training when a budget is broken, fine-tunes and scores the
feasible ones (through an executor, each with its own seed), records every proposal, and at
the end returns the Pareto front of what it scored and the best network, long-term fine-tuned.
With a run directory, every scored trial is saved as it finishes and a resumed search reuses
it: strategies here propose the same assignments for the same seed, so nothing is redone.

`UniformWidth` (the paper's width multiplier, found by bisection) and `RandomSearch` live
here; `OptunaSearch` and `GeometricProgram` build on the same `Trials`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from netopt.constraints import Bound
from netopt.errors import ConfigError, InfeasibleError
from netopt.ir import Network
from netopt.runs import RunError
from netopt.strategies.base import Candidate, Problem, Proposal, Result, Strategy, check_feasible
from netopt.strategies.common import Clock, Serial, evaluate, finish, seed_for
from netopt.strategies.log import _Log

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Trials", "WidthSearch", "UniformWidth", "RandomSearch", "pareto_front"]

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
    """One width-assignment search's evaluations, in order; see the module docstring."""

    def __init__(self, problem: Problem, bounds: Sequence[Bound], *, short_term_steps: int, seed: int,
                 executor: Executor | None = None, log: _Log | None = None, total: int | None = None,
                 progress: bool | None = None, label: str = "trials") -> None:
        self.problem, self.bounds = problem, list(bounds)
        self.short_term_steps, self.seed = short_term_steps, seed
        self.executor = executor or Serial()
        self.log = log
        self.clock = Clock(bounds)
        self.history: list[Proposal] = []
        self.scored: list[Candidate] = []
        self._logged_widths: dict[int, dict[str, int]] = {}
        self._recorded: dict[int, tuple[dict[str, int], bool]] = {}  # number -> (widths, scored) on disk
        self._done = self._logged() if log else {}
        self._bar = tqdm(desc=label, total=total, unit="trial", disable=None if progress is None else not progress)

    # --- estimates ---------------------------------------------------------------------------

    @property
    def network(self) -> Network:
        return self.problem.traced.network

    def resources(self, widths: dict[str, int]) -> dict[str, float]:
        net = self.network.with_widths(widths)
        return {b.resource: b.estimate(net) for b in self.bounds}

    def violations(self, resources: dict[str, float]) -> dict[str, float]:
        """estimate / budget - 1 per resource: <= 0 within budget (Optuna's constraint convention)."""
        return {b.resource: resources[b.resource] / b.budget - 1.0 for b in self.bounds}

    def feasible(self, resources: dict[str, float]) -> bool:
        return all(b.met(resources[b.resource]) for b in self.bounds)

    @property
    def steps(self) -> int:
        """Training steps spent so far on short-term fine-tuning."""
        return sum(p.steps for p in self.history)

    # --- proposals -----------------------------------------------------------------------------

    def note(self, widths: dict[str, int], resources: dict[str, float]) -> Proposal:
        """Record an assignment that is only estimated (refused by the estimators, or a probe):
        no training, no score."""
        proposal = Proposal(len(self.history), ALL, self.network.with_widths(widths).widths, resources, None, 0)
        self._check_replay(proposal.iteration, proposal.widths, scored=False)
        self.history.append(proposal)
        if self.log and proposal.iteration not in self._recorded:
            self.log.record(proposal, None)
        return proposal

    def _check_replay(self, n: int, widths: dict[str, int], scored: bool) -> None:
        """A resumed search must propose what the stopped one did; anything else is refused."""
        if n in self._recorded and self._recorded[n] != (widths, scored):
            logged, was_scored = self._recorded[n]
            raise RunError(
                f"proposal {n} differs from the one logged in {self.log.run.path if self.log else '?'} "
                f"({widths}{' scored' if scored else ''} vs {logged}{' scored' if was_scored else ''}): the settings "
                "or the estimators changed since the run stopped; resume with the same ones, or start a new run")

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
        traced, objective = self.problem.traced, self.problem.objective
        numbers = range(len(self.history), len(self.history) + len(batch))
        resources = [self.resources(w) for w in batch]
        feasible = [self.feasible(r) for r in resources]
        for n, widths, ok in zip(numbers, batch, feasible, strict=True):
            self._check_replay(n, self.network.with_widths(widths).widths, scored=ok)
        futures = {n: self.executor.submit(evaluate, traced, widths, objective, self.short_term_steps,
                                           seed_for(self.seed, "trial", n))
                   for n, widths, ok in zip(numbers, batch, feasible, strict=True)
                   if ok and not self._reusable(n, widths)}
        out: list[Candidate | None] = []
        for n, widths, res, ok in zip(numbers, batch, resources, feasible, strict=True):
            if not ok:
                self.note(widths, res)
                out.append(None)
                continue
            if n in futures:
                score, used, module, seconds = futures[n].result()
                self.clock.objective += seconds
            else:
                score, used, module = self._done[n]
            proposal = Proposal(n, ALL, self.network.with_widths(widths).widths, res, score, used)
            self.history.append(proposal)
            if self.log and n not in self._recorded:
                self.log.record(proposal, module)
            candidate = Candidate(n, self.network.with_widths(widths), module, score, res)
            self.scored.append(candidate)
            out.append(candidate)
            self._bar.update()
        return out

    def _logged(self) -> dict[int, tuple[float, int, nn.Module]]:
        """Scored trials of a stopped run, with their fine-tuned weights, by trial number."""
        assert self.log is not None
        found: dict[int, tuple[float, int, nn.Module]] = {}
        for r in self.log.run.history():
            self._recorded[r["iteration"]] = (r["widths"], r["score"] is not None)
            weights = self.log.run.proposal_weights(r["iteration"], r["group"]) if r["score"] is not None else None
            if weights is None:
                continue
            module = self.problem.traced.materialize(self.network.with_widths(r["widths"]))
            module.load_state_dict(weights)
            found[r["iteration"]] = (r["score"], r["steps"], module)
            self._logged_widths[r["iteration"]] = r["widths"]
        return found

    def _reusable(self, n: int, widths: dict[str, int]) -> bool:
        return n in self._done and self._logged_widths[n] == self.network.with_widths(widths).widths

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
        family = list(front) if front is not None else pareto_front(self.scored)
        if best is None:
            best = max(self.scored, key=lambda c: (c.accuracy, -sum(r / b.budget for r, b in
                                                                   zip(c.resources.values(), self.bounds,
                                                                       strict=True)), -c.iteration))
        self.history[best.iteration] = replace(self.history[best.iteration], chosen=True)
        if self.log:
            for member in family:
                self.log.save_member(member, ALL)
        final = finish(self.problem, self.bounds, best, long_term_steps, self.seed, self.clock, self.log)
        return Result(final, family, self.history, self.steps + long_term_steps, self.clock.timings(),
                      strategy=strategy, start=self.network)


class WidthSearch(Strategy):
    """A strategy that proposes whole width assignments and scores them with `Trials`.

    `trials` is its compute budget: at most that many networks are fine-tuned (each for
    `short_term_steps`), so it uses at most trials * short_term_steps + long_term_steps steps.
    """

    name = "WidthSearch"

    def __init__(self, *, trials: int = 20, short_term_steps: int = 100, long_term_steps: int = 1000, seed: int = 0,
                 executor: Executor | None = None, progress: bool | None = None) -> None:
        if not isinstance(trials, int) or trials < 1:
            raise ConfigError(f"{self.name}: trials={trials!r} is not a compute budget; it must be an integer >= 1 "
                              "(the number of networks fine-tuned and scored)")
        if short_term_steps < 0 or long_term_steps < 0:
            raise ConfigError(f"{self.name}: short_term_steps and long_term_steps must be >= 0")
        self.trials, self.short_term_steps, self.long_term_steps = trials, short_term_steps, long_term_steps
        self.seed, self.executor, self.progress = seed, executor, progress

    def training_budget(self, problem: Problem) -> int:
        return self.trials * self.short_term_steps + self.long_term_steps

    def config(self) -> dict[str, Any]:
        return {"strategy": self.name, "trials": self.trials, "short_term_steps": self.short_term_steps,
                "long_term_steps": self.long_term_steps, "seed": self.seed}

    def run(self, problem: Problem, run_dir: str | Path | None = None, resume: bool = False) -> Result:
        bounds = problem.bind()
        check_feasible(bounds, problem.traced.network)
        log = _Log.open(run_dir, resume, self.config(), problem) if run_dir is not None else None
        if log and log.has_final():
            return log.result(problem, self.name)
        trials = Trials(problem, bounds, short_term_steps=self.short_term_steps, seed=self.seed,
                        executor=self.executor, log=log, total=self.trials, progress=self.progress, label=self.name)
        return self.search(trials)

    @abstractmethod
    def search(self, trials: Trials) -> Result:
        """Propose, score up to `self.trials` networks, and return `trials.result(...)`."""


class UniformWidth(WidthSearch):
    """The paper's width multiplier: one fraction for every group, the largest meeting every
    budget, found by bisection on the estimators; then that network is fine-tuned."""

    name = "UniformWidth"

    def __init__(self, *, short_term_steps: int = 100, long_term_steps: int = 1000, seed: int = 0,
                 tolerance: float = 1e-3, progress: bool | None = None) -> None:
        super().__init__(trials=1, short_term_steps=short_term_steps, long_term_steps=long_term_steps, seed=seed,
                         progress=progress)
        if not 0 < tolerance < 1:
            raise ConfigError(f"{self.name}: tolerance={tolerance!r} must lie in (0, 1): the bisection stops when the "
                              "multiplier is known to within it (default 1e-3)")
        self.tolerance = tolerance

    def config(self) -> dict[str, Any]:
        return {**super().config(), "tolerance": self.tolerance}

    def search(self, trials: Trials) -> Result:
        net = trials.network
        fraction = self.multiplier(trials)
        widths = net.scaled(fraction).widths
        trials.score([widths])
        return trials.result(self.name, self.long_term_steps)

    def multiplier(self, trials: Trials) -> float:
        """The largest fraction (to `tolerance`) whose scaled network meets every budget."""
        net = trials.network
        if trials.feasible(trials.resources(net.widths)):
            return 1.0
        lo, hi = 0.0, 1.0  # scaled(0) is the smallest network, feasible by check_feasible
        while hi - lo > self.tolerance:
            mid = (lo + hi) / 2
            widths = net.scaled(mid).widths
            resources = trials.resources(widths)
            trials.note(widths, resources)
            lo, hi = (mid, hi) if trials.feasible(resources) else (lo, mid)
        return lo


class RandomSearch(WidthSearch):
    """Random per-group widths on each group's step grid; assignments the estimators reject
    cost no training. Scores `trials` feasible networks and keeps the best."""

    name = "RandomSearch"

    def __init__(self, *, trials: int = 20, short_term_steps: int = 100, long_term_steps: int = 1000, seed: int = 0,
                 executor: Executor | None = None, progress: bool | None = None,
                 max_rejections: int = 1000, batch_size: int = 1) -> None:
        super().__init__(trials=trials, short_term_steps=short_term_steps, long_term_steps=long_term_steps,
                         seed=seed, executor=executor, progress=progress)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"{self.name}: batch_size={batch_size!r} must be an integer >= 1 (feasible assignments "
                              "handed to the executor at once: its worker count, to use them all)")
        self.max_rejections = max_rejections
        self.batch_size = batch_size  # does not change the result: samples do not depend on scores

    def config(self) -> dict[str, Any]:
        return {**super().config(), "max_rejections": self.max_rejections}

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



