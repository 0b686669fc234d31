"""Every strategy netopt ships, registered once: its name, settings model, class and examples.

The config loader (`[strategy]` by name), the factory (`netopt adapt` and `netopt compare`),
the lazy exports of `netopt.strategies` and the contract tests all read `STRATEGIES`. Adding
a strategy is its module plus one `StrategyEntry` here: the class is named by `Ref` and
imported only when asked for, so OptunaSearch and GeometricProgram cost optuna and cvxpy
only where they run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from netopt.registry import Ref, Registry
from netopt.strategies.base import StrategySettings
from netopt.strategies.reward import MnasNetReward
from netopt.strategies.settings import (
    GeometricSettings,
    NetAdaptV2Settings,
    OptunaSettings,
    ProgressiveBarrierSettings,
    RandomSearchSettings,
    UniformWidthSettings,
)

if TYPE_CHECKING:
    from netopt.strategies.base import Strategy

__all__ = ["STRATEGIES", "Example", "StrategyEntry", "Variant", "variants"]


def _frozen(settings: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(settings or {}))


@dataclass(frozen=True)
class Example:
    """Settings for a tiny run of the strategy (seconds, no real training): what the contract
    suite (`netopt.testing.contract.StrategyContract`) checks it with, as `label`."""

    label: str
    settings: Mapping[str, Any] = field(default_factory=_frozen)


@dataclass(frozen=True)
class Variant:
    """A strategy as `netopt compare` runs it, by `name`, with `settings` fixed. `matched`: its
    trials follow the search budget matched to ProgressiveBarrier's; `own`: the `[strategy]`
    table's settings carry over when it names this strategy."""

    name: str
    settings: Mapping[str, Any] = field(default_factory=_frozen)
    matched: bool = False
    own: bool = False


@dataclass(frozen=True)
class StrategyEntry:
    """One strategy: `name` (its class's, and `[strategy] name`), its settings model, where its
    class is, its contract examples and the variants `netopt compare` runs.

    >>> entry = STRATEGIES["RandomSearch"]
    >>> entry.settings(trials=3).trials, entry.load().__name__
    (3, 'RandomSearch')
    """

    name: str
    settings: type[StrategySettings]
    target: Ref
    examples: tuple[Example, ...] = ()
    variants: tuple[Variant, ...] = ()

    def load(self) -> type[Strategy]:
        """The strategy class, its module (and what it needs: optuna, cvxpy) imported now."""
        return self.target.load()  # type: ignore[no-any-return]

    def make(self, **settings: Any) -> Strategy:
        """A strategy with these settings (and `executor`, `progress` where given)."""
        return self.load()(**settings)

    def example_makers(self) -> dict[str, Callable[[int], Strategy]]:
        """Each contract example as a function from a seed to a fresh strategy, by label."""
        return {e.label: _maker(self, e.settings) for e in self.examples}


def _maker(entry: StrategyEntry, settings: Mapping[str, Any]) -> Callable[[int], Strategy]:
    return lambda seed: entry.make(seed=seed, **settings)


_TINY = _frozen({"short_term_steps": 2, "long_term_steps": 3, "progress": False})
"""A contract example's fine-tuning: a few steps, no progress bar."""


def _tiny(**settings: Any) -> Mapping[str, Any]:
    return _frozen({**_TINY, **settings})


def _one(name: str, settings: type[StrategySettings], module: str, examples: tuple[Example, ...],
         variants: tuple[Variant, ...] | None = None) -> StrategyEntry:
    """An entry whose class is `module:name`, compared as itself unless `variants` say otherwise."""
    return StrategyEntry(name, settings, Ref(f"{module}:{name}"), examples,
                         (Variant(name),) if variants is None else variants)


STRATEGIES: Registry[StrategyEntry] = Registry("strategy", [
    _one("ProgressiveBarrier", ProgressiveBarrierSettings, "netopt.strategies.progressive",
         (Example("ProgressiveBarrier", _tiny()),), (Variant("ProgressiveBarrier", own=True),)),
    _one("UniformWidth", UniformWidthSettings, "netopt.strategies.uniform", (Example("UniformWidth", _tiny()),)),
    _one("RandomSearch", RandomSearchSettings, "netopt.strategies.random_search",
         (Example("RandomSearch", _tiny(trials=4)),), (Variant("RandomSearch", matched=True),)),
    _one("OptunaSearch", OptunaSettings, "netopt.strategies.optuna_search",
         (Example("OptunaTPE", _tiny(sampler="tpe", trials=4)),
          Example("OptunaNSGA2", _tiny(sampler="nsga2", trials=4)),
          Example("MnasNetTPE", _tiny(sampler="tpe", trials=4, reward=MnasNetReward(resources=("memory",))))),
         (Variant("OptunaTPE", _frozen({"sampler": "tpe"}), matched=True),
          Variant("OptunaNSGA2", _frozen({"sampler": "nsga2"}), matched=True),
          Variant("MnasNetTPE", _frozen({"sampler": "tpe", "reward": MnasNetReward()}), matched=True))),
    _one("GeometricProgram", GeometricSettings, "netopt.strategies.geometric",
         (Example("GeometricProgram", _tiny()),)),
    _one("NetAdaptV2", NetAdaptV2Settings, "netopt.strategies.netadaptv2",
         (Example("NetAdaptV2", _frozen({"supernet_steps": 2, "samples": 3, "long_term_steps": 3,
                                         "progress": False})),),
         (Variant("NetAdaptV2", own=True),)),
], "register it in netopt/strategies/registry.py")
"""The strategies netopt ships, in the order `netopt compare` runs them by default (see `variants`)."""


def variants() -> dict[str, tuple[StrategyEntry, Variant]]:
    """Every strategy `netopt compare` can run, by its comparison name, with its entry: those held
    to hard budgets in registration order, then those MnasNet's reward softens.

    >>> list(variants())[-3:]
    ['GeometricProgram', 'NetAdaptV2', 'MnasNetTPE']
    """
    pairs = [(entry, v) for entry in STRATEGIES for v in entry.variants]
    return {v.name: (entry, v) for entry, v in sorted(pairs, key=lambda p: p[1].settings.get("reward") is not None)}
