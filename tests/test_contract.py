"""Every strategy netopt ships keeps the Strategy contract (netopt.testing.contract)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from netopt.strategies import (
    GeometricProgram,
    MnasNetReward,
    NetAdaptV2,
    OptunaSearch,
    ProgressiveBarrier,
    RandomSearch,
    Strategy,
    UniformWidth,
)
from netopt.testing.contract import *  # noqa: F403 - the contract's tests run here

STEPS = {"short_term_steps": 2, "long_term_steps": 3, "progress": False}
MAKERS: dict[str, Callable[[int], Strategy]] = {
    "ProgressiveBarrier": lambda seed: ProgressiveBarrier(seed=seed, **STEPS),  # type: ignore[arg-type]
    "UniformWidth": lambda seed: UniformWidth(seed=seed, **STEPS),  # type: ignore[arg-type]
    "RandomSearch": lambda seed: RandomSearch(trials=4, seed=seed, **STEPS),  # type: ignore[arg-type]
    "OptunaTPE": lambda seed: OptunaSearch(sampler="tpe", trials=4, seed=seed, **STEPS),  # type: ignore[arg-type]
    "OptunaNSGA2": lambda seed: OptunaSearch(sampler="nsga2", trials=4, seed=seed, **STEPS),  # type: ignore[arg-type]
    "GeometricProgram": lambda seed: GeometricProgram(seed=seed, **STEPS),  # type: ignore[arg-type]
    "NetAdaptV2": lambda seed: NetAdaptV2(seed=seed, supernet_steps=2, samples=3, long_term_steps=3,
                                          progress=False),
    "MnasNetTPE": lambda seed: OptunaSearch(sampler="tpe", trials=4, seed=seed,  # type: ignore[arg-type]
                                            reward=MnasNetReward(resources=("memory",)), **STEPS),
}


@pytest.fixture(params=sorted(MAKERS))
def make_strategy(request: pytest.FixtureRequest) -> Callable[[int], Strategy]:
    return MAKERS[request.param]


def test_every_strategy_netopt_ships_is_held_to_the_contract() -> None:
    import netopt.strategies as shipped

    concrete = {name for name in shipped.__all__
                if isinstance(cls := getattr(shipped, name), type) and issubclass(cls, Strategy)
                and not getattr(cls, "__abstractmethods__", None)}
    held = {type(make(0)).__name__ for make in MAKERS.values()}
    assert concrete == held, f"strategies outside the contract suite: {concrete - held}"
