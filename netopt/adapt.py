"""The main job, from an `AdaptConfig`: build the problem, adapt, report. The CLI and the
examples call this; the library pieces stay usable on their own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from netopt.config import AdaptConfig, CompareConfig, ConstraintConfig
from netopt.constraints import (
    Constraint,
    EnergyConstraint,
    LatencyConstraint,
    MACsConstraint,
    MemoryConstraint,
    ParamsConstraint,
    ReductionSchedule,
)
from netopt.measure.base import MeasuringEstimator
from netopt.strategies import Problem, ProgressiveBarrier, RandomSearch, Result, Strategy, UniformWidth

if TYPE_CHECKING:
    from netopt.compare import Comparison

__all__ = ["build_problem", "adapt", "measure_family", "summary", "compare", "strategy_makers"]


def _constraint(c: ConstraintConfig, config: AdaptConfig, traced: object) -> Constraint:
    schedule = ReductionSchedule(c.schedule.initial, c.schedule.decay)
    if c.resource == "latency":
        from netopt.lut import LookupTable
        from netopt.measure import OnnxRuntimeCPU

        Path(config.lut.path).parent.mkdir(parents=True, exist_ok=True)
        lut = LookupTable.open(config.lut.path, OnnxRuntimeCPU(threads=config.lut.threads))
        if lut.calibration(traced.network) is None:  # type: ignore[attr-defined]
            lut.calibrate(traced)  # type: ignore[arg-type]
        return LatencyConstraint(c.budget, lut, schedule)
    if c.resource == "energy":
        from netopt.measure.energy import EnergyModel

        return EnergyConstraint(c.budget, EnergyModel(), schedule)
    if c.resource == "memory":
        from netopt.measure.memory import MemoryModel

        return MemoryConstraint(c.budget, MemoryModel(), schedule)
    maker = MACsConstraint if c.resource == "macs" else ParamsConstraint
    return maker(c.budget, schedule=schedule)


def build_problem(config: AdaptConfig) -> Problem:
    """Pretrained zoo model (cached), its data splits, the constraints, the accuracy objective."""
    import netopt
    from netopt.objectives import Accuracy, Trainer
    from netopt.zoo.pretrained import pretrained_mnist

    m, d = config.model, config.data
    model, data = pretrained_mnist(width=m.width, size=m.size, steps=m.pretrain_steps, seed=d.seed,
                                   holdout_per_class=d.holdout_per_class, test_fraction=d.test_fraction)
    traced = netopt.trace(model, data.train_x[:1])
    constraints = [_constraint(c, config, traced) for c in config.constraints]
    trainer = Trainer(lr=config.training.lr, batch_size=config.training.batch_size)
    return Problem(traced, constraints, Accuracy(data, trainer))


def adapt(config: AdaptConfig, resume: bool = False) -> Result:
    """Run (or resume) the adaptation the config describes, and write its plots."""
    from netopt.report import plot_family, plot_widths

    torch.set_num_threads(1)
    problem = build_problem(config)
    strategy = ProgressiveBarrier(short_term_steps=config.training.short_term_steps,
                                  long_term_steps=config.training.long_term_steps,
                                  selection=config.strategy.selection, seed=config.strategy.seed,
                                  max_iterations=config.strategy.max_iterations, block_size=config.strategy.block_size)
    result = strategy.run(problem, run_dir=config.run_dir, resume=resume)
    measure_family(problem, result)
    first = problem.constraints[0]
    plot_family(result, first.resource, Path(config.run_dir) / f"accuracy_vs_{first.resource}.png",
                f"{first.unit}, estimated")
    plot_widths(result, Path(config.run_dir) / "widths.png")
    return result


def measure_family(problem: Problem, result: Result) -> None:
    """Measure every family member end to end, side by side, on each lookup table's backend,
    so the summary shows each iteration's measured figure beside its estimate."""
    for c in problem.constraints:
        if not isinstance(c.estimator, MeasuringEstimator):
            continue
        measured = c.estimator.measure_networks(problem.traced, [m.network for m in result.family])
        for member, m in zip(result.family, measured, strict=True):
            member.measured[c.resource] = m.median


