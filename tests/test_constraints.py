"""Constraints are data: budgets, schedules (Eq. 2) and violations."""

from __future__ import annotations

import math

import pytest
from hypothesis import given

from netopt.constraints import (
    EnergyConstraint,
    LatencyConstraint,
    MACsConstraint,
    MemoryConstraint,
    ParamsConstraint,
    ReductionSchedule,
)
from netopt.errors import ConfigError
from netopt.ir import Builder, Network, macs, params
from netopt.measure.energy import EnergyModel
from netopt.measure.memory import MemoryModel
from netopt.testing import strategies as nst


def small() -> Network:
    b = Builder((3, 16, 16))
    x = b.relu(b.bn(b.conv(b.input, 32, 3, stride=2)))
    x = b.relu(b.bn(b.conv(x, 32, 3)))
    return b.build(b.linear(b.flatten(b.adaptive_avgpool(x)), 10))


def test_absolute_and_relative_budgets_bind_to_the_start() -> None:
    net = small()
    rel = MACsConstraint("50%").bind(net)
    assert rel.initial == macs(net) and rel.budget == pytest.approx(macs(net) / 2)
    assert MACsConstraint(1e5).bind(net).budget == 1e5
    assert MACsConstraint("1e5MACs").bind(net).budget == 1e5
    assert rel.violation(net) == pytest.approx(1.0)  # twice the budget
    half = net.with_widths({"conv2d0": 16})
    assert ParamsConstraint("90%").bind(net).violation(half) < 0


def test_schedule_tightens_by_its_own_decaying_step_and_stops_at_the_budget() -> None:
    net = small()
    bound = MACsConstraint("50%", schedule=ReductionSchedule("10%", decay=0.5)).bind(net)
    start = bound.initial
    assert bound.target(0, start) == pytest.approx(start * 0.9)
    assert bound.target(1, start * 0.9) == pytest.approx(start * 0.9 - start * 0.05)
    assert bound.target(3, start * 0.51) == bound.budget  # never asks below the budget
    paper = ReductionSchedule(0.5, decay=0.96)  # 0.5 ms initial, as the paper's small MobileNetV1
    assert paper.reduction(10, start=99.0) == pytest.approx(0.5 * 0.96**10)


@pytest.mark.parametrize("bad", [float("nan"), -1, 0, "0%", "-5ms", "nan", "fast", True, None])
def test_nan_negative_zero_and_nonsense_budgets_are_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="budget"):
        MACsConstraint(bad)  # type: ignore[arg-type]


def test_units_must_match_the_estimator() -> None:
    with pytest.raises(ConfigError, match=r"in 'ms' but this resource is measured in 'E_MAC'"):
        EnergyConstraint("3ms", EnergyModel())
    with pytest.raises(ConfigError, match="schedule initial reduction is in 'ms'"):
        MemoryConstraint("50%", MemoryModel(), schedule=ReductionSchedule("1ms"))
    with pytest.raises(ConfigError, match=r"decay 1.5 must be in \(0, 1\]"):
        ReductionSchedule("2%", decay=1.5)
    with pytest.raises(ConfigError, match="has no estimate"):
        LatencyConstraint("50%", object())  # type: ignore[arg-type]


@given(nst.networks_with_widths())
def test_indirect_constraints_read_the_ir_exactly(pair: tuple[Network, Network]) -> None:
    net, smaller = pair
    m, p = MACsConstraint("100%").bind(net), ParamsConstraint("100%").bind(net)
    assert m.estimate(smaller) == macs(smaller) and p.estimate(smaller) == params(smaller)
    assert m.violation(smaller) <= 0 and p.violation(smaller) <= 0
    assert math.isclose(m.violation(net), 0.0, abs_tol=1e-12)


def test_constraint_is_abstract_until_a_subclass_names_its_resource() -> None:
    from netopt.constraints import Constraint
    from netopt.constraints.resources import MACs
    from netopt.errors import ConfigError

    with pytest.raises(ConfigError, match="subclass Constraint with a `resource` name"):
        Constraint("50%", MACs())

    class Ops(Constraint):
        resource = "ops"

    assert Ops("50%", MACs()).resource == "ops"
