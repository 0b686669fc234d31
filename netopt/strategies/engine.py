"""The engine every strategy runs on: what strategies do alike, written once.

A strategy only decides which width assignments to try next and what to make of their scores
(the shape of Optuna's ask/tell). The `Engine` does the rest: binds the problem's constraints
and checks that the smallest network can meet them; opens the run directory (or continues a
stopped run there); fine-tunes and scores a batch of proposals on the executor, each with its
own seed, reading back those a stopped run had finished and refusing a resumed run that
proposes otherwise; records every proposal as it is ready, so a kill loses only unfinished
ones; keeps the clock; and finishes the winner (long-term fine-tuning, test score, end-to-end
measurement) into a `Result`. Budgets checked by measurement are `engine.budgets`
(`netopt.strategies.budgets.MeasuredBudgets`); the loop of an iterative strategy is
`netopt.strategies.iterative.Iterative`.
"""

from __future__ import annotations

import copy
import logging
import pickle
import time
import warnings
import zlib
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from netopt.constraints import Bound
from netopt.errors import ConfigError, NetoptError, ObjectiveError, first_line
from netopt.measure.base import MeasuringEstimator
from netopt.runs import RunError
from netopt.strategies._log import RunLog
from netopt.strategies.base import Candidate, Landing, Problem, Proposal, Result, check_feasible
from netopt.strategies.budgets import MeasuredBudgets, read_record
from netopt.strategies.decisive import Decisive

if TYPE_CHECKING:
    from torch import nn

    from netopt.bridge import Traced
    from netopt.ir import Network

__all__ = ["Engine", "Ask", "Told", "Serial", "Clock", "BudgetWarning", "evaluate", "seed_for", "measure",
           "named_failure", "sendable"]

LOG = logging.getLogger("netopt.progress")


class BudgetWarning(UserWarning):
    """Budgets that will not make the strategy do anything (already met at the start)."""


def evaluate(traced: Traced, widths: dict[str, int], objective: Any, steps: int,
             seed: int) -> tuple[float, int, nn.Module, float]:
    """Materialize, fine-tune for `steps`, score on holdout; also the seconds the objective took.
    Top-level, so that it runs in worker processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one worker, one core: workers side by side do not oversubscribe
    try:
        module = traced.materialize(traced.network.with_widths(widths))
        started = time.perf_counter()
        evaluation = objective.short_term(module, steps, seed)
        return evaluation.score, evaluation.steps, module, time.perf_counter() - started
    finally:
        torch.set_num_threads(threads)  # the caller's own setting, when run in its process


def sendable(objective: Any) -> None:
    """Refuse, before any work, an objective that cannot be pickled to worker processes."""
    check = getattr(objective, "check_sendable", None)
    if callable(check):
        check()  # names the function that cannot travel
    try:
        pickle.dumps(objective)
    except Exception as exc:
        raise ConfigError(f"the objective {type(objective).__name__} cannot be sent to worker processes "
                          f"({first_line(exc, 160)}); make what it holds picklable (top-level functions, no open "
                          "files), or run without a process pool") from None


def _finishing(futures: Iterable[Future[Any]], executor: Executor) -> tqdm[Any] | None:
    """A bar counting proposals as workers finish them, in any order (none for one in-process evaluation)."""
    pending = list(futures)
    if len(pending) < 2 or isinstance(executor, Serial):
        return None
    bar = tqdm(total=len(pending), desc="proposals", unit="proposal", leave=False, disable=None)
    for future in pending:
        future.add_done_callback(lambda _: bar.update())
    return bar


def _outcome(future: Future[Any], what: str) -> Any:
    """A future's result; an objective's failure as one ObjectiveError line that says which proposal."""
    with named_failure(what):
        return future.result()


@contextmanager
def named_failure(what: str) -> Iterator[None]:
    """An objective's failure inside, as one ObjectiveError line prefixed by what was being evaluated."""
    try:
        yield
    except ObjectiveError as exc:
        raise ObjectiveError(f"{what}: {exc}") from exc
    except NetoptError:
        raise
    except Exception as exc:
        raise ObjectiveError(f"{what}: the objective raised {type(exc).__name__}: {first_line(exc, 200)}; fix it and "
                             "resume the run") from exc


class Serial(Executor):
    """Runs each task at once in this process (the default, and the reference for workers)."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


def seed_for(seed: int, *parts: object) -> int:
    """A proposal's own seed: the same whichever worker evaluates it, in whatever order."""
    return zlib.crc32(":".join(map(str, (seed, *parts))).encode())


def measure(bounds: Sequence[Bound], traced: Traced, network: Network) -> dict[str, float]:
    """End-to-end figures of `network` (materialized from `traced`) from every constraint whose
    estimator can measure (a lookup table's backend), as the table keeps them."""
    return {b.resource: b.constraint.estimator.measured(traced, [network])[0].median
            for b in bounds if isinstance(b.constraint.estimator, MeasuringEstimator)}


