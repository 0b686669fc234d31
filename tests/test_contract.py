"""Every registered strategy keeps the Strategy contract (netopt.testing.contract), through the registry."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from netopt.strategies import Strategy
from netopt.strategies.registry import STRATEGIES
from netopt.testing.contract import StrategyContract

EXAMPLES: dict[str, Callable[[int], Strategy]] = {
    label: make for entry in STRATEGIES for label, make in entry.example_makers().items()}
"""Every registered strategy's contract examples, by label (OptunaTPE, MnasNetTPE, ...)."""


class TestEveryRegisteredStrategy(StrategyContract):
    @pytest.fixture(params=sorted(EXAMPLES))
    def make_strategy(self, request: pytest.FixtureRequest) -> Callable[[int], Strategy]:
        return EXAMPLES[request.param]


def test_every_registered_strategy_has_a_contract_example_of_its_own_class() -> None:
    bare = [entry.name for entry in STRATEGIES if not entry.examples]
    assert bare == [], f"registered without a contract example (give it one in its registration): {bare}"
    for entry in STRATEGIES:
        for label, make in entry.example_makers().items():
            assert type(make(0)) is entry.load(), f"example {label} does not make a {entry.name}"


def test_every_strategy_netopt_ships_is_registered() -> None:
    import netopt.strategies as shipped

    concrete = {name for name in shipped.__all__
                if isinstance(cls := getattr(shipped, name), type) and issubclass(cls, Strategy)
                and not getattr(cls, "__abstractmethods__", None)}
    assert concrete == set(STRATEGIES.names), f"strategies outside the registry: {concrete - set(STRATEGIES.names)}"
