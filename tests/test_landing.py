"""Finals land on the budget: an iterative strategy's final network measures between 90% and 100%
of each budget checked by measurement, unless the smallest step up crosses it (then the result
says so); the landing is in the run's history and a resumed run replays it.

The estimator here is a stand-in lookup table known to be off: it estimates every network 20%
above what it measures, and recalibrating does not cure it. Its "measurement" is a function of
the IR's MACs, so nothing is timed and the tests are fast and exact.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from torch import nn

import netopt
from netopt.constraints import LatencyConstraint, ReductionSchedule
from netopt.errors import ObjectiveError
from netopt.ir import Builder, Network
from netopt.measure.base import Fingerprint, Measurement
from netopt.strategies import NetAdaptV2, ProgressiveBarrier, Result, Strategy
from netopt.strategies.base import LANDED, LANDING
from netopt.testing.problems import ParamsKept, StandInTable, problem


class OffTable(StandInTable):
    """Estimates `ratio` times what it measures, whatever it is told."""

    def __init__(self, ratio: float = 1.2) -> None:
        self.ratio, self.calls = ratio, 0

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint({"backend": "off-table"})

    def estimate(self, net: Network) -> float:
        return self.ratio * self.true(net)

    def measured(self, traced: Any, nets: Sequence[Network]) -> list[Measurement]:
        self.calls += 1
        return super().measured(traced, nets)


def off_problem(net: Network, budget: str = "50%", ratio: float = 1.2,
                objective: Any = None) -> netopt.Problem:
    made = problem(net, [LatencyConstraint(budget, OffTable(ratio), ReductionSchedule("5%", decay=0.96))])
    return netopt.Problem(made.traced, made.constraints, objective or made.objective)


STRATEGIES = {
    "ProgressiveBarrier": lambda **land: ProgressiveBarrier(short_term_steps=0, long_term_steps=0, progress=False,
                                                             **land),
    "NetAdaptV2": lambda **land: NetAdaptV2(supernet_steps=0, long_term_steps=0, samples=3, bn_batches=0,
                                            progress=False, **land),
}


def fine_network() -> Network:
    """Wide layers: a grid step of one group is a few percent of the network's cost."""
    b = Builder((3, 16, 16))
    x = b.relu(b.bn(b.conv(b.input, 64, 3, stride=2)))
    y = b.relu(b.bn(b.conv(x, 96, 3)))
    x = b.relu(b.add_(x, b.bn(b.conv(y, 64, 1))))
    x = b.relu(b.bn(b.conv(x, 128, 3)))
    return b.build(b.linear(b.flatten(b.adaptive_avgpool(x)), 10))


def share(result: Result) -> float:
    return result.final.measured["latency"] / result.budgets["latency"]


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_a_final_under_a_table_that_estimates_20_percent_high_lands_within_90_to_100_percent_of_the_budget(
        name: str) -> None:
    off = STRATEGIES[name](land=False).run(off_problem(fine_network()))
    assert share(off) < LANDED, "the stand-in table should leave the unlanded final short of the budget"
    assert off.landing is not None and not off.landing.on and off.landing.shares == {"latency": share(off)}
    landed = STRATEGIES[name]().run(off_problem(fine_network()))
    assert LANDED <= share(landed) <= 1.0
    assert landed.landing is not None and landed.landing.on and not landed.landing.short
    assert landed.landing.shares == {"latency": pytest.approx(share(landed))}
    members = {m.network for m in landed.family}
    scored = [p for p in landed.history if p.group.startswith(LANDING)]
    assert landed.final.network in members or [landed.final.network.widths] == [p.widths for p in scored]
    assert landed.final.network != off.final.network and landed.final.accuracy >= off.final.accuracy - 0.01


def test_landing_is_off_where_no_budget_is_checked_by_measurement() -> None:
    made = problem(fine_network(), [netopt.MACsConstraint("50%", schedule=ReductionSchedule("5%"))])
    result = ProgressiveBarrier(short_term_steps=0, long_term_steps=0, progress=False).run(made)
    assert result.landing is not None and result.landing.shares == {}
    assert not any(p.group.startswith(LANDING) for p in result.history)


def one_group() -> Network:
    """One prunable group of two widths: its only step halves the network's cost."""
    b = Builder((3, 16, 16))
    x = b.relu(b.conv(b.input, 16, 3, stride=2))
    return b.build(b.linear(b.flatten(b.adaptive_avgpool(x)), 4))


def test_a_final_whose_smallest_step_up_crosses_the_budget_says_so() -> None:
    net = one_group()
    assert [g.valid_widths() for g in net.groups] == [(8, 16)]
    result = ProgressiveBarrier(short_term_steps=0, long_term_steps=0, progress=False).run(
        off_problem(net, "80%", ratio=1.0))
    assert result.landing is not None and set(result.landing.short) == {"latency"}
    assert result.landing.above["latency"] > 1.0  # the full network: over the budget
    assert "(the smallest step up measures" in result.landing.describe()


class Killed(ParamsKept):
    """ParamsKept that raises at its `stop`-th short-term call: a run killed there."""

    def __init__(self, full: int, stop: int | None = None) -> None:
        super().__init__(full)
        self.calls, self.stop = 0, stop

    def short_term(self, module: nn.Module, steps: int, seed: int) -> Any:
        self.calls += 1
        if self.stop is not None and self.calls >= self.stop:
            raise RuntimeError("killed")
        return super().short_term(module, steps, seed)


def run(strategy: Strategy, run_dir: Path, stop: int | None = None, resume: bool = False) -> Result:
    made = off_problem(fine_network(), "70%")  # the landing scores a network between two members
    full = sum(p.numel() for p in made.traced.module.parameters())
    made = netopt.Problem(made.traced, made.constraints, Killed(full, stop))  # type: ignore[arg-type]
    return strategy.run(made, run_dir=run_dir, resume=resume)


def test_the_landing_is_in_the_runs_history_and_a_run_killed_while_landing_resumes_to_the_same_final(
        tmp_path: Path) -> None:
    whole = run(STRATEGIES["ProgressiveBarrier"](), tmp_path / "whole")
    scored = [p for p in whole.history if p.group.startswith(LANDING)]
    assert scored and whole.final.network.widths == scored[0].widths
    record = json.loads((tmp_path / "whole" / "calibrations.json").read_text())["latency"]
    assert [whole.final.network.widths, whole.final.measured["latency"]] in record["landed"]
    landing_call = len(whole.history) + 1  # the start's score, then every proposal: the landing's is last
    with pytest.raises(ObjectiveError, match="killed"):
        run(STRATEGIES["ProgressiveBarrier"](), tmp_path / "killed", stop=landing_call)
    resumed = run(STRATEGIES["ProgressiveBarrier"](), tmp_path / "killed", resume=True)
    assert resumed.final.network == whole.final.network and resumed.final.measured == whole.final.measured
    assert [p.to_dict() for p in resumed.history] == [p.to_dict() for p in whole.history]
    assert resumed.landing == whole.landing
    read_back = run(STRATEGIES["ProgressiveBarrier"](), tmp_path / "killed", resume=True)  # finished: read back
    assert read_back.landing == whole.landing and read_back.final.network == whole.final.network
    assert [p.to_dict() for p in read_back.history] == [p.to_dict() for p in whole.history]
