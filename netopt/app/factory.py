"""Config to objects: the problem (zoo model, data, constraints, objective) and the strategies a
config file names. The application's; the library's pieces stay usable without it."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from netopt.app.config import AdaptConfig, CompareConfig, ConstraintConfig
from netopt.constraints import Constraint, ReductionSchedule
from netopt.constraints.registry import CONSTRAINTS, EstimatorSources
from netopt.errors import ConfigError, first_line
from netopt.measure.precision import REPRESENTATIVE_BATCHES
from netopt.objectives.base import Evaluation, Objective
from netopt.strategies import Problem, Strategy
from netopt.strategies.registry import STRATEGIES, StrategyEntry, Variant, variants

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["build_problem", "strategy_makers", "make_strategy", "strategy_class", "load_callable", "own_model",
           "own_objective", "ConfigObjective"]


def _constraint(c: ConstraintConfig, config: AdaptConfig, objective: Objective | None = None,
                opaque: Mapping[str, nn.Module] | None = None) -> Constraint:
    """The registered resource's constraint, its estimator built from the `[lut]` table's values
    (an int8 table quantizes on the objective's training inputs; the traced model's `opaque`
    blocks are priced as units of their own)."""
    lut = config.lut
    inputs = (lambda: _representative(objective, config.data.seed)) if objective is not None else None
    sources = EstimatorSources(lut_path=lut.path, backend=lut.backend, threads=lut.threads,
                               calibration=lut.calibration, precision=lut.precision, representative=inputs,
                               opaque=opaque, frozen=lut.frozen)
    schedule = ReductionSchedule(c.schedule.initial, c.schedule.decay)
    return CONSTRAINTS[c.resource].make(c.budget, schedule, sources, c.basis)  # binding a latency one calibrates


def _representative(objective: Objective, seed: int) -> list[torch.Tensor] | None:
    """An int8 table's representative inputs: the objective's training inputs (None where it gives
    none, which the backend refuses in one line)."""
    try:
        return objective.training_inputs(REPRESENTATIVE_BATCHES, seed)
    except NotImplementedError:
        return None


def build_problem(config: AdaptConfig, workers: bool = False) -> Problem:
    """The model (your factory's and checkpoint, or the zoo's pretrained one), the objective (your
    factory's, or accuracy on the bundled digits), the constraints. With `workers`, the objective
    is a `ConfigObjective`: it travels to worker processes as the config and is built there."""
    import netopt
    from netopt.zoo.pretrained import pretrained_mnist

    m, d = config.model, config.data
    objective = own_objective(config) if config.objective.factory is not None else None
    if m.factory is not None:
        model = own_model(config)
        example = _example_input(config, objective)
    else:
        model, data = pretrained_mnist(width=m.width, size=m.size, steps=m.pretrain_steps, seed=d.seed,
                                       holdout_per_class=d.holdout_per_class, test_fraction=d.test_fraction)
        example = data.train_x[:1]
        objective = objective or _digits_objective(config, data)
    traced = netopt.trace(model, example)
    constraints = [_constraint(c, config, objective, traced.opaque) for c in config.constraints]
    assert objective is not None  # the config requires objective.factory with model.factory
    return Problem(traced, constraints, ConfigObjective(config, objective) if workers else objective)


def _digits_objective(config: AdaptConfig, data: Any = None) -> Objective:
    """Accuracy on the bundled digits, split as the pretrained model's were, with `[training]`'s trainer."""
    from netopt.data import mnist
    from netopt.objectives import Accuracy, Trainer

    m, d, t = config.model, config.data, config.training
    if data is None:
        data = mnist(holdout_per_class=d.holdout_per_class, test_fraction=d.test_fraction, seed=d.seed, size=m.size)
    return Accuracy(data, Trainer(lr=t.lr, batch_size=t.batch_size, device=t.device, amp=t.amp))


_BUILT: dict[str, Objective] = {}
"""The objectives ConfigObjectives have built in this process, by config."""


_OBJECTIVE_PARTS = {"model", "data", "training", "objective"}
"""The tables an objective is built from (the model's, for the digits' size)."""


class ConfigObjective(Objective):
    """The objective a config describes, built where it is used.

    It pickles as the config alone (its `[objective]` factory and options, or the bundled digits'
    settings), and a worker process builds the objective once from it: your data loaders open on
    the worker instead of travelling with their tensors, and the factory's module must import
    there. In the process that made it, it is the objective already built."""

    def __init__(self, config: AdaptConfig, built: Objective | None = None) -> None:
        self.key = config.model_dump_json(include=_OBJECTIVE_PARTS)
        if built is not None:
            _BUILT.setdefault(self.key, built)

    def __getstate__(self) -> dict[str, Any]:
        return {"key": self.key}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.key = state["key"]

    @property
    def built(self) -> Objective:
        found = _BUILT.get(self.key)
        if found is None:
            config = AdaptConfig.model_validate_json(self.key)
            found = _BUILT[self.key] = own_objective(config) if config.objective.factory else _digits_objective(config)
        return found

    def short_term(self, module: nn.Module, steps: int, seed: int) -> Evaluation:
        return self.built.short_term(module, steps, seed)

    def long_term(self, module: nn.Module, steps: int, seed: int) -> Evaluation:
        return self.built.long_term(module, steps, seed)

    def test(self, module: nn.Module) -> float | None:
        return self.built.test(module)

    def training_inputs(self, batches: int, seed: int) -> list[torch.Tensor]:
        return self.built.training_inputs(batches, seed)

    def example_input(self) -> torch.Tensor:
        return self.built.example_input()

    def __getattr__(self, name: str) -> Any:  # what the built objective has besides (its data, its trainer)
        if name.startswith("__") or name == "key":
            raise AttributeError(name)
        return getattr(self.built, name)


def load_callable(spec: str, field: str) -> Callable[..., Any]:
    """The callable a "package.module:callable" names, imported from the working folder, the
    config's folder or PYTHONPATH; or one ConfigError line naming the module or the attribute."""
    module_name, _, attribute = spec.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # `netopt` as a console script does not import from the working folder
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(f"{field} {spec!r}: module {module_name!r} does not import ({type(exc).__name__}: "
                          f"{first_line(exc, 160)}); put it in the working folder, beside the config file or on "
                          "PYTHONPATH") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"{field} {spec!r}: module {module_name!r} has no attribute {part!r}; give an existing "
                              "function or class after the colon")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"{field} {spec!r} is a {type(target).__name__}, not callable; name a function or class")
    return target  # type: ignore[no-any-return]