class Clock:
    """Wall time by kind: the objective's (training and evaluation), measurement, and all."""

    def __init__(self, bounds: Sequence[Bound], budgets: MeasuredBudgets) -> None:
        self.started = time.perf_counter()
        self.objective = 0.0
        self.budgets = budgets  # measures side by side, on its own clock
        self.evaluating = 0.0  # wall time the engine waited on proposals (workers side by side count once)
        self.tables = [e for b in bounds if isinstance(e := b.constraint.estimator, MeasuringEstimator)]
        self.table_start = sum(t.measure_seconds for t in self.tables)

    def timings(self) -> dict[str, float]:
        total = time.perf_counter() - self.started
        measurement = self.budgets.seconds + sum(t.measure_seconds for t in self.tables) - self.table_start
        return {"total": total, "training_and_evaluation": self.objective, "measurement": measurement,
                "framework": max(total - self.objective - measurement, 0.0), "proposal_evaluation": self.evaluating}


@dataclass(frozen=True)
class Ask:
    """One proposal to fine-tune and score.

    `widths` are every group's widths in the original network's terms (what is recorded and
    estimated); `changed` the widths it sets on `source`, the network it is materialized from
    (the start, or NetAdapt's Net_{i-1} with its fine-tuned weights)."""

    iteration: int
    group: str
    widths: dict[str, int]
    resources: dict[str, float]
    source: Traced
    changed: dict[str, int]
    seed: int


@dataclass(frozen=True)
class Told:
    """A scored proposal: its score on the holdout split, the steps it took, its weights."""

    proposal: Proposal
    module: nn.Module


