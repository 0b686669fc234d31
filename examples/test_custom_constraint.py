"""Property-testing your own constraint with netopt's Hypothesis strategies.

Say a microcontroller runs a network layer by layer from on-chip SRAM: the largest layer's
weights, input and output must fit at once. That is a resource netopt does not ship; here it
is written as an estimator and a Constraint subclass, and Hypothesis checks, on random
networks, random widths and random joint budgets, what every netopt strategy relies on:

- the estimate is a finite number >= 0 and never grows when any group shrinks;
- a budget given in percent resolves against the starting network;
- ProgressiveBarrier (with netopt's no-training stand-in objective) returns a network within
  the SRAM budget and every other budget drawn, or says the budgets are infeasible.

Run:  .venv/bin/pytest examples/test_custom_constraint.py
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from netopt.constraints import Constraint
from netopt.errors import InfeasibleError
from netopt.ir import Network, OpKind
from netopt.ir.costs import layer_params
from netopt.measure.base import Fingerprint
from netopt.strategies import ProgressiveBarrier, smallest
from netopt.testing import strategies as nst
from netopt.testing.problems import problem


class LargestLayerSRAM:
    """Bytes of the largest conv/linear layer's weights + input + output (int8 inference)."""

    unit = "bytes"
    fingerprint = Fingerprint({"estimator": "largest-layer-sram", "bytes_per_element": 1})

    def estimate(self, network: Network) -> float:
        shapes, worst = network.shapes, 0
        for node in network.nodes:
            if node.op not in (OpKind.CONV2D, OpKind.LINEAR):
                continue
            inputs = sum(math.prod(shapes[i]) for i in node.inputs)
            worst = max(worst, layer_params(network, node) + inputs + math.prod(shapes[node.name]))
        return float(worst)


class SRAMConstraint(Constraint):
    resource = "sram"

    def __init__(self, budget: str | float) -> None:
        super().__init__(budget, LargestLayerSRAM())


@given(nst.networks_with_widths())
def test_the_estimate_is_a_finite_count_that_never_grows_when_shrinking(pair: tuple[Network, Network]) -> None:
    net, smaller = pair
    big, small = LargestLayerSRAM().estimate(net), LargestLayerSRAM().estimate(smaller)
    assert math.isfinite(small) and 0 <= small <= big


@given(nst.networks(), nst.budgets())
def test_a_relative_budget_resolves_against_the_start(net: Network, budget: str) -> None:
    bound = SRAMConstraint(budget).bind(net)
    assert math.isclose(bound.budget, float(budget.rstrip("%")) / 100 * bound.initial)


@settings(max_examples=10, deadline=None)
@given(nst.networks(max_blocks=3), nst.budgets(low=0.3), st.lists(nst.constraints(low=0.3), max_size=2))
def test_netadapt_meets_my_budget_and_the_others_or_says_infeasible(net: Network, budget: str,
                                                                   others: list[Constraint]) -> None:
    adapt = problem(net, [SRAMConstraint(budget), *others])
    try:
        result = ProgressiveBarrier(short_term_steps=0, long_term_steps=0, progress=False).run(adapt)
    except InfeasibleError:
        assert any(b.estimate(smallest(net)) > b.budget for b in adapt.bind())
        return
    assert all(b.estimate(result.final.network) <= b.budget for b in adapt.bind())
