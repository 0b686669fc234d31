"""GeometricProgram: posynomial fits of the estimators, one geometric program, repair on the estimators."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from standins import ParamsKept, fixed_net, problem_for

import netopt
from netopt.constraints import EnergyConstraint, MACsConstraint
from netopt.errors import ConfigError, InfeasibleError
from netopt.ir import Builder, macs, params
from netopt.measure.energy import EnergyModel
from netopt.strategies import Problem, UniformWidth
from netopt.strategies.geometric import GeometricProgram, GeometricReport, importance, layer_pairs
from netopt.testing.problems import problem
from netopt.zoo import MobileNetV1

STEPS = {"short_term_steps": 2, "long_term_steps": 2, "progress": False}


def geometric(**kwargs: object) -> GeometricProgram:
    return GeometricProgram(**{**STEPS, **kwargs})  # type: ignore[arg-type]


def report(strategy: GeometricProgram) -> GeometricReport:
    assert strategy.last_fit is not None
    return strategy.last_fit


@pytest.mark.parametrize("budget", ["30%", "45%", "70%", "100%"])
@pytest.mark.parametrize("kind", ["magnitude", "uniform"])
def test_meets_every_budget(budget: str, kind: str) -> None:
    prob = problem_for(fixed_net(), budget, "90%")
    strategy = geometric(importance=kind)
    result = strategy.run(prob)
    for b in prob.bind():
        assert b.met(result.final.resources[b.resource]), (b.resource, result.final.resources, b.budget)
        assert result.final.resources[b.resource] == b.estimate(result.final.network)
    assert report(strategy).status == "optimal"
    assert result.training_steps == 4  # one network fine-tuned, as UniformWidth does


def test_macs_fit_is_exact() -> None:
    """MACs are bilinear in the kept fractions, and the fit's terms hold every layer's pair."""
    net = fixed_net()
    strategy = geometric()
    strategy.run(problem(net, [MACsConstraint("50%")]))
    fit = report(strategy).fits["macs"]
    assert fit.max_error < 1e-6
    rng = np.random.default_rng(7)
    for _ in range(20):
        widths = {g.id: int(rng.choice(g.valid_widths())) for g in net.groups}
        x = np.array([widths[g.id] / g.full_width for g in net.groups])
        assert fit.posynomial(x) == pytest.approx(macs(net.with_widths(widths)), rel=0.01)


def test_terms_are_the_pairs_that_meet_in_a_layer() -> None:
    # groups: 0 (conv0 and conv2, merged by the add), 1 (conv1), 2 (conv3); conv1 reads 0 and
    # makes 1, conv2 reads 1 and makes 0, conv3 reads 0 and makes 2
    assert layer_pairs(fixed_net()) == [(), (0,), (1,), (2,), (0, 1), (0, 2)]


@pytest.mark.parametrize("budget", ["30%", "45%", "70%"])
def test_no_worse_than_the_width_multiplier(budget: str) -> None:
    prob = problem_for(fixed_net(), budget, "90%")
    strategy = geometric()
    mine, uniform = strategy.run(prob).final.network, UniformWidth(**STEPS).run(prob).final.network  # type: ignore[arg-type]
    weights = report(strategy).weights
    assert importance(weights, mine.widths) >= importance(weights, uniform.widths) - 1e-9
    if budget != "30%":  # at 30% the program's optimum keeps fewer parameters (the first conv is costly)
        assert params(mine) >= params(uniform)


def test_same_seed_same_widths_and_history() -> None:
    prob = problem_for(fixed_net(), "40%", "90%")
    first, second = geometric(seed=3).run(prob), geometric(seed=3).run(prob)
    assert first.final.network == second.final.network
    assert [p.to_dict() for p in first.history] == [p.to_dict() for p in second.history]


def test_every_probe_is_recorded_and_the_final_is_among_them() -> None:
    prob = problem_for(fixed_net(), "45%", "90%")
    strategy = geometric()
    result = strategy.run(prob)
    rep = report(strategy)
    assert rep.probes + 1 == len(result.history)  # the probes, then the one scored network
    assert [p.score is None for p in result.history] == [True] * rep.probes + [False]
    assert result.history[-1].widths == result.final.network.widths


def test_another_solver_and_the_report() -> None:
    strategy = geometric(solver="SCS")
    strategy.run(problem_for(fixed_net(), "50%", "90%"))
    rep = report(strategy)
    assert rep.status.startswith("optimal")
    assert set(rep.fits) == {"macs", "memory"} and rep.fit_seconds > 0 and rep.solve_seconds > 0
    assert sum(rep.weights.values()) == pytest.approx(1.0)
    assert all(0 < x <= 1 + 1e-6 for x in rep.fractions.values())


@pytest.mark.parametrize("settings", [{"importance": "fisher"}, {"solver": "NO_SUCH_SOLVER"}, {"samples": -1}])
def test_bad_settings_are_config_errors(settings: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as caught:
        geometric(**settings)
    assert "\n" not in str(caught.value) and "GeometricProgram" in str(caught.value)


def test_an_unreachable_budget_is_infeasible() -> None:
    with pytest.raises(InfeasibleError, match="cannot be met"):
        geometric().run(problem_for(fixed_net(), "1%", "100%"))


def test_a_network_without_prunable_groups_is_kept_whole() -> None:
    b = Builder((8,))
    net = b.build(b.linear(b.input, 4))
    result = geometric().run(problem(net, [MACsConstraint("100%")]))
    assert result.final.network == net


def test_mobilenet_under_macs_and_energy() -> None:
    torch.manual_seed(0)
    model = MobileNetV1(width=0.5, resolution=32, num_classes=10, in_channels=1).eval()
    traced = netopt.trace(model, torch.randn(1, 1, 32, 32))
    full = sum(p.numel() for p in traced.module.parameters())
    prob = Problem(traced, [MACsConstraint("40%"), EnergyConstraint("50%", EnergyModel())],
                   ParamsKept(full))  # type: ignore[arg-type]
    strategy = geometric()
    result = strategy.run(prob)
    rep = report(strategy)
    for b in prob.bind():
        assert b.met(result.final.resources[b.resource])
        assert result.final.resources[b.resource] > 0.9 * b.budget  # the slack is taken up
    assert rep.status == "optimal"
    assert rep.fits["macs"].max_error < 1e-6 and rep.fits["energy"].max_error < 0.05
    assert len(result.history) < 300  # a few hundred estimates, one network trained: seconds, not hours
    uniform = UniformWidth(**STEPS).run(prob).final.network  # type: ignore[arg-type]
    assert importance(rep.weights, result.final.network.widths) >= importance(rep.weights, uniform.widths)


def test_a_second_choice_after_a_measured_miss_solves_again_rather_than_keep_the_full_network() -> None:
    """Every `choose` has its own CALIBRATIONS rounds: the repair after a measured miss used to
    find them spent by the first choice and return no widths (the full network, over budget)."""
    prob = problem_for(fixed_net(), "45%", "90%")
    strategy = geometric()
    trials = strategy.trials_on(strategy.open_engine(prob, None, False))
    rep = GeometricReport(weights=dict.fromkeys((g.id for g in trials.network.groups), 1.0))
    first = strategy.choose(trials, rep)
    rep.rounds = 3  # as many programs as one choice may solve, already solved
    again = strategy.choose(trials, rep)
    assert first and again == first and trials.feasible(trials.resources(again))
