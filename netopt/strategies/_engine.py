"""The engine every strategy runs on: what strategies do alike, written once.

A strategy only decides which width assignments to try next and what to make of their scores
(the shape of Optuna's ask/tell). The `Engine` does the rest: binds the problem's constraints
and checks that the smallest network can meet them; opens the run directory (or continues a
stopped run there); fine-tunes and scores a batch of proposals on the executor, each with its
own seed, reading back those a stopped run had finished and refusing a resumed run that
proposes otherwise; records every proposal as it is ready, so a kill loses only unfinished
ones; keeps the clock; and finishes the winner (long-term fine-tuning, test score, end-to-end
measurement) into a `Result`.

Budgets hold when measured: where a constraint's estimator measures whole networks (a lookup
table), `verify` measures a strategy's chosen network end to end before it is finished, and
when that misses the budget the estimate met, adds the measurements (the family's and the
chosen one's) to the table's calibration; the strategy then goes on (further iterations,
another choice). An iterative strategy also measures each network it goes on from (`track`),
and one whose estimate strays joins the calibration at once: the estimates that steer the
next iteration are the recalibrated table's. A run directory keeps the calibration its run
started with, every network it added since and every one it tracked, so that a resumed run
estimates each proposal as the stopped one did.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import pickle
import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from tqdm import tqdm

from netopt.constraints import Bound
from netopt.errors import ConfigError, InfeasibleError, LookupTableError, NetoptError, ObjectiveError, first_line
from netopt.measure.base import MEASURED_PASSES, MeasuringEstimator
from netopt.runs import RunDir, RunError
from netopt.strategies._log import RunLog
from netopt.strategies.base import Candidate, Problem, Proposal, Result, check_feasible

if TYPE_CHECKING:
    from torch import nn

    from netopt.bridge import Traced
    from netopt.ir import Network

__all__ = ["Engine", "AtFloor", "Ask", "Told", "Serial", "Clock", "BudgetWarning", "evaluate", "seed_for", "measure",
           "named_failure", "sendable"]

LOG = logging.getLogger("netopt.progress")
TRACKED = 0.05
"""How far an iterative strategy's estimate may stray from its network's measurement before the
table is recalibrated (`Engine.track`): half the ±10% an estimate is held to."""
NEAR = 1.25
"""An iterative strategy measures the networks it goes on from once their estimates come within
this factor of the budget (`Engine.track`)."""
T = TypeVar("T")


class AtFloor(InfeasibleError):
    """No channel group can shrink any further; `holds`: the network meets every budget as measured."""

    def __init__(self, message: str, holds: bool) -> None:
        super().__init__(message)
        self.holds = holds


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

    def __init__(self, bounds: Sequence[Bound]) -> None:
        self.started = time.perf_counter()
        self.objective = 0.0
        self.measured = 0.0
        self.evaluating = 0.0  # wall time the engine waited on proposals (workers side by side count once)
        self.tables = [e for b in bounds if isinstance(e := b.constraint.estimator, MeasuringEstimator)]
        self.table_start = sum(t.measure_seconds for t in self.tables)

    def timings(self) -> dict[str, float]:
        total = time.perf_counter() - self.started
        measurement = self.measured + sum(t.measure_seconds for t in self.tables) - self.table_start
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
    """One run of one strategy on one problem (see the module docstring)."""

    def __init__(self, problem: Problem, config: dict[str, Any], *, short_term_steps: int, seed: int,
                 run_dir: str | Path | None = None, resume: bool = False, executor: Executor | None = None,
                 soft: frozenset[str] = frozenset(), bypass: bool = False) -> None:
        self.problem = problem
        self._calibrations = _pinned(problem, run_dir) if resume and run_dir is not None else {}
        self.bounds = problem.bind()
        self.soft = soft  # budgets a reward turns into targets: they refuse nothing
        check_feasible([b for b in self.bounds if b.resource not in soft], problem.traced.network, bypass,
                       problem.traced)
        self.log = RunLog.open(run_dir, resume, config, problem) if run_dir is not None else None
        if self.log is not None and not self._calibrations:
            self._calibrations = {b.resource: {"points": _table(b).calibration(self.network).points, "added": [],
                                               "tracked": {}} for b in self._measuring()}
            self._save_calibrations()
        self._applied = {r: 0 for r in self._calibrations}  # recorded additions this process has made again
        self.aims: dict[str, float] = {}  # budgets that estimates must meet with a margin (see `aim`)
        self.measured_over: dict[Network, dict[str, float]] = {}
        """Networks measured over a budget: their measured figures replace estimates."""
        self._fresh: dict[tuple[str, Network], float] = {}  # this turn's tracked figures, for `verify`
        self.short_term_steps, self.seed = short_term_steps, seed
        self.executor = executor or Serial()
        if not isinstance(self.executor, (Serial, ThreadPoolExecutor)):
            sendable(problem.objective)
        self.clock = Clock(self.bounds)
        self._logged = self.log.logged() if self.log else {}
        start = self.resources(self.network)
        if all(b.met(start[b.resource]) for b in self.bounds):
            warnings.warn(f"every budget is already met by the starting network ({start}): nothing will shrink; "
                          "give tighter budgets to adapt it", BudgetWarning, stacklevel=3)

    @property
    def network(self) -> Network:
        return self.problem.traced.network

    # --- estimates -----------------------------------------------------------------------------

    def resources(self, network: Network) -> dict[str, float]:
        """Each resource estimated, or as measured where `network` was measured over a budget."""
        estimated = {b.resource: b.estimate(network) for b in self.bounds}
        return {**estimated, **self.measured_over.get(network, {})} if self.measured_over else estimated

    def aim(self, bound: Bound) -> float:
        """What estimates must meet for `bound`: its budget, or less where a network the estimate
        put within budget measured over it and the recalibrated table still estimates it low
        (by the measured / estimated ratio there)."""
        return self.aims.get(bound.resource, bound.budget)

    def targets(self, iteration: int, resources: dict[str, float]) -> dict[str, float]:
        """Eq. 2: each resource still over budget tightened by its schedule for `iteration`; one
        within budget may not rise above it."""
        return {b.resource: b.target(iteration, resources[b.resource], self.aim(b))
                if resources[b.resource] > self.aim(b) else self.aim(b) for b in self.bounds}

    def met(self, resources: dict[str, float]) -> bool:
        """Every budget met by these estimates (an iterative strategy's stopping rule)."""
        return all(resources[b.resource] <= self.aim(b) for b in self.bounds)

    def feasible(self, resources: dict[str, float]) -> bool:
        """Every hard budget met (a soft one, a reward's target, refuses nothing)."""
        return all(resources[b.resource] <= self.aim(b) for b in self.bounds if b.resource not in self.soft)

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
            if isinstance(a, Ask):
                self._check_replay(a.iteration, a.group, a.widths, scored=True)
            else:
                self._check_replay(a.iteration, a.group, a.widths, scored=False)
        reused = {k: found for k, a in enumerate(asks) if isinstance(a, Ask) and (found := self._reused(a)) is not None}
        futures = {k: self.executor.submit(evaluate, a.source, a.changed, self.problem.objective,
                                           self.short_term_steps, a.seed)
                   for k, a in enumerate(asks) if isinstance(a, Ask) and k not in reused}
        bar = _finishing(futures.values(), self.executor)
        told: list[Told | Proposal] = []
        for k, a in enumerate(asks):
            if not isinstance(a, Ask):
                self.note(a)
                told.append(a)
                continue
            if k in reused:
                score, steps, module = reused[k]
            else:
                score, steps, module, seconds = _outcome(futures[k], f"proposal {a.iteration} ({a.group})")
                self.clock.objective += seconds
            proposal = Proposal(a.iteration, a.group, a.widths, a.resources, score, steps)
            if self.log and (a.iteration, a.group) not in self._logged:
                self.log.record(proposal, module)
            told.append(Told(proposal, module))
        if bar is not None:
            bar.close()
        self.clock.evaluating += time.perf_counter() - started
        return told

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

    def finish(self, chosen: Candidate, long_term_steps: int) -> Candidate:
        """Long-term fine-tune a copy of the chosen network, score it on test, measure it end to end."""
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
            self.log.save_final(final, self.problem.traced.example_input())
        return final

    def result(self, strategy: str, final: Candidate, family: list[Candidate], history: list[Proposal],
               training_steps: int) -> Result:
        return self._budgets(Result(final, family, history, training_steps, self.clock.timings(), strategy=strategy,
                                    start=self.network))

    def _budgets(self, result: Result) -> Result:
        """`result` with its budgets, their bases and the measured starts (what over_budget and
        the summary read)."""
        result.budgets = {b.resource: b.budget for b in self.bounds}
        result.basis = {b.resource: b.basis for b in self.bounds}
        result.starts = {b.resource: b.measured_start for b in self.bounds if b.measured_start is not None}
        return result

    # --- budgets as measured -------------------------------------------------------------------

    def _measuring(self) -> list[Bound]:
        return [b for b in self.bounds if b.basis == "measured"]

    def verify(self, candidate: Candidate, members: Sequence[Candidate] = ()) -> dict[str, float]:
        """Measure `candidate` end to end for every budget checked by measurement (taking the
        figure `track` measured this turn, where it did; the figures go in `candidate.measured`);
        for each hard budget it misses, add its measurement and the members' to that table's
        calibration. Returns the missed budgets' measured figures (empty: every budget holds as
        measured)."""
        misses: dict[str, float] = {}
        for b in self._measuring():
            value = self._fresh.pop((b.resource, candidate.network), None)  # tracked this turn: once is enough
            if value is None:
                value = self.measure_now(b, candidate.network)
            candidate.measured[b.resource] = value
            if value > b.budget and b.resource not in self.soft:
                misses[b.resource] = value
                self._recalibrate(b, [*(m.network for m in members), candidate.network], value)
                LOG.info("%s measures %.4g %s against its budget %.4g (estimated %.4g): lookup table recalibrated",
                         b.resource, value, b.unit, b.budget, candidate.resources.get(b.resource, float("nan")))
        if misses:
            self.measured_over[candidate.network] = misses
        return misses

    def measure_now(self, bound: Bound, network: Network) -> float:
        """`network`'s figure for a budget checked by measurement. Against a relative budget it is
        measured now side by side with the start (call by call in turn, in 3 windows, as
        `measure_networks` does) and given as their ratio times the start's measurement at
        binding: the machine's drift between minutes (40-60% within a minute on a busy shared
        CPU) cancels, and "50%" means half the start's time measured under the same load.
        Against an absolute budget, as the table keeps it (at the full network's first level)."""
        table = _table(bound)
        if bound.measured_start is None:
            return table.measured(self.problem.traced, [network])[0].median
        started = time.perf_counter()
        start, now = table.measure_networks(self.problem.traced, [self.network, network], passes=MEASURED_PASSES)
        self.clock.measured += time.perf_counter() - started
        return bound.measured_start * now.median / start.median

    def verified(self, current: Candidate, family: Sequence[Candidate]) -> tuple[Candidate, bool]:
        """(current, True) when `current` meets every budget as measured too; else a copy of it
        whose missed resources are the measured figures (the targets of further iterations start
        there), and False."""
        misses = self.verify(current, family)
        if not misses:
            return current, True
        measured = dataclasses.replace(current, resources={**current.resources, **misses},
                                       measured=dict(current.measured))
        return measured, False

    def settled(self, current: Candidate, family: Sequence[Candidate], bar: tqdm[Any]) -> tuple[Candidate, bool]:
        """An iterative strategy's stopping rule: (current, True) once its estimates meet every
        budget and its measurement too; after a measured miss, the measured copy (`verified`),
        and the bar says so."""
        if not self.met(current.resources):
            return current, False
        current, holds = self.verified(current, family)
        if not holds:
            bar.set_postfix({r: f"measured {v:.4g}/{b:.4g}" for r, (v, b) in self.missed(current).items()})
        return current, holds

    def turn(self, current: Candidate, family: Sequence[Candidate], bar: tqdm[Any], max_iterations: int,
             iterate: Callable[[Candidate], T]) -> tuple[Candidate, T | None]:
        """One turn of an iterative strategy's loop: (current, None) once it is finished (`settled`,
        or at the smallest network within budget as measured); else (current, `iterate(current)`),
        `current` being the measured copy after a measured miss. Past `max_iterations`, or at the
        smallest network over a budget, InfeasibleError."""
        current = self.track(current)
        current, settled = self.settled(current, family, bar)
        if settled:
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

    def track(self, current: Candidate) -> Candidate:
        """The closed loop of an iterative strategy: measure the network it goes on from (after
        the start, once each) for every budget checked by measurement that its estimate puts
        within NEAR of the aim; where the estimate is further than TRACKED from the measurement,
        add the network to the table's calibration (the calibration networks shrink every group
        alike, a strategy's networks do not). The estimates that steer the next iteration are
        then the recalibrated table's. Near the budget they decide where the strategy stops;
        further off an error only moves the schedule's steps, and a measurement (2 s on ONNX
        Runtime for a small network) would buy little. A resumed run does not measure again what
        the stopped one measured: its additions came back with `catch_up`."""
        bounds = self._measuring()
        self._fresh.clear()
        if current.iteration == 0 or not bounds:
            return current
        net = current.network
        for b in bounds:
            record = self._record(b.resource)
            if "tracked" not in record:
                continue  # a run begun before netopt tracked: resumed, it estimates as it began
            tracked, estimated = record["tracked"], b.estimate(net)
            if str(current.iteration) in tracked or estimated > NEAR * self.aim(b):
                continue
            measured = tracked[str(current.iteration)] = self._fresh[(b.resource, net)] = self.measure_now(b, net)
            if abs(measured / max(estimated, 1e-12) - 1) > TRACKED:
                self._recalibrate(b, [net], measured, given=True)
                LOG.info("iteration %d: %s measures %.4g %s, estimated %.4g: lookup table recalibrated",
                         current.iteration, b.resource, measured, b.unit, estimated)
        if self._fresh:  # something was measured: keep its figure (a recalibration kept its own)
            self._save_calibrations()
        estimates = {b.resource: b.estimate(net) for b in bounds}
        return dataclasses.replace(current, resources={**current.resources, **estimates,
                                                       **self.measured_over.get(net, {})},
                                   measured=dict(current.measured))

    def missed(self, current: Candidate) -> dict[str, tuple[float, float]]:
        """(measured, budget) of every budget `current` was measured over."""
        return {b.resource: (current.measured[b.resource], b.budget) for b in self._measuring()
                if b.resource in current.measured and current.measured[b.resource] > b.budget}

    def cannot_shrink(self, current: Candidate, family: Sequence[Candidate]) -> AtFloor:
        """What an iterative strategy raises when no group can shrink any further: `holds` where
        `current` still meets every budget as measured (estimated, for one only estimated), and
        the strategy finishes it; else an InfeasibleError with both figures."""
        estimated = all(current.resources[b.resource] <= b.budget for b in self.bounds if b.basis != "measured")
        holds = bool(self._measuring()) and estimated and not self.verify(current, family)
        figures = "; ".join(
            f"{b.resource} {current.resources[b.resource]:.4g} {b.unit}"
            + (f" (measured {current.measured[b.resource]:.4g})" if b.resource in current.measured else "")
            + f" against {b.budget:.4g}" for b in self.bounds)
        return AtFloor(f"iteration {current.iteration}: no channel group can shrink any further, yet not every budget "
                       f"is met ({figures}); relax them", holds)

    def catch_up(self) -> None:
        """Add again every calibration a stopped run had added (its measurements are in the table):
        an iterative strategy resumes where its estimates stood when it stopped."""
        for b in self._measuring():
            for widths in self._calibrations.get(b.resource, {}).get("added", [])[self._applied.get(b.resource, 0):]:
                self._recalibrate(b, [self.network.with_widths(w) for w in widths])

    def _recalibrate(self, bound: Bound, nets: Sequence[Network], measured: float | None = None,
                     given: bool = False) -> None:
        """Add `nets` (the last: the one that missed, or strayed, measuring `measured`) to the
        table's calibration, `given`: with `measured` as the last one's figure (it was measured
        side by side with the start, so the machine's drift cancels) rather than the table's;
        where the new calibration still estimates that network below its measurement, aim lower
        by that ratio. A resumed run's additions come back with the figures recorded then."""
        table = _table(bound)
        record = self._record(bound.resource)
        done, added, widths = self._applied.get(bound.resource, 0), record["added"], [n.widths for n in nets]
        figures = record.setdefault("verified", [None] * len(added))
        givens = record.setdefault("given", [False] * len(added))
        again = done < len(added) and added[done] == widths  # a stopped run's, made again
        if again:
            measured = figures[done] if measured is None and done < len(figures) else measured
            given = done < len(givens) and givens[done]
        table.recalibrate(self.problem.traced, nets, [*[None] * (len(nets) - 1), measured] if given else None)
        if measured is None:  # recorded before verifications kept their figures
            measured = table.measured(self.problem.traced, [nets[-1]])[0].median
        self.aims[bound.resource] = bound.budget / max(1.0, measured / max(bound.estimate(nets[-1]), 1e-12))
        self._applied[bound.resource] = done + 1
        if again:
            return
        del added[done:], figures[done:], givens[done:]  # a resumed run that went another way from here on
        added.append(widths)
        figures.append(measured)
        givens.append(given)
        self._save_calibrations()

    def _record(self, resource: str) -> dict[str, Any]:
        """The run's calibration record for `resource` (begun empty where the run has none yet)."""
        return self._calibrations.setdefault(resource, {"points": (), "added": [], "tracked": {}})

    def _save_calibrations(self) -> None:
        """The calibration each table started with and the networks added since, in order."""
        if self.log is not None and self._calibrations:
            self.log.run.save_calibrations(self._calibrations)


def _table(bound: Bound) -> MeasuringEstimator:
    """A budget checked by measurement: its estimator measures (a lookup table)."""
    assert isinstance(bound.constraint.estimator, MeasuringEstimator), bound
    return bound.constraint.estimator


def _pinned(problem: Problem, run_dir: str | Path) -> dict[str, Any]:
    """A resumed run's record of calibrations, its starting ones pinned on their tables."""
    record = RunDir(run_dir).calibrations() if Path(run_dir).is_dir() else {}
    try:
        for c in problem.constraints:
            if c.resource in record and isinstance(c.estimator, MeasuringEstimator):
                points = [tuple(float(v) for v in p) for p in record[c.resource]["points"]]
                if not points or not all(isinstance(w, dict) for step in record[c.resource]["added"] for w in step):
                    raise ValueError("no calibration points" if not points else "added networks are not widths")
                if not all(v is None or isinstance(v, float | int) for v in record[c.resource].get("verified", [])):
                    raise ValueError("verified figures are not numbers")
                if not all(isinstance(v, float | int) for v in record[c.resource].get("tracked", {}).values()):
                    raise ValueError("tracked figures are not numbers")
                if not all(isinstance(v, bool) for v in record[c.resource].get("given", [])):
                    raise ValueError("given flags are not true or false")
                c.estimator.pin(problem.traced.network, points)
    except (AttributeError, KeyError, TypeError, ValueError, LookupTableError) as exc:
        raise RunError(f"{Path(run_dir) / RunDir.CALIBRATIONS} is damaged ({first_line(exc, 80)}); it holds the "
                       "calibrations the run estimated with: restore it, or start a new run") from None
    return record
