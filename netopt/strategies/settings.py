"""Every strategy's settings, as data: frozen pydantic models, the one source of their defaults.

A strategy validates its keyword settings with its model at construction (one ConfigError line
naming the strategy, the setting and the rule) and derives `config()` from it; the config
file's `[strategy]` table is one of these models, chosen by its `name`. This module imports
neither optuna nor cvxpy, so a config file is validated without them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import Field, StrictInt, field_validator, model_validator

from netopt.strategies.base import StrategySettings, non_negative
from netopt.strategies.reward import MnasNetReward

__all__ = ["SelectionRule", "ProgressiveBarrierSettings", "WidthSearchSettings", "UniformWidthSettings",
           "SamplingSettings", "RandomSearchSettings", "OptunaSettings", "GeometricSettings", "NetAdaptV2Settings",
           "SAMPLERS", "IMPORTANCE", "positive"]

SAMPLERS = ("tpe", "nsga2")
IMPORTANCE = ("magnitude", "uniform")


def positive(name: str, value: int, meaning: str) -> int:
    """A setting that must be an integer >= 1 (`meaning` says what it counts)."""
    if value < 1:
        raise ValueError(f"{name}={value!r} must be an integer >= 1 ({meaning})")
    return value


class SelectionRule(StrEnum):
    """PickHighestAccuracy (the paper), or the smallest accuracy drop per resource saved."""

    ACCURACY = "accuracy"
    ACCURACY_PER_RESOURCE = "accuracy_per_resource"


def _most_rounds(value: int | None) -> int | None:
    if value is not None and value < 2:
        raise ValueError(f"most_rounds {value!r} must be at least 2: the side-by-side rounds a figure measured against "
                         "a budget may take while it straddles its threshold (None: 9)")
    return value


class ProgressiveBarrierSettings(StrategySettings):
    """ProgressiveBarrier's settings (see the class); `max_iterations` bounds a run, not its result."""

    RUNTIME: ClassVar[frozenset[str]] = frozenset({"max_iterations"})

    selection: SelectionRule = SelectionRule.ACCURACY
    block_size: StrictInt = 1
    """Consecutive channel groups one proposal shrinks together (1: each singly, as in the paper)."""
    max_iterations: StrictInt = 500
    land: bool | None = None
    """Land the final network on its measured budgets (`netopt.strategies.landing`): on unless
    False (None, the default, is how a run begun before landing existed resumes)."""
    most_rounds: StrictInt | None = None
    """Side-by-side rounds a figure measured against a budget may take while it straddles its
    threshold (`netopt.strategies.decisive`; None: 9)."""

    _most = field_validator("most_rounds")(classmethod(lambda cls, value: _most_rounds(value)))

    @field_validator("selection", mode="before")
    @classmethod
    def _selection(cls, value: Any) -> SelectionRule:
        try:
            return SelectionRule(value)
        except ValueError:
            raise ValueError(f"selection {value!r} is unknown; use one of {[s.value for s in SelectionRule]}") from None

    @field_validator("block_size")
    @classmethod
    def _block(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"block_size {value!r} must be an integer >= 1: how many consecutive channel groups "
                             "one proposal shrinks together (1: each group singly, as in the paper)")
        return value

    @field_validator("max_iterations")
    @classmethod
    def _iterations(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"max_iterations={value!r} must be >= 1")
        return value


class WidthSearchSettings(StrategySettings):
    trials: StrictInt = 20
    """The compute budget: how many networks are fine-tuned and scored."""

    @field_validator("trials")
    @classmethod
    def _trials(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"trials={value!r} is not a compute budget; it must be an integer >= 1 (the number of "
                             "networks fine-tuned and scored)")
        return value


class UniformWidthSettings(WidthSearchSettings):
    trials: Literal[1] = 1  # one network is fine-tuned: the multiplier's
    tolerance: float = 1e-3
    """The bisection stops when the multiplier is known to within it."""

    @field_validator("tolerance")
    @classmethod
    def _tolerance(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError(f"tolerance={value:g} must lie in (0, 1): the bisection stops when the multiplier is "
                             "known to within it (default 1e-3)")
        return value


class SamplingSettings(WidthSearchSettings):
    """A search that samples assignments: it gives up after `max_rejections` untrained ones, and
    hands `batch_size` at a time to the executor (its worker count, to use them all)."""

    max_rejections: StrictInt = 1000
    batch_size: StrictInt = 1

    @field_validator("max_rejections")
    @classmethod
    def _rejections(cls, value: int) -> int:
        return positive("max_rejections", value, "how many untrained assignments to allow before giving up")

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, value: int) -> int:
        return positive("batch_size", value, "proposals evaluated at once: the executor's worker count, to use "
                        "them all")


