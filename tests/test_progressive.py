"""ProgressiveBarrier on random networks and joint budgets, with a cheap stand-in objective."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import netopt
from netopt.bridge import build
from netopt.constraints import MACsConstraint, MemoryConstraint, ReductionSchedule
from netopt.errors import ConfigError, InfeasibleError
from netopt.ir import Network
from netopt.measure.memory import MemoryModel
from netopt.strategies import Problem, ProgressiveBarrier, SelectionRule, smallest
from netopt.testing import strategies as nst


@dataclass(frozen=True)
class Scored:
    score: float
    steps: int


class ParamsKept:
    """Stand-in objective: 'accuracy' is the share of parameters kept, plus a seeded jitter.
    No training; deterministic for a seed, so strategies can be property-tested fast."""

    def __init__(self, full: int) -> None:
        self.full = full

    def short_term(self, module: nn.Module, steps: int, seed: int) -> Scored:
        kept = sum(p.numel() for p in module.parameters()) / self.full
        jitter = torch.rand(1, generator=torch.Generator().manual_seed(seed)).item() * 0.01
        return Scored(kept + jitter, steps)

    def long_term(self, module: nn.Module, steps: int, seed: int) -> Scored:
        return self.short_term(module, steps, seed)

    def test(self, module: nn.Module) -> float:
        return self.short_term(module, 0, 0).score


def problem_for(net: Network, macs: str, memory: str) -> Problem:
    torch.manual_seed(0)
    traced = netopt.trace(build(net).eval(), torch.randn(1, *net.input_shape))
    constraints = [MACsConstraint(macs, schedule=ReductionSchedule("10%", decay=0.9)),
                   MemoryConstraint(memory, MemoryModel(), schedule=ReductionSchedule("5%"))]
    full = sum(p.numel() for p in traced.module.parameters())
    return Problem(traced, constraints, ParamsKept(full))  # type: ignore[arg-type]


@settings(max_examples=15)
@given(nst.networks(max_blocks=3), st.integers(20, 100), st.integers(40, 100))
def test_meets_every_budget_or_says_it_is_infeasible(net: Network, macs_pct: int, memory_pct: int) -> None:
    problem = problem_for(net, f"{macs_pct}%", f"{memory_pct}%")
    strategy = ProgressiveBarrier(short_term_steps=0, long_term_steps=0, progress=False)
    try:
        result = strategy.run(problem)
    except InfeasibleError as exc:
        floor = smallest(net)
        bounds = problem.bind()
        assert any(b.estimate(floor) > b.budget for b in bounds), f"said infeasible but the floor fits: {exc}"
        return
    for bound in problem.bind():
        assert bound.estimate(result.final.network) <= bound.budget
    assert [c.iteration for c in result.family] == list(range(len(result.family)))
    assert sum(p.chosen for p in result.history) == len(result.family) - 1
    costs = [MACsConstraint("100%").estimate(c.network) for c in result.family]
    assert costs == sorted(costs, reverse=True)  # every iteration shrinks


def test_each_iteration_meets_its_tightened_target_and_follows_eq2() -> None:
    net = _fixed()
    problem = problem_for(net, "60%", "100%")
    result = ProgressiveBarrier(short_term_steps=0, long_term_steps=0, progress=False).run(problem)
    bound = problem.bind()[0]
    for i, (before, after) in enumerate(zip(result.family, result.family[1:], strict=False)):
        target = bound.target(i, before.resources["macs"])
        chosen = next(p for p in result.history if p.iteration == i and p.chosen)
        assert after.resources["macs"] == chosen.resources["macs"] <= target


def _fixed() -> Network:
    from netopt.ir import Builder

    b = Builder((3, 16, 16))
    x = b.relu(b.bn(b.conv(b.input, 32, 3, stride=2)))
    y = b.relu(b.bn(b.conv(x, 48, 3)))
    y = b.bn(b.conv(y, 32, 1))
    x = b.relu(b.add_(x, y))
    x = b.relu(b.bn(b.conv(x, 64, 3, stride=2)))
    return b.build(b.linear(b.flatten(b.adaptive_avgpool(x)), 10))


def test_an_unreachable_budget_fails_early_with_the_smallest_estimate() -> None:
    problem = problem_for(_fixed(), "1%", "100%")
    with pytest.raises(InfeasibleError, match=r"macs budget .* cannot be met: the smallest network .* estimated at"):
        ProgressiveBarrier(progress=False).run(problem)


def test_selection_rules_and_bad_settings() -> None:
    problem = problem_for(_fixed(), "70%", "100%")
    a = ProgressiveBarrier(short_term_steps=0, long_term_steps=0, progress=False).run(problem)
    b = ProgressiveBarrier(short_term_steps=0, long_term_steps=0, progress=False,
                           selection="accuracy_per_resource").run(problem)
    for result in (a, b):
        assert all(bound.estimate(result.final.network) <= bound.budget for bound in problem.bind())
    # the stand-in's accuracy is the share of parameters kept: PickHighestAccuracy keeps the most
    first = [p for p in a.history if p.iteration == 0]
    assert next(p for p in first if p.chosen).score == max(p.score for p in first)
    with pytest.raises(ConfigError, match="selection 'best' is unknown"):
        ProgressiveBarrier(selection="best")
    assert SelectionRule("accuracy") is SelectionRule.ACCURACY


def test_a_process_pool_gives_the_same_result_as_serial() -> None:
    problem = problem_for(_fixed(), "60%", "90%")
    serial = ProgressiveBarrier(short_term_steps=0, long_term_steps=0, progress=False).run(problem)
    with ProcessPoolExecutor(2) as pool:
        pooled = ProgressiveBarrier(short_term_steps=0, long_term_steps=0, progress=False, executor=pool).run(problem)
    assert [c.network for c in pooled.family] == [c.network for c in serial.family]
    assert [p.to_dict() for p in pooled.history] == [p.to_dict() for p in serial.history]
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(pooled.final.module(x), serial.final.module(x))