def _called(spec: str, field: str, options: dict[str, Any]) -> Any:
    fn = load_callable(spec, field)
    try:
        return fn(**options)
    except Exception as exc:
        raise ConfigError(f"{field} {spec!r} raised {type(exc).__name__}: {first_line(exc, 200)}; fix it, or its "
                          f"options {options}") from None


def own_model(config: AdaptConfig) -> nn.Module:
    """`model.factory(**model.options)`, with `model.checkpoint` loaded into it, in eval mode."""
    from torch import nn

    m = config.model
    assert m.factory is not None
    model = _called(m.factory, "model.factory", m.options)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.factory {m.factory!r} returned a {type(model).__name__}, not a torch.nn.Module; "
                          "return the model itself")
    if m.checkpoint is not None:
        _load_checkpoint(model, m.checkpoint, m.factory)
    return model.eval()


def _load_checkpoint(model: nn.Module, path: str, factory: str) -> None:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"model.checkpoint {path} does not exist; give the file torch.save(model.state_dict(), "
                          "path) wrote") from None
    except IsADirectoryError:
        raise ConfigError(f"model.checkpoint {path} is a directory; give the state_dict file") from None
    except Exception as exc:
        raise ConfigError(f"model.checkpoint {path} is not a state_dict torch can load with weights_only=True "
                          f"({type(exc).__name__}: {first_line(exc, 120)}); save model.state_dict() with torch.save"
                          ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a training checkpoint that holds it
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"model.checkpoint {path} holds a {type(state).__name__}, not a state_dict of tensors; save "
                          "model.state_dict() with torch.save")
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = [f"{len(keys)} {what} key(s), the first {keys[0]!r}" for what, keys in
                 (("missing", missing), ("unexpected", unexpected)) if keys]
        raise ConfigError(f"model.checkpoint {path} does not fit {factory} ({'; '.join(parts)}); give the checkpoint "
                          "of this architecture and options")
    wrong = [(k, tuple(v.shape), tuple(expected[k].shape)) for k, v in state.items() if v.shape != expected[k].shape]
    if wrong:
        key, got, want = wrong[0]
        raise ConfigError(f"model.checkpoint {path}: {key} has shape {got} but {factory} makes {want} ({len(wrong)} "
                          "tensor(s) differ); give the checkpoint of this architecture and options")
    model.load_state_dict(state)