class Engine:
    """One run of one strategy on one problem (see the module docstring).

    `budgets` are the problem's bound constraints as the strategy sees them (estimated, and
    corrected where measured); `log` the run directory's record (None without one);
    `stacklevel` points a warning about the budgets at the caller of the strategy's `run`."""

    def __init__(self, problem: Problem, config: dict[str, Any], *, short_term_steps: int, seed: int,
                 run_dir: str | Path | None = None, resume: bool = False, executor: Executor | None = None,
                 soft: frozenset[str] = frozenset(), bypass: bool = False, stacklevel: int = 3) -> None:
        self.problem = problem
        record = read_record(problem, run_dir) if resume and run_dir is not None else {}  # pinned before binding
        self.bounds = problem.bind()
        self.soft = soft  # budgets a reward turns into targets: they refuse nothing
        check_feasible([b for b in self.bounds if b.resource not in soft], problem.traced.network, bypass,
                       problem.traced)
        self.log = RunLog.open(run_dir, resume, config, problem) if run_dir is not None else None
        most = config.get("most_rounds") or Decisive().most
        self.budgets = MeasuredBudgets(problem, self.bounds, record, self.log.run if self.log else None, soft,
                                       Decisive(most=most, rounds=min(Decisive().rounds, most)))
        self.short_term_steps, self.seed = short_term_steps, seed
        self.executor = executor or Serial()
        if not isinstance(self.executor, (Serial, ThreadPoolExecutor)):
            sendable(problem.objective)
        self.clock = Clock(self.bounds, self.budgets)
        self._logged = self.log.logged() if self.log else {}
        start = self.budgets.resources(self.network)
        if all(b.met(start[b.resource]) for b in self.bounds):
            warnings.warn(f"every budget is already met by the starting network ({start}): nothing will shrink; "
                          "give tighter budgets to adapt it", BudgetWarning, stacklevel=stacklevel)

    @property
    def network(self) -> Network:
        return self.problem.traced.network

    # --- proposals -----------------------------------------------------------------------------

    def note(self, proposal: Proposal) -> None:
        """Record a proposal that is only estimated (refused by a budget, or a probe)."""
        self._check_replay(proposal.iteration, proposal.group, proposal.widths, scored=False)
        if self.log and (proposal.iteration, proposal.group) not in self._logged:
            self.log.record(proposal, None)

    def evaluate(self, asks: Sequence[Ask | Proposal]) -> list[Told | Proposal]:
        """Fine-tune and score every ask on the executor (those a stopped run finished are read
        back instead), and record each, in order, as it is ready; a `Proposal` among them is a
        note (estimated only), recorded in its place."""
        started = time.perf_counter()
        for a in asks:
            self._check_replay(a.iteration, a.group, a.widths, scored=isinstance(a, Ask))
        reused = {k: found for k, a in enumerate(asks) if isinstance(a, Ask) and (found := self._reused(a)) is not None}
        futures = {k: self.executor.submit(evaluate, a.source, a.changed, self.problem.objective,
                                           self.short_term_steps, a.seed)
                   for k, a in enumerate(asks) if isinstance(a, Ask) and k not in reused}
        bar = _finishing(futures.values(), self.executor)
        told = [self._told(k, a, reused, futures) for k, a in enumerate(asks)]
        if bar is not None:
            bar.close()
        self.clock.evaluating += time.perf_counter() - started
        return told

    def _told(self, k: int, a: Ask | Proposal, reused: dict[int, tuple[float, int, nn.Module]],
              futures: dict[int, Future[Any]]) -> Told | Proposal:
        """The k-th ask's outcome (read back, or from its future), recorded; a note recorded as it is."""
        if not isinstance(a, Ask):
            self.note(a)
            return a
        if k in reused:
            score, steps, module = reused[k]
        else:
            score, steps, module, seconds = _outcome(futures[k], f"proposal {a.iteration} ({a.group})")
            self.clock.objective += seconds
        proposal = Proposal(a.iteration, a.group, a.widths, a.resources, score, steps)
        if self.log and (a.iteration, a.group) not in self._logged:
            self.log.record(proposal, module)
        return Told(proposal, module)

    def score(self, asks: Sequence[Ask]) -> list[Told]:
        """`evaluate` for a batch of asks only."""
        return [t for t in self.evaluate(asks) if isinstance(t, Told)]

    def _reused(self, a: Ask) -> tuple[float, int, nn.Module] | None:
        record = self._logged.get((a.iteration, a.group))
        weights = self.log.weights(a.iteration, a.group) if self.log and record and record["score"] is not None \
            else None
        if record is None or weights is None:
            return None
        module = a.source.materialize(a.source.network.with_widths(a.changed))
        module.load_state_dict(weights)
        return record["score"], record["steps"], module

    def _check_replay(self, iteration: int, group: str, widths: dict[str, int], scored: bool) -> None:
        """A resumed run must propose what the stopped one did; anything else is refused."""
        record = self._logged.get((iteration, group))
        if record is not None and (record["widths"], record["score"] is not None) != (widths, scored):
            was = " scored" if record["score"] is not None else ""
            raise RunError(
                f"proposal {iteration} ({group}) differs from the one logged in "
                f"{self.log.run.path if self.log else '?'} ({widths}{' scored' if scored else ''} vs "
                f"{record['widths']}{was}): the settings or the estimators changed since the run stopped; "
                "resume with the same ones, or start a new run")

    def start_score(self, module: nn.Module) -> float:
        """The starting network's holdout score, without training."""
        started = time.perf_counter()
        with named_failure("the starting network"):
            score = self.problem.objective.short_term(module, 0, self.seed).score
        self.clock.objective += time.perf_counter() - started
        return float(score)

    # --- the end -------------------------------------------------------------------------------

    def finished(self, strategy: str) -> Result | None:
        """A run that had finished before: its result, read back whole."""
        if not (self.log and self.log.has_final()):
            return None
        return self._budgets(self.log.result(self.problem, strategy))

    def save_member(self, member: Candidate, group: str | None) -> None:
        if self.log:
            self.log.save_member(member, group)

    def finish(self, chosen: Candidate, long_term_steps: int, landing: Landing | None = None) -> Candidate:
        """Long-term fine-tune a copy of the chosen network, score it on test, measure it end to end
        (an iterative strategy's `landing` is kept with it)."""
        if self.log and self.log.has_final():
            return self.log.final(self.problem)
        module = copy.deepcopy(chosen.module)  # the family keeps the chosen network as it was
        final = Candidate(chosen.iteration, chosen.network, module, chosen.accuracy, chosen.resources)
        started = time.perf_counter()
        with named_failure("the final network's long-term fine-tuning and test"):
            if long_term_steps:
                final.accuracy = self.problem.objective.long_term(final.module, long_term_steps, self.seed).score
            final.test_accuracy = self.problem.objective.test(final.module)
        self.clock.objective += time.perf_counter() - started
        # a budget verified by measurement keeps its verification's figure; the rest are measured
        # here (the table's clock counts them)
        unverified = [b for b in self.bounds if b.resource not in chosen.measured]
        final.measured = {**measure(unverified, self.problem.traced, final.network), **chosen.measured}
        if self.log:
            self.log.save_final(final, self.problem.traced.example_input(), landing)
        return final

    def result(self, strategy: str, final: Candidate, family: list[Candidate], history: list[Proposal],
               training_steps: int, landing: Landing | None = None) -> Result:
        return self._budgets(Result(final, family, history, training_steps, self.clock.timings(), strategy=strategy,
                                    start=self.network, landing=landing))

    def _budgets(self, result: Result) -> Result:
        """`result` with its budgets, their bases and the measured starts (what over_budget and
        the summary read)."""
        result.budgets = {b.resource: b.budget for b in self.bounds}
        result.basis = {b.resource: b.basis for b in self.bounds}
        result.starts = {b.resource: b.measured_start for b in self.bounds if b.measured_start is not None}
        return result
