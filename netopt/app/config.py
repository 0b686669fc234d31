"""`netopt adapt CONFIG`: the configuration file, validated by frozen pydantic models.

    run_dir = "runs/demo"

    [model]
    width = 0.5
    size = 32

    [[constraints]]
    resource = "latency"
    budget = "50%"
    schedule = { initial = "4%", decay = 0.96 }

Every table forbids unknown keys, so a typo is an error that names the field.
"""

from __future__ import annotations

import re
import sys
import tomllib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import Field, ValidationError, create_model, field_validator, model_validator

from netopt.constraints.amount import parse_amount
from netopt.constraints.registry import CONSTRAINTS
from netopt.errors import ConfigError, first_line
from netopt.frozen import Frozen, did_you_mean, model_at
from netopt.measure.registry import BACKENDS, latency_backends
from netopt.strategies.base import StrategySettings
from netopt.strategies.registry import STRATEGIES as REGISTERED
from netopt.strategies.registry import variants

__all__ = ["AdaptConfig", "CompareConfig", "ConfigWarning", "load_config", "STRATEGIES"]


class ConfigWarning(UserWarning):
    """A config that is accepted, but probably not as meant (an empty file)."""


FACTORY = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
"""`package.module:callable`, the entry-point notation."""


class _Factory(Frozen):
    """`factory = "package.module:callable"`, called with the keyword arguments `options`."""

    factory: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("factory")
    @classmethod
    def _entry_point(cls, value: str | None) -> str | None:
        if value is not None and not re.match(FACTORY, value):
            raise ValueError(f"factory {value!r} is not \"package.module:callable\"; give e.g. \"mypkg.models:build\"")
        return value


class ModelConfig(_Factory):
    """The zoo's MobileNetV1 pretrained on the bundled digits (the demo), or your own model:
    `factory` ("package.module:callable", called with `options`) returns an nn.Module,
    `checkpoint` is a state_dict file loaded into it (weights_only), `input_shape` its input."""

    zoo: Literal["mobilenet_v1"] = "mobilenet_v1"
    width: float = Field(0.5, gt=0, le=4)
    size: int = Field(32, ge=8, le=512)
    pretrain_steps: int = Field(1000, ge=0)
    checkpoint: str | None = None
    input_shape: list[Annotated[int, Field(ge=1)]] | None = Field(None, min_length=2, max_length=5)

    @model_validator(mode="after")
    def _own(self) -> ModelConfig:
        if self.factory is None and (self.checkpoint is not None or self.options):
            raise ValueError("model.checkpoint and model.options belong to model.factory (your own model); the zoo "
                             "model is pretrained by netopt; give model.factory or drop them")
        if self.input_shape is not None and self.input_shape[0] != 1:
            raise ValueError(f"model.input_shape {self.input_shape} must have batch 1 first, e.g. [1, 3, 224, 224]")
        return self


class ObjectiveConfig(_Factory):
    """What the network is fine-tuned and scored by: the bundled digits' accuracy (the demo), or
    `factory` ("package.module:callable", called with `options`) returning a netopt Objective."""


