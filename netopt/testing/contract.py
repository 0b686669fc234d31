"""The contract every `Strategy` keeps, as a pytest test class you subclass for your own strategy.

A strategy, given a Problem, returns a network meeting every constraint by its estimator (a
budget its reward softens may be exceeded, as `Result.over_budget` reports) or raises
`InfeasibleError` (never anything else); uses at most `training_budget(problem)`
training steps; gives the same result for the same seed; and records every proposal it made
in the result's history. To check a strategy, subclass `StrategyContract` in a test module
and override its one fixture, `make_strategy`: a function from a seed to a fresh strategy::

    import pytest
    from netopt.testing.contract import StrategyContract

    class TestMyStrategy(StrategyContract):
        @pytest.fixture
        def make_strategy(self):
            return lambda seed: MyStrategy(trials=4, short_term_steps=1, long_term_steps=1, seed=seed)

netopt runs this suite on every registered strategy's contract examples, through one
parametrized fixture (tests/test_contract.py). Problems use the `ParamsKept` stand-in
objective: no training. The module-level `test_*` functions (star-imported beside a
`make_strategy` fixture) still run, for one release: subclass `StrategyContract` instead.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netopt.errors import InfeasibleError
from netopt.ir import Builder, Network
from netopt.strategies import Result, Strategy, smallest
from netopt.testing import strategies as nst
from netopt.testing.problems import joint_problem

__all__ = [
    "StrategyContract",
    "test_meets_every_budget_or_raises_infeasible",
    "test_an_unreachable_budget_raises_infeasible",
    "test_stays_within_its_training_budget",
    "test_same_seed_same_result",
    "test_records_every_proposal",
    "small_network",
]

MakeStrategy = Callable[[int], Strategy]


def small_network() -> Network:
    """A residual network with three channel groups (one merged across the skip)."""
    b = Builder((3, 16, 16))
    x = b.relu(b.bn(b.conv(b.input, 32, 3, stride=2)))
    y = b.relu(b.bn(b.conv(x, 48, 3)))
    x = b.relu(b.add_(x, b.bn(b.conv(y, 32, 1))))
    x = b.relu(b.bn(b.conv(x, 64, 3, stride=2)))
    return b.build(b.linear(b.flatten(b.adaptive_avgpool(x)), 10))


def _met(result: Result, problem_bounds: list, strategy: Strategy) -> bool:  # type: ignore[type-arg]
    """Every hard budget met; a budget the strategy's reward softens may be exceeded, if the result says so."""
    reward = getattr(strategy.settings, "reward", None)
    for b in problem_bounds:
        estimate = b.estimate(result.final.network)
        if reward is not None and reward.soft(b.resource) and estimate > b.budget:
            if result.over_budget.get(b.resource) != estimate / b.budget:
                return False
        elif estimate > b.budget:
            return False
    return True


