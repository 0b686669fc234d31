"""NetAdaptV2 (ordered channels, ordered dropout, multi-layer coordinate descent) and MnasNet's reward."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import netopt
from netopt.bridge import build, trace
from netopt.constraints import EnergyConstraint, MACsConstraint, MemoryConstraint, ReductionSchedule
from netopt.data import mnist
from netopt.errors import ConfigError, ObjectiveError
from netopt.ir import OpKind
from netopt.measure import EnergyModel
from netopt.measure.memory import MemoryModel
from netopt.objectives import Accuracy, Trainer
from netopt.runs import RunDir, RunError
from netopt.strategies import MnasNetReward, NetAdaptV2, Problem, RandomSearch
from netopt.strategies.netadaptv2 import BatchNormWarning, BypassWarning, derived_supernet_steps
from netopt.strategies.supernet import (
    ZERO_KEEPING,
    OrderedDropout,
    already_zero,
    ordered,
    reestimate_batchnorm,
    sub_network,
)
from netopt.testing import strategies as nst
from netopt.testing.problems import joint_problem
from netopt.testing.torch_checks import randomize_batchnorm
from netopt.zoo import MobileNetV2

DIGITS = mnist(size=16, holdout_per_class=10, test_fraction=0.1)


def _frozen_stochastic(module: nn.Module) -> None:
    """Training mode for the masks, but BatchNorm on running statistics and no dropout: deterministic."""
    module.train()
    for m in module.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
            m.eval()


def _first_k_property(network: netopt.ir.Network, widths: dict[str, int], bypass: bool = False) -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm(build(network)).eval()
    x = torch.randn(3, *network.input_shape)
    traced = trace(model, x[:1])
    reordered = ordered(traced)
    torch.testing.assert_close(reordered.module(x), model(x), atol=1e-4, rtol=1e-4)  # a permutation, nothing else
    supernet = reordered.materialize()
    dropout = OrderedDropout(supernet, reordered.network, seed=0, sandwich=False, bypass=bypass)
    dropout.grids = {g: torch.tensor([w]) for g, w in widths.items() if g in dropout.grids}
    _frozen_stochastic(supernet)
    masked = supernet(x)
    dropout.remove()
    sub = sub_network(trace(supernet.eval(), x[:1], step=network.step), widths).eval()
    torch.testing.assert_close(sub(x), masked, atol=1e-4, rtol=1e-4)  # first k channels = the masked super-network


EXACT = tuple(b for b in nst.BLOCKS if b not in nst.CHANNEL_MIXING)  # LayerNorm, ECA: approximate (see supernet)


@given(nst.networks(blocks=EXACT), st.data())
def test_ordering_keeps_the_function_and_first_k_is_the_masked_supernet(network: netopt.ir.Network,
                                                                         data: st.DataObject) -> None:
    _first_k_property(network, network.with_widths(data.draw(nst.widths(network))).widths)


RESIDUAL = ("conv", "residual", "inverted", "se", "dwsep", "pool")


@given(nst.networks(blocks=RESIDUAL), st.data())
def test_a_bypassed_sub_network_is_the_supernet_with_the_branch_gated(network: netopt.ir.Network,
                                                                       data: st.DataObject) -> None:
    widths = network.with_widths(data.draw(nst.widths(network, bypass=True))).widths
    _first_k_property(network, widths, bypass=True)


@given(nst.networks(blocks=("eca", "convnext", "conv")))
def test_ordering_keeps_the_function_of_channel_mixing_ops(network: netopt.ir.Network) -> None:
    torch.manual_seed(0)
    model = randomize_batchnorm(build(network)).eval()
    x = torch.randn(3, *network.input_shape)
    torch.testing.assert_close(ordered(trace(model, x[:1])).module(x), model(x), atol=1e-4, rtol=1e-4)


def test_first_k_on_mobilenetv2() -> None:
    net = netopt.trace(MobileNetV2(0.5, num_classes=10).eval(), torch.randn(1, 3, 32, 32)).network
    _first_k_property(net, net.scaled(0.5).widths)
    bypass = [g.id for g in net.groups if g.bypass]
    assert len(bypass) >= 4
    _first_k_property(net, net.scaled(0.5).with_widths(dict.fromkeys(bypass[::2], 0)).widths, bypass=True)


def test_ordered_dropout_draws_per_sample_widths_with_the_sandwich_rule() -> None:
    model = randomize_batchnorm(MobileNetV2(0.5, num_classes=10)).eval()
    x = torch.randn(6, 3, 32, 32)
    traced = ordered(netopt.trace(model, x[:1]))
    supernet = traced.materialize()
    dropout = OrderedDropout(supernet, traced.network, seed=3)
    _frozen_stochastic(supernet)
    out = supernet(x)
    drawn = dropout.widths
    assert drawn is not None and all(len(k) == 6 for k in drawn.values())
    assert all(int(k[0]) == traced.network.group(g).full_width and int(k[1]) == traced.network.group(g).min_width
               for g, k in drawn.items())
    assert len({tuple(int(v) for v in k[2:]) for k in drawn.values()}) > 1  # the others vary
    full = traced.module(x[:1])
    torch.testing.assert_close(out[:1], full, atol=1e-4, rtol=1e-4)  # sample 0: the whole network
    smallest = netopt.strategies.smallest(traced.network).widths
    dropout.remove()
    sub = sub_network(trace(supernet.eval(), x[:1], step=traced.network.step), smallest).eval()
    torch.testing.assert_close(out[1:2], sub(x[1:2]), atol=1e-4, rtol=1e-4)  # sample 1: the smallest
    supernet.eval()
    torch.testing.assert_close(supernet(x), traced.module(x), atol=1e-4, rtol=1e-4)  # hooks off


def test_recalibration_sets_batchnorm_statistics_to_the_batches() -> None:
    bn = nn.BatchNorm2d(2, momentum=0.3)
    module = nn.Sequential(bn)
    batches = [torch.randn(8, 2, 4, 4) * 3 + 5 for _ in range(3)]
    assert reestimate_batchnorm(module, batches) == 3
    stacked = torch.cat(batches)
    torch.testing.assert_close(bn.running_mean, stacked.mean((0, 2, 3)), atol=1e-4, rtol=1e-4)
    assert bn.momentum == 0.3 and not module.training


def _problem() -> Problem:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 48, 3, 2, 1),
                          nn.BatchNorm2d(48), nn.ReLU(), nn.Conv2d(48, 64, 3, 1, 1), nn.BatchNorm2d(64), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).eval()
    traced = netopt.trace(model, DIGITS.train_x[:1])
    return Problem(traced, [MACsConstraint("45%", schedule=ReductionSchedule("15%")),
                            EnergyConstraint("60%", EnergyModel(), ReductionSchedule("15%"))],
                   Accuracy(DIGITS, Trainer(lr=0.05)))


V2: dict[str, Any] = {"supernet_steps": 20, "samples": 4, "long_term_steps": 5, "seed": 2, "progress": False}


def test_netadaptv2_meets_every_budget_and_accounts_its_three_parts(tmp_path: Path) -> None:
    problem = _problem()
    result = NetAdaptV2(**V2).run(problem, run_dir=tmp_path / "run")
    for b in problem.bind():
        assert b.met(result.final.resources[b.resource])
    assert result.training_steps == 25 and all(p.steps == 0 for p in result.history)
    assert {"supernet_training", "sample_evaluation", "final_training"} <= set(result.timings)
    assert sum(p.chosen for p in result.history) == len(result.family) - 1
    assert any(p.group.count("+") >= 1 for p in result.history)  # several groups a proposal
    assert (tmp_path / "run" / "supernet.pt").is_file() and result.over_budget == {}
    again = NetAdaptV2(**V2).run(problem, run_dir=tmp_path / "run", resume=True)  # finished: read back whole
    assert again.training_steps == 25 and again.final.network == result.final.network


class Stop(Exception):
    pass


class Killed(Accuracy):
    """Accuracy that dies at its n-th holdout score (a kill mid-run)."""

    def __init__(self, data: object, after: int) -> None:
        super().__init__(data, Trainer(lr=0.05))  # type: ignore[arg-type]
        self.after, self.calls = after, 0

    def holdout(self, module: nn.Module) -> float:
        self.calls += 1
        if self.calls == self.after:
            raise KeyboardInterrupt  # not an objective's failure: a kill
        return super().holdout(module)


class FewerLayers(Accuracy):
    """Scores a network by how few convolutions it keeps. MNIST at 16 px after these few steps is
    near chance (0.05-0.14), so accuracy would pick among proposals by the machine's float
    rounding; this picks a removed branch wherever one is proposed, on every machine. What it
    scores does not depend on training, so it trains on 8 examples a step."""

    def __init__(self, data: object, after: int = 0) -> None:
        super().__init__(data, Trainer(lr=0.05, batch_size=8))  # type: ignore[arg-type]
        self.after, self.calls = after, 0

    def holdout(self, module: nn.Module) -> float:
        self.calls += 1
        if self.calls == self.after:
            raise KeyboardInterrupt  # a kill mid-run
        return 1.0 / (1 + sum(isinstance(m, nn.Conv2d) for m in module.modules()))


def _residual_problem(after: int = 0) -> Problem:
    torch.manual_seed(0)
    model = MobileNetV2(0.5, num_classes=10, in_channels=1).eval()
    traced = netopt.trace(model, DIGITS.train_x[:1])
    return Problem(traced, [MACsConstraint("35%", schedule=ReductionSchedule("20%"))], FewerLayers(DIGITS, after))


def test_netadaptv2_with_bypass_removes_residual_branches_and_resumes(tmp_path: Path) -> None:
    settings = {**V2, "bypass": True, "samples": 6, "supernet_steps": 6}  # what FewerLayers scores needs no training
    reference = NetAdaptV2(**settings).run(_residual_problem())
    final = reference.final.network
    assert final.removed, "a proposal that removes a residual branch is proposed and, preferred, taken"
    assert all(w >= 0 for w in final.widths.values()) and 0 in final.widths.values()
    assert reference.final.resources["macs"] == netopt.ir.macs(final) <= 0.35 * netopt.ir.macs(final.at_full_width())
    convs = [sum(isinstance(m, nn.Conv2d) for m in build(n).modules()) for n in (final, final.at_full_width())]
    assert convs[0] < convs[1], "a removed branch's layers are gone from the built module"
    with pytest.raises(KeyboardInterrupt):
        NetAdaptV2(**settings).run(_residual_problem(after=9), run_dir=tmp_path / "run")
    resumed = NetAdaptV2(**settings).run(_residual_problem(), run_dir=tmp_path / "run", resume=True)
    assert [p.to_dict() for p in resumed.history] == [p.to_dict() for p in reference.history]
    assert resumed.final.network == final
    without = NetAdaptV2(**{**settings, "bypass": False}).run(_residual_problem())
    assert not without.final.network.removed and 0 not in without.final.network.widths.values()


def test_bypass_on_a_network_without_residual_branches_is_a_warning() -> None:
    with pytest.warns(BypassWarning, match="no residual branch"):
        result = NetAdaptV2(**{**V2, "bypass": True}).run(_problem())
    assert result.final.network.removed == frozenset()


def test_netadaptv2_resumes_after_a_kill_to_the_uninterrupted_result(tmp_path: Path) -> None:
    reference = NetAdaptV2(**V2).run(_problem())
    killed = _problem()
    object.__setattr__(killed, "objective", Killed(DIGITS, after=7))
    with pytest.raises(KeyboardInterrupt):
        NetAdaptV2(**V2).run(killed, run_dir=tmp_path / "run")
    resumed = NetAdaptV2(**V2).run(_problem(), run_dir=tmp_path / "run", resume=True)
    assert [p.to_dict() for p in resumed.history] == [p.to_dict() for p in reference.history]
    assert resumed.final.network == reference.final.network
    assert resumed.final.accuracy == pytest.approx(reference.final.accuracy)


def test_netadaptv2_bad_settings_are_one_line() -> None:
    for settings, words in (({"samples": 0}, "samples=0 must be an integer >= 1"),
                            ({"supernet_steps": -1}, "supernet_steps=-1 must be an integer >= 0"),
                            ({"layers": 0}, "layers=0 must be an integer >= 1"),
                            ({"reward": {"alpha": 0.5}}, "alpha=0.5 is positive")):
        with pytest.raises(ConfigError, match=words) as info:
            NetAdaptV2(**settings)
        assert "\n" not in str(info.value)


def test_an_objective_without_training_inputs_is_warned_about() -> None:
    def fine_tune(model: nn.Module, steps: int, seed: int, phase: str) -> None:
        return None

    def score(model: nn.Module) -> float:
        return 0.5

    problem = _problem()
    object.__setattr__(problem, "objective", netopt.FunctionObjective(fine_tune, score))
    with pytest.warns(BatchNormWarning, match="give FunctionObjective a training_inputs function"):
        NetAdaptV2(**{**V2, "supernet_steps": 1}).run(problem)


@pytest.mark.filterwarnings("ignore::netopt.strategies.netadaptv2.BatchNormWarning")
def test_a_failing_supernet_training_names_itself() -> None:
    def fine_tune(model: nn.Module, steps: int, seed: int, phase: str) -> None:
        raise RuntimeError("CUDA out of memory")

    problem = _problem()
    object.__setattr__(problem, "objective", netopt.FunctionObjective(fine_tune, lambda m: 0.5))
    with pytest.raises(ObjectiveError, match=r"the super-network's training: fine_tune .* raised RuntimeError"):
        NetAdaptV2(**V2).run(problem)


# --- MnasNet's reward -----------------------------------------------------------------------


class _Bound:
    def __init__(self, resource: str, budget: float) -> None:
        self.resource, self.budget = resource, budget


def test_the_reward_is_mnasnets_formula() -> None:
    bounds = [_Bound("latency", 10.0)]
    soft, hard = MnasNetReward(), MnasNetReward(alpha=0, beta=-1)
    assert soft(0.8, {"latency": 5.0}, bounds) == pytest.approx(0.8 * 0.5 ** -0.07)  # type: ignore[arg-type]
    assert soft(0.8, {"latency": 20.0}, bounds) == pytest.approx(0.8 * 2 ** -0.07)  # type: ignore[arg-type]
    assert hard(0.8, {"latency": 5.0}, bounds) == pytest.approx(0.8)  # type: ignore[arg-type]
    assert hard(0.8, {"latency": 20.0}, bounds) == pytest.approx(0.4)  # type: ignore[arg-type]
    # the paper's trade-off: 2x the latency is worth ~5% more accuracy under the soft reward
    assert soft(0.8 * 2 ** 0.07, {"latency": 20.0}, bounds) == pytest.approx(0.8)  # type: ignore[arg-type]
    assert math.isclose(MnasNetReward(resources=("energy",))(0.8, {"latency": 20.0}, bounds), 0.8)  # type: ignore[arg-type]


def test_a_soft_reward_may_exceed_a_budget_and_the_result_says_so() -> None:
    net = _small()
    strict = RandomSearch(trials=12, short_term_steps=1, long_term_steps=1, seed=0, progress=False)
    soft = RandomSearch(trials=12, short_term_steps=1, long_term_steps=1, seed=0, progress=False,
                        reward=MnasNetReward(alpha=-0.01, beta=-0.01))
    a, b = strict.run(joint_problem(net, "40%", "90%")), soft.run(joint_problem(net, "40%", "90%"))
    assert a.over_budget == {}
    assert b.over_budget and all(v > 1 for v in b.over_budget.values())  # ParamsKept favours big networks
    kept = RandomSearch(trials=12, short_term_steps=1, long_term_steps=1, seed=0, progress=False,
                        reward=MnasNetReward(alpha=-0.01, beta=-0.01, resources=("macs",)))
    c = kept.run(joint_problem(net, "40%", "60%"))
    assert "memory" not in c.over_budget  # a strict constraint kept alongside the soft one


def _small() -> netopt.ir.Network:
    from netopt.testing.contract import small_network

    return small_network()


def test_a_reward_a_strategy_cannot_take_is_one_line() -> None:
    with pytest.raises(ConfigError, match="NSGA-II keeps every resource"):
        netopt.OptunaSearch(sampler="nsga2", reward=MnasNetReward())
    with pytest.raises(ConfigError, match=r"setting reward=.*Extra inputs are not permitted"):
        netopt.UniformWidth(reward=MnasNetReward())


def test_optuna_tpe_maximizes_the_reward() -> None:
    net = _small()
    search = netopt.OptunaSearch(sampler="tpe", trials=8, short_term_steps=1, long_term_steps=1, seed=0,
                                 progress=False, reward=MnasNetReward(alpha=0, beta=-1))
    result = search.run(Problem(joint_problem(net, "50%", "90%").traced,
                                [MACsConstraint("50%"), MemoryConstraint("90%", MemoryModel())],
                                joint_problem(net, "50%", "90%").objective))
    assert result.final.network is not None and len(result.history) >= 8


def test_a_finished_soft_reward_search_read_back_still_says_it_is_over_budget(tmp_path: Path) -> None:
    def search() -> RandomSearch:
        return RandomSearch(trials=12, short_term_steps=1, long_term_steps=1, seed=0, progress=False,
                            reward=MnasNetReward(alpha=-0.01, beta=-0.01))

    first = search().run(joint_problem(_small(), "40%", "90%"), run_dir=tmp_path / "run")
    again = search().run(joint_problem(_small(), "40%", "90%"), run_dir=tmp_path / "run", resume=True)
    assert first.over_budget and again.over_budget == first.over_budget


# --- the super-network's steps, derived --------------------------------------------------------


def test_the_derived_supernet_steps_are_twice_the_groups_squared_within_100_and_twenty_passes() -> None:
    small, deep = _problem(), _residual_problem()
    assert 2 * len(small.traced.network.groups) ** 2 < 100 and derived_supernet_steps(small) == 100
    groups = len(deep.traced.network.groups)
    object.__setattr__(deep, "objective", Accuracy(DIGITS, Trainer(lr=0.05, batch_size=8)))  # many passes' steps
    assert derived_supernet_steps(deep) == 2 * groups * groups > 20 * groups, "faster than the groups"
    tiny = mnist(size=16, holdout_per_class=10, test_fraction=0.9)  # 400 training digits: 7 batches of 64
    object.__setattr__(deep, "objective", Accuracy(tiny, Trainer(lr=0.05)))
    assert derived_supernet_steps(deep) == 20 * math.ceil(len(tiny.train_y) / 64) < 2 * groups * groups


def test_the_default_supernet_steps_are_derived_and_recorded_and_explicit_ones_win(tmp_path: Path) -> None:
    problem, settings = _problem(), {k: v for k, v in V2.items() if k != "supernet_steps"}
    assert NetAdaptV2(**settings).supernet_steps is None
    assert NetAdaptV2(**settings).training_budget(problem) == 100 + 5
    assert NetAdaptV2(**{**settings, "supernet_steps": 7}).training_budget(problem) == 7 + 5
    result = NetAdaptV2(**settings).run(problem, run_dir=tmp_path / "run")
    assert result.training_steps == 100 + 5
    assert RunDir.open(tmp_path / "run").config()["supernet_steps"] == 100
    again = NetAdaptV2(**settings).run(problem, run_dir=tmp_path / "run", resume=True)
    assert again.training_steps == 105 and again.final.network == result.final.network


def test_a_run_begun_with_the_former_default_resumes_under_the_derived_one(tmp_path: Path) -> None:
    """A run directory records the steps it was started with (300, the former fixed default, or
    any other): resumed without supernet_steps it keeps them, and ends as it would have."""
    reference = NetAdaptV2(**V2).run(_problem())
    killed = _problem()
    object.__setattr__(killed, "objective", Killed(DIGITS, after=7))
    with pytest.raises(KeyboardInterrupt):
        NetAdaptV2(**V2).run(killed, run_dir=tmp_path / "run")
    default = {k: v for k, v in V2.items() if k != "supernet_steps"}
    resumed = NetAdaptV2(**default).run(_problem(), run_dir=tmp_path / "run", resume=True)
    assert [p.to_dict() for p in resumed.history] == [p.to_dict() for p in reference.history]
    assert resumed.final.network == reference.final.network and resumed.training_steps == V2["supernet_steps"] + 5
    with pytest.raises(RunError, match="supernet_steps = 20, not 21"):
        NetAdaptV2(**{**V2, "supernet_steps": 21}).run(_problem(), run_dir=tmp_path / "run", resume=True)


def test_activations_and_sums_of_masked_tensors_are_not_masked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    traced = netopt.trace(MobileNetV2(0.5, num_classes=10, in_channels=1).eval(), DIGITS.train_x[:1])
    net, ops = traced.network, {n.name: n.op for n in traced.network.nodes}
    zero = already_zero(net, {g.id for g in net.groups})
    assert {OpKind.ADD, OpKind.RELU6} <= {ops[z] for z in zero} <= ZERO_KEEPING  # residual sums, activations
    assert already_zero(net, set()) == set()

    def step() -> list[torch.Tensor]:
        module = traced.materialize().train()
        dropout = OrderedDropout(module, net, seed=3)
        torch.manual_seed(1)  # the classifier's dropout
        module(DIGITS.train_x[:8]).square().sum().backward()
        dropout.remove()
        return [p.grad.clone() for p in module.parameters() if p.grad is not None]

    skipped = step()
    monkeypatch.setattr("netopt.strategies.supernet.already_zero", lambda network, groups: set())
    for fewer, every in zip(skipped, step(), strict=True):  # every node masked: the same gradients
        torch.testing.assert_close(fewer, every, rtol=0, atol=0)