class RandomSearchSettings(SamplingSettings):
    RUNTIME: ClassVar[frozenset[str]] = frozenset({"batch_size"})  # samples do not depend on scores

    reward: MnasNetReward | None = None
    """Choose by MnasNet's reward instead of within hard budgets (see netopt.strategies.reward)."""


class OptunaSettings(SamplingSettings):
    """Where the study is kept (`storage`, `study_name`) does not decide the result: a resume
    replays the search from the run directory (see the module docstring). `batch_size` does:
    the sampler sees only what was told."""

    RUNTIME: ClassVar[frozenset[str]] = frozenset({"storage", "study_name"})

    sampler: str = "tpe"
    reward: MnasNetReward | None = None
    """TPE maximizes MnasNet's reward instead of the score within hard budgets."""
    storage: str | None = None
    study_name: str | None = None
    warm_start: list[dict[str, int]] = Field(default_factory=list)

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, value: str) -> str:
        if value not in SAMPLERS:
            raise ValueError(f"sampler {value!r} is unknown; use one of {', '.join(map(repr, SAMPLERS))}")
        return value

    @model_validator(mode="after")
    def _reward_with_tpe(self) -> OptunaSettings:
        if self.reward is not None and self.sampler != "tpe":
            raise ValueError(f"reward with sampler {self.sampler!r}: NSGA-II keeps every resource as an objective of "
                             "its own and cannot take a reward; use sampler=\"tpe\" with the reward, or drop it")
        return self


class GeometricSettings(WidthSearchSettings):
    trials: Literal[1] = 1  # one network is fine-tuned: the program's
    samples: StrictInt = 24
    importance: str = "magnitude"
    solver: str | None = None

    @field_validator("importance")
    @classmethod
    def _importance(cls, value: str) -> str:
        if value not in IMPORTANCE:
            raise ValueError(f"importance={value!r} is unknown; use one of {list(IMPORTANCE)}")
        return value

    @field_validator("samples")
    @classmethod
    def _samples(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"samples={value!r} must be an integer >= 0 (random fit samples)")
        return value

    @field_validator("solver")
    @classmethod
    def _solver(cls, value: str | None) -> str | None:
        if value is not None:
            import cvxpy as cp

            installed = cp.installed_solvers()
            if value.upper() not in installed:
                raise ValueError(f"solver={value!r} is not installed for cvxpy; installed: {installed}")
        return value


class NetAdaptV2Settings(StrategySettings):
    """NetAdaptV2's settings (see the class). `short_term_steps` is not used: samples are scored with
    the super-network's weights, without fine-tuning (the paper's point)."""

    RUNTIME: ClassVar[frozenset[str]] = frozenset({"max_iterations"})
    TRAINING: ClassVar[frozenset[str]] = frozenset({"long_term_steps"})  # its samples are scored untrained

    short_term_steps: StrictInt = 0
    supernet_steps: StrictInt | None = None
    """Training steps of the ordered-dropout super-network, from the pretrained weights (None:
    derived from the network and the data, `netadaptv2.derived_supernet_steps`; a resumed run keeps its own)."""
    samples: StrictInt = 16
    """Proposals drawn and scored in every iteration of multi-layer coordinate descent."""
    layers: StrictInt | None = None
    """Channel groups one proposal shrinks at once (None: round(sqrt(groups)), at least 2)."""
    sandwich: bool = True
    """Train the largest and the smallest sub-network in every super-network step."""
    bypass: bool = False
    """Channel-level bypass: groups inside residual branches may reach width 0, removing the branch."""
    bn_batches: StrictInt = 4
    """Training batches that re-estimate a sample's BatchNorm statistics before it is scored."""
    reward: MnasNetReward | None = None
    """Pick each iteration's sample by MnasNet's reward instead of the score."""
    max_iterations: StrictInt = 500
    land: bool | None = None
    """Land the final network on its measured budgets (`netopt.strategies.landing`): on unless
    False (None, the default, is how a run begun before landing existed resumes)."""
    most_rounds: StrictInt | None = None
    """Side-by-side rounds a figure measured against a budget may take while it straddles its
    threshold (`netopt.strategies.decisive`; None: 9)."""

    _most = field_validator("most_rounds")(classmethod(lambda cls, value: _most_rounds(value)))

    @field_validator("supernet_steps", "bn_batches")
    @classmethod
    def _counts(cls, value: int | None, info: Any) -> int | None:
        if value is None:  # supernet_steps derived when the run starts
            return None
        return non_negative(info.field_name, value, "training steps" if info.field_name == "supernet_steps"
                            else "batches")

    @field_validator("samples", "max_iterations")
    @classmethod
    def _at_least_one(cls, value: int, info: Any) -> int:
        return positive(info.field_name, value, "proposals an iteration" if info.field_name == "samples"
                        else "iterations before giving up")

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"layers={value!r} must be an integer >= 1 (channel groups a proposal shrinks at once), "
                             "or None for round(sqrt(groups))")
        return value
