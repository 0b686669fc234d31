"""Config to objects: the problem (zoo model, data, constraints, objective) and the strategies a
config file names. The application's; the library's pieces stay usable without it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from netopt.app.config import AdaptConfig, CompareConfig, ConstraintConfig
from netopt.constraints import (
    Constraint,
    EnergyConstraint,
    LatencyConstraint,
    MACsConstraint,
    MemoryConstraint,
    ParamsConstraint,
    ReductionSchedule,
)
from netopt.strategies import Problem, ProgressiveBarrier, RandomSearch, Strategy, UniformWidth
from netopt.strategies.settings import ProgressiveBarrierSettings

__all__ = ["build_problem", "strategy_makers", "make_strategy", "strategy_class"]


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


def make_strategy(config: AdaptConfig) -> Strategy:
    """The strategy the `[strategy]` table names, with its settings and the `[training]` steps."""
    section = config.strategy
    settings = section.model_dump(exclude={"name", "short_term_steps", "long_term_steps"})
    return strategy_class(section.name)(short_term_steps=config.training.short_term_steps,
                                        long_term_steps=config.training.long_term_steps, **settings)


def strategy_class(name: str) -> type[Strategy]:
    """A strategy class by name; OptunaSearch and GeometricProgram import optuna and cvxpy: only when asked for."""
    import netopt.strategies

    return getattr(netopt.strategies, name)  # type: ignore[no-any-return]


def strategy_makers(config: CompareConfig) -> dict[str, Callable[[int | None], Strategy]]:
    """The config's strategies, each built from the search budget (training steps) it is given."""
    t = config.training
    common = {"short_term_steps": t.short_term_steps, "long_term_steps": t.long_term_steps,
              "seed": config.strategy.seed}
    st = config.strategy if isinstance(config.strategy, ProgressiveBarrierSettings) else ProgressiveBarrierSettings()

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
