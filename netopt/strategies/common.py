"""What every strategy does alike: evaluate a width assignment, keep time, finish the winner.

Kept in one place so that strategies differ only in how they choose widths: the same
fine-tuning, the same scoring, the same end-to-end measurement, the same bookkeeping.
"""

from __future__ import annotations

import copy
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any

import torch

from netopt.constraints import Bound
from netopt.measure.base import MeasuringEstimator
from netopt.strategies.base import Candidate, Problem

if TYPE_CHECKING:
    from torch import nn

    from netopt.bridge import Traced
    from netopt.objectives.base import Objective
    from netopt.strategies.log import _Log

__all__ = ["evaluate", "Serial", "Clock", "seed_for", "finish", "measure"]


def evaluate(traced: Traced, widths: dict[str, int], objective: Objective, steps: int,
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


def measure(bounds: Sequence[Bound], module: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """End-to-end figures from every constraint whose estimator can measure (a lookup table's backend)."""
    return {b.resource: b.constraint.estimator.measure_module(module, x).median
            for b in bounds if isinstance(b.constraint.estimator, MeasuringEstimator)}


class Clock:
    """Wall time by kind: the objective's (training and evaluation), measurement, and all."""

    def __init__(self, bounds: Sequence[Bound]) -> None:
        self.started = time.perf_counter()
        self.objective = 0.0
        self.measured = 0.0
        self.tables = [e for b in bounds if isinstance(e := b.constraint.estimator, MeasuringEstimator)]
        self.table_start = sum(t.measure_seconds for t in self.tables)

    def timings(self) -> dict[str, float]:
        total = time.perf_counter() - self.started
        measurement = self.measured + sum(t.measure_seconds for t in self.tables) - self.table_start
        return {"total": total, "training_and_evaluation": self.objective, "measurement": measurement,
                "framework": max(total - self.objective - measurement, 0.0)}


def finish(problem: Problem, bounds: Sequence[Bound], chosen: Candidate, long_term_steps: int, seed: int,
           clock: Clock, log: _Log | None = None) -> Candidate:
    """Long-term fine-tune a copy of the chosen network, score it on test, measure it end to end."""
    if log and log.has_final():
        return log.final(problem)
    module = copy.deepcopy(chosen.module)  # the family keeps the chosen network as it was
    final = Candidate(chosen.iteration, chosen.network, module, chosen.accuracy, chosen.resources)
    started = time.perf_counter()
    if long_term_steps:
        final.accuracy = problem.objective.long_term(final.module, long_term_steps, seed).score
    final.test_accuracy = problem.objective.test(final.module)
    measuring = time.perf_counter()
    clock.objective += measuring - started
    final.measured = measure(bounds, final.module, problem.traced.example_input())
    clock.measured += time.perf_counter() - measuring
    if log:
        log.save_final(final, problem.traced.example_input())
    return final