def summary(result: Result) -> str:
    """A table per iteration (chosen group, each resource, holdout accuracy) and the final figures."""
    resources = list(result.family[0].resources)
    measured = [r for r in resources if r in result.family[0].measured]
    chosen = {p.iteration + 1: p.group for p in result.history if p.chosen}
    head = ("| iteration | chosen group -> width | " + " | ".join(f"{r} (est.)" for r in resources) + " | "
            + "".join(f"{r} (measured) | " for r in measured) + "holdout acc. |")
    lines = [head, "|" + "---|" * (len(resources) + len(measured) + 3)]
    for c in result.family:
        values = " | ".join([*(f"{c.resources[r]:.4g}" for r in resources),
                             *(f"{c.measured[r]:.4g}" for r in measured)])
        group = chosen.get(c.iteration)
        change = "-" if not group else ", ".join(f"{g} -> {c.network.widths[g]}" for g in group.split("+"))
        lines.append(f"| {c.iteration} | {change} | {values} | {c.accuracy:.3f} |")
    f = result.final
    figures = ", ".join(f"{r} measured {v:.4g} (estimated {f.resources[r]:.4g})" for r, v in f.measured.items())
    lines.append(f"\nfinal network: holdout {f.accuracy:.3f}, test {f.test_accuracy:.3f}; {figures}")
    lines.append(f"{len(result.history)} proposals, {result.training_steps} training steps")
    t = result.timings
    if t:
        lines.append(f"this session's wall time {t['total']:.0f} s: training and evaluation "
                     f"{t['training_and_evaluation']:.0f} s, measurement {t['measurement']:.0f} s, "
                     f"netopt's own work {t['framework']:.1f} s ({result.framework_share:.1%})")
    return "\n".join(lines)


def strategy_makers(config: CompareConfig) -> dict[str, Callable[[int | None], Strategy]]:
    """The config's strategies, each built from the search budget (training steps) it is given."""
    t, st = config.training, config.strategy
    common = {"short_term_steps": t.short_term_steps, "long_term_steps": t.long_term_steps, "seed": st.seed}

    def trials(steps: int | None) -> int:
        """Networks a searching strategy may fine-tune for `steps` short-term training steps: the
        nearest whole number, at least one (a search must score something); with no steps to
        match (ProgressiveBarrier not run, or failed) or no short-term training, 20."""
        if steps is None or t.short_term_steps == 0:
            return 20
        return max(1, round(steps / t.short_term_steps))

    makers: dict[str, Callable[[int | None], Strategy]] = {
        "ProgressiveBarrier": lambda _: ProgressiveBarrier(  # its steps follow its schedules, not a budget
            selection=st.selection, max_iterations=st.max_iterations, block_size=st.block_size,
            **common),  # type: ignore[arg-type]
        "UniformWidth": lambda _: UniformWidth(**common),  # type: ignore[arg-type]
        "RandomSearch": lambda n: RandomSearch(trials=trials(n), **common),  # type: ignore[arg-type]
        "OptunaTPE": lambda n: _optuna("tpe", trials(n), common),
        "OptunaNSGA2": lambda n: _optuna("nsga2", trials(n), common),
        "GeometricProgram": lambda _: _geometric(common),
    }
    return {name: makers[name] for name in config.compare.strategies}


def _optuna(sampler: str, trials: int, common: dict[str, int]) -> Strategy:
    from netopt.strategies.optuna_search import OptunaSearch  # imports optuna: only when asked for

    return OptunaSearch(sampler=sampler, trials=trials, **common)  # type: ignore[arg-type]


def _geometric(common: dict[str, int]) -> Strategy:
    from netopt.strategies.geometric import GeometricProgram  # imports cvxpy: only when asked for

    return GeometricProgram(**common)  # type: ignore[arg-type]


def compare(config: CompareConfig, resume: bool = False) -> Comparison:
    """Run the config's strategies at its budgets on one problem; see netopt.compare."""
    from netopt.compare import compare as run

    torch.set_num_threads(1)
    problem = build_problem(config)
    c = config.compare
    return run(problem, c.budgets, strategy_makers(config), config.run_dir,
               long_term_steps=config.training.long_term_steps, search_steps=c.search_steps, resume=resume,
               progress=lambda line: print(f"-- {line}", flush=True))