class DataConfig(Frozen):
    dataset: Literal["mnist"] = "mnist"
    holdout_per_class: int = Field(20, ge=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 0


class TrainingConfig(Frozen):
    """The objective's trainer, and the fine-tuning budget every strategy is given (its defaults
    are the strategies' own)."""

    lr: float = Field(0.01, gt=0)
    batch_size: int = Field(64, ge=2)
    device: str = "auto"
    """Where the zoo model is fine-tuned: "auto" (CUDA when present), "cpu", "cuda"; measurement stays on the target."""
    amp: bool = False
    """Mixed precision when fine-tuning on CUDA."""
    short_term_steps: int = Field(StrategySettings.model_fields["short_term_steps"].default, ge=0)
    long_term_steps: int = Field(StrategySettings.model_fields["long_term_steps"].default, ge=0)


    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        from netopt.objectives.train import resolve_device

        resolve_device(value)  # a ValueError naming the device and the fix
        return value


class ScheduleConfig(Frozen):
    initial: str | float = "4%"
    decay: float = Field(0.96, gt=0, le=1)


class ConstraintConfig(Frozen):
    resource: str
    """A registered resource (`netopt.constraints.registry`): latency, energy, memory, macs, params."""
    budget: str | float
    schedule: ScheduleConfig = ScheduleConfig()
    basis: Literal["auto", "measured", "estimated"] = "auto"
    """What a relative budget resolves against: the start's end-to-end measurement where the
    resource is measured (latency, on the lookup table's backend), its estimate elsewhere."""

    @field_validator("resource")
    @classmethod
    def _registered(cls, value: str) -> str:
        if value not in CONSTRAINTS:
            raise ValueError(str(CONSTRAINTS.unknown(value)))
        return value

    @field_validator("budget", mode="before")
    @classmethod
    def _not_boolean(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError(f"budget {str(value).lower()} is a boolean; give a number in the resource's unit or a "
                             "share of the starting network like \"50%\"")
        return value

    @model_validator(mode="after")
    def _amounts(self) -> ConstraintConfig:
        """Refuse a bad budget or schedule now, before any model is trained or measured (as a
        ValueError, so that the message names the config file and the field like every other)."""
        try:
            budget = parse_amount(self.budget, None, f"{self.resource} budget")
            parse_amount(self.schedule.initial, None, f"{self.resource} schedule initial reduction")
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if budget.relative and budget.value > 1:
            raise ValueError(f"{self.resource} budget {self.budget!r} is above the starting network's cost, so it is "
                             "met before anything is adapted; give a share of at most 100%, e.g. \"50%\"")
        if self.basis == "measured" and not CONSTRAINTS[self.resource].measured:
            measured = " and ".join(e.name for e in CONSTRAINTS if e.measured)
            raise ValueError(f"{self.resource} budget basis 'measured' needs a resource measured end to end; only "
                             f"{measured} is (on the lookup table's backend): use basis 'auto' or 'estimated'")
        return self


SETTINGS: dict[str, type[StrategySettings]] = {entry.name: entry.settings for entry in REGISTERED}
"""The strategies `netopt adapt` can run, by the `name` of the `[strategy]` table (the registry's)."""

DEFAULT_STRATEGY = "ProgressiveBarrier"
"""The strategy of a config without a `[strategy] name`: NetAdapt's."""

_SECTIONS = {name: create_model(f"{name}Section", __base__=model, name=(Literal[name], name))  # type: ignore[call-overload,arg-type]
             for name, model in SETTINGS.items()}

if TYPE_CHECKING:
    class StrategyConfig(StrategySettings):
        name: str
else:
    StrategyConfig = Annotated[Union[tuple(_SECTIONS.values())], Field(discriminator="name")]  # noqa: UP007
"""`[strategy]`: `name` (default "ProgressiveBarrier") and that strategy's settings, checked by its
own model; the training steps are set in `[training]`."""


DEFAULT_LUT = "runs/lut-ort-cpu1.sqlite"
"""ONNX Runtime's fp32 table, where the demo keeps it (any thread count, as it always was)."""


class LutConfig(Frozen):
    path: str = DEFAULT_LUT
    """The table's file (or PostgreSQL URL); by default one per backend and precision under runs/."""
    backend: str = "onnxruntime"
    """The registered backend the latency table measures on (`netopt.measure.registry`)."""
    precision: Literal["fp32", "int8"] = "fp32"
    """int8: each network measured quantized as the backend deploys it, on the objective's inputs."""
    threads: int = Field(1, ge=1)
    calibration: int = Field(16, ge=2, le=1000)
    """The most whole networks the table's calibration measures (once per structure)."""
    frozen: bool = False
    """Read the table and write nothing back (no recalibration kept): runs compared from one table
    start alike and leave it as it was."""

    @model_validator(mode="before")
    @classmethod
    def _default_path(cls, data: Any) -> Any:
        """A table of its own for every backend and precision, unless a path is given."""
        if isinstance(data, dict) and "path" not in data:
            backend, precision = data.get("backend", "onnxruntime"), data.get("precision", "fp32")
            if (backend, precision) != ("onnxruntime", "fp32") and isinstance(backend, str):
                data = {**data, "path": f"runs/lut-{backend}-{precision}-cpu{data.get('threads', 1)}.sqlite"}
        return data

    @model_validator(mode="after")
    def _precision_measured(self) -> LutConfig:
        measures = BACKENDS[self.backend].precisions
        if self.precision not in measures:
            others = [b for b in latency_backends() if self.precision in BACKENDS[b].precisions]
            raise ValueError(f"backend {self.backend!r} measures at {', '.join(measures)}, not {self.precision}; "
                             f"choose precision = \"fp32\", or a backend that measures {self.precision} "
                             f"({', '.join(others)})")
        return self

    @field_validator("backend")
    @classmethod
    def _latency_backend(cls, value: str) -> str:
        if value not in BACKENDS:
            raise ValueError(str(BACKENDS.unknown(value)))
        if value not in latency_backends():
            raise ValueError(f"backend {value!r} prices {BACKENDS[value].resource} without timing whole networks; a "
                             f"latency lookup table measures on one of {', '.join(map(repr, latency_backends()))}")
        return value


class AdaptConfig(Frozen):
    """Everything `netopt adapt` needs; the defaults are the demo's."""

    run_dir: str = "runs/demo"
    model: ModelConfig = ModelConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    data: DataConfig = DataConfig()
    training: TrainingConfig = TrainingConfig()
    constraints: list[ConstraintConfig] = Field(
        default_factory=lambda: [ConstraintConfig(resource="latency", budget="50%"),
                                 ConstraintConfig(resource="energy", budget="60%")],
        min_length=1)
    strategy: StrategyConfig = _SECTIONS[DEFAULT_STRATEGY]()  # type: ignore[assignment]  # NetAdapt's defaults
    lut: LutConfig = LutConfig()

    @model_validator(mode="before")
    @classmethod
    def _named_strategy(cls, data: Any) -> Any:
        """A `[strategy]` table without a name is ProgressiveBarrier's (as before names existed); a
        name the registry does not know is refused with the names it knows."""
        if isinstance(data, dict) and isinstance(data.get("strategy"), dict):
            if "name" not in data["strategy"]:
                return {**data, "strategy": {"name": DEFAULT_STRATEGY, **data["strategy"]}}
            if isinstance(data["strategy"]["name"], str) and data["strategy"]["name"] not in REGISTERED:
                raise ValueError(f"strategy.name: {REGISTERED.unknown(data['strategy']['name'])}")
        return data

    @model_validator(mode="after")
    def _own_model_own_objective(self) -> AdaptConfig:
        if self.model.factory is not None and self.objective.factory is None:
            raise ValueError("model.factory needs objective.factory: the bundled digits objective fits the zoo model "
                             "only; give objective.factory = \"package.module:callable\" returning a netopt Objective")
        return self

    @model_validator(mode="after")
    def _one_constraint_a_resource(self) -> AdaptConfig:
        resources = [c.resource for c in self.constraints]
        twice = sorted({r for r in resources if resources.count(r) > 1})
        if twice:
            raise ValueError(f"constraints: {twice[0]} is constrained twice; give one budget a resource (the "
                             "tighter one binds anyway)")
        return self

    @model_validator(mode="after")
    def _steps_in_training(self) -> AdaptConfig:
        both = {k for k in self.strategy.TRAINING & self.strategy.model_fields_set
                if getattr(self.strategy, k) != getattr(self.training, k)}  # equal: a dump read back
        if both:
            raise ValueError(f"strategy.{sorted(both)[0]}: set the fine-tuning steps in [training], the budget every "
                             "strategy is given")
        return self


STRATEGIES = tuple(variants())
"""`netopt compare`'s strategies, the registry's variants: MnasNetTPE is Optuna's TPE maximizing
MnasNet's soft reward."""


class CompareSection(Frozen):
    """Which strategies `netopt compare` runs, at which budgets of the first constraint."""

    strategies: list[Literal[STRATEGIES]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: list(STRATEGIES), min_length=1)
    budgets: list[str | float] = Field(["70%", "50%", "35%"], min_length=1)
    search_steps: Literal["match"] | int = "match"
    """Training steps each searching strategy may spend on short-term fine-tuning: "match" gives
    every one what ProgressiveBarrier used at the same budget (it runs first)."""

    @model_validator(mode="after")
    def _budgets(self) -> CompareSection:
        for b in self.budgets:
            parse_amount(b, None, "compare budget")
        if isinstance(self.search_steps, int) and self.search_steps < 1:
            raise ValueError(f"search_steps {self.search_steps} must be >= 1, or \"match\"")
        return self


class CompareConfig(AdaptConfig):
    """`netopt compare`: an adapt config plus the strategies and budgets to compare."""

    run_dir: str = "runs/compare"
    compare: CompareSection = CompareSection()


def _read(path: str | Path) -> dict[str, object]:
    """A TOML or (by suffix .yaml/.yml) YAML file as a dict, or one ConfigError line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; give the path of a TOML or YAML file") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; give the path of a TOML or YAML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not text (it does not decode as UTF-8); give a TOML or YAML "
                          "file") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror}); check its permissions") from None
    if not text.strip():
        warnings.warn(f"config file {path} is empty: running with the built-in defaults (those of "
                      "examples/demo.toml)", ConfigWarning, stacklevel=3)
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {first_line(exc)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of settings, not {type(data).__name__}")
        return data
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def load_config(path: str | Path, kind: type[AdaptConfig] = AdaptConfig) -> AdaptConfig:
    """Read and validate a TOML (or YAML) config; any problem is one ConfigError line naming the field."""
    data = _read(path)
    folder = str(Path(path).resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # a config's factories import from beside it (and from PYTHONPATH)
    try:
        return kind(**data)
    except ValidationError as exc:
        errors = exc.errors()  # a mistyped key first: it is why a required one is missing
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        field = ".".join(str(p) if str(p).isprintable() else repr(p) for p in err["loc"])  # a key "\n": one line
        message = str(err["msg"]).removeprefix("Value error, ")
        if not field:  # a rule across tables: its message names the field itself
            raise ConfigError(f"{path}: {message}") from None
        hint = ""
        if err["type"] == "extra_forbidden" and (where := model_at(kind, err["loc"][:-1])) is not None:
            hint = did_you_mean(err["loc"][-1], list(where.model_fields))
        raise ConfigError(f"{path}: {field}: {message} (got {err.get('input')!r}){hint}") from None