class StrategyContract:
    """The Strategy contract as tests: subclass it and override `make_strategy` (seed -> strategy)."""

    @pytest.fixture
    def make_strategy(self) -> MakeStrategy:
        """Override: a function from a seed to a fresh strategy of yours, with a tiny budget."""
        raise NotImplementedError("override the make_strategy fixture: return lambda seed: MyStrategy(seed=seed, ...)")

    @settings(max_examples=8, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(net=nst.networks(max_blocks=3), macs=st.integers(15, 100), memory=st.integers(30, 100))
    def test_meets_every_budget_or_raises_infeasible(self, make_strategy: MakeStrategy, net: Network, macs: int,
                                                     memory: int) -> None:
        _meets_every_budget_or_raises_infeasible(make_strategy, net, macs, memory)

    def test_an_unreachable_budget_raises_infeasible(self, make_strategy: MakeStrategy) -> None:
        _an_unreachable_budget_raises_infeasible(make_strategy)

    def test_stays_within_its_training_budget(self, make_strategy: MakeStrategy) -> None:
        _stays_within_its_training_budget(make_strategy)

    def test_same_seed_same_result(self, make_strategy: MakeStrategy) -> None:
        _same_seed_same_result(make_strategy)

    def test_records_every_proposal(self, make_strategy: MakeStrategy) -> None:
        _records_every_proposal(make_strategy)


def _meets_every_budget_or_raises_infeasible(make_strategy: MakeStrategy, net: Network, macs: int,
                                            memory: int) -> None:
    """The result meets every hard budget at `macs`% and `memory`%, or InfeasibleError says truly."""
    problem = joint_problem(net, f"{macs}%", f"{memory}%")
    bounds = problem.bind()
    strategy = make_strategy(0)
    try:
        result = strategy.run(problem)
    except InfeasibleError as exc:
        floor = smallest(net)
        assert any(b.estimate(floor) > b.budget for b in bounds), f"said infeasible, but the smallest fits: {exc}"
        return
    assert _met(result, bounds, strategy), {b.resource: (b.estimate(result.final.network), b.budget) for b in bounds}
    for member in result.family:  # the recorded figures are the estimators' own
        assert member.resources == {b.resource: b.estimate(member.network) for b in bounds}


def _an_unreachable_budget_raises_infeasible(make_strategy: MakeStrategy) -> None:
    """A budget below the smallest network raises InfeasibleError, nothing else."""
    with pytest.raises(InfeasibleError, match="cannot be met"):
        make_strategy(0).run(joint_problem(small_network(), "1%", "100%"))


def _stays_within_its_training_budget(make_strategy: MakeStrategy) -> None:
    """At most `training_budget(problem)` steps, and at least what its proposals spent."""
    problem = joint_problem(small_network(), "40%", "90%")
    strategy = make_strategy(0)
    result = strategy.run(problem)
    assert 0 <= result.training_steps <= strategy.training_budget(problem)
    assert result.training_steps >= sum(p.steps for p in result.history)


def _same_seed_same_result(make_strategy: MakeStrategy) -> None:
    """Two runs with one seed: the same network, accuracy and history."""
    problem = joint_problem(small_network(), "40%", "90%")
    first, second = make_strategy(3).run(problem), make_strategy(3).run(problem)
    assert first.final.network == second.final.network
    assert first.final.accuracy == second.final.accuracy
    assert [p.to_dict() for p in first.history] == [p.to_dict() for p in second.history]


def _records_every_proposal(make_strategy: MakeStrategy) -> None:
    """The history holds every proposal, the final network among them, each with every resource."""
    problem = joint_problem(small_network(), "40%", "90%")
    result = make_strategy(0).run(problem)
    assert result.history, "a search that had to shrink the network recorded no proposal"
    assert result.strategy == type(make_strategy(0)).name
    start = problem.traced.network
    proposed = {start.with_widths(p.widths) for p in result.history} | {start}
    assert result.final.network in proposed, "the final network is not among the recorded proposals"
    for p in result.history:
        assert set(p.resources) == {b.resource for b in problem.bind()}
        assert p.score is None or p.steps >= 0


# --- the star-import form, for one release: subclass StrategyContract instead ---------------


@settings(max_examples=8, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(net=nst.networks(max_blocks=3), macs=st.integers(15, 100), memory=st.integers(30, 100))
def test_meets_every_budget_or_raises_infeasible(make_strategy: MakeStrategy, net: Network, macs: int,
                                                 memory: int) -> None:
    _meets_every_budget_or_raises_infeasible(make_strategy, net, macs, memory)


def test_an_unreachable_budget_raises_infeasible(make_strategy: MakeStrategy) -> None:
    _an_unreachable_budget_raises_infeasible(make_strategy)


def test_stays_within_its_training_budget(make_strategy: MakeStrategy) -> None:
    _stays_within_its_training_budget(make_strategy)


def test_same_seed_same_result(make_strategy: MakeStrategy) -> None:
    _same_seed_same_result(make_strategy)


def test_records_every_proposal(make_strategy: MakeStrategy) -> None:
    _records_every_proposal(make_strategy)