def own_objective(config: AdaptConfig) -> Objective:
    """`objective.factory(**objective.options)`: a netopt Objective."""
    from netopt.objectives import Objective

    spec = config.objective.factory
    assert spec is not None
    objective = _called(spec, "objective.factory", config.objective.options)
    if not isinstance(objective, Objective):
        raise ConfigError(f"objective.factory {spec!r} returned a {type(objective).__name__}, not a netopt Objective; "
                          "return e.g. netopt.FunctionObjective(fine_tune, score) or netopt.Accuracy.from_loaders(...)")
    return objective


def _example_input(config: AdaptConfig, objective: Objective | None) -> torch.Tensor:
    """A batch-1 input: zeros of `model.input_shape`, else the objective's example input."""
    import torch

    shape = config.model.input_shape
    if shape is not None:
        return torch.zeros(shape)
    try:
        assert objective is not None
        return objective.example_input()
    except NotImplementedError:
        raise ConfigError("model.input_shape is not given and the objective has no example input; give "
                          "model.input_shape = [1, C, H, W]") from None


def make_strategy(config: AdaptConfig, executor: Executor | None = None) -> Strategy:
    """The strategy the `[strategy]` table names, with its settings and the `[training]` steps
    (its proposals evaluated on `executor`, if given)."""
    section = config.strategy
    settings = section.model_dump(exclude={"name", "short_term_steps", "long_term_steps"})
    steps = {k: getattr(config.training, k) for k in section.TRAINING}
    return strategy_class(section.name)(**steps, **settings, **({"executor": executor} if executor else {}))


def strategy_class(name: str) -> type[Strategy]:
    """A registered strategy's class by name; OptunaSearch and GeometricProgram import optuna and
    cvxpy: only when asked for."""
    return STRATEGIES[name].load()


def strategy_makers(config: CompareConfig, executor: Executor | None = None) -> dict[str, Callable[[int | None],
                                                                                                     Strategy]]:
    """The config's strategies (the registry's variants), each built from the search budget
    (training steps) it is given."""
    known = variants()
    return {name: _variant_maker(config, *known[name], executor) for name in config.compare.strategies}


def _variant_maker(config: CompareConfig, entry: StrategyEntry, variant: Variant,
                   executor: Executor | None) -> Callable[[int | None], Strategy]:
    """A variant from the `[training]` steps its strategy takes, the seed, its fixed settings,
    the `[strategy]` table's own where it names this strategy (`own`), and matched trials."""
    t = config.training
    common: dict[str, Any] = {**{k: getattr(t, k) for k in entry.settings.TRAINING}, "seed": config.strategy.seed,
                              **({"executor": executor} if executor else {}), **variant.settings}
    if variant.own and config.strategy.name == entry.name:
        common.update(config.strategy.model_dump(exclude={"name", "short_term_steps", "long_term_steps", "seed"}))
    if not variant.matched:  # its steps follow its schedules or its super-network, not a budget
        return lambda _: entry.make(**common)
    return lambda steps: entry.make(trials=_trials(steps, t.short_term_steps), **common)


def _trials(steps: int | None, short_term_steps: int) -> int:
    """Networks a searching strategy may fine-tune for `steps` short-term training steps: the
    nearest whole number, at least one (a search must score something); with no steps to match
    (ProgressiveBarrier not run, or failed) or no short-term training, 20."""
    if steps is None or short_term_steps == 0:
        return 20
    return max(1, round(steps / short_term_steps))
