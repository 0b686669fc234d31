"""ChooseNumFilters from the current widths down (`nearest_meeting`): a bisection's answer, near probes."""

from __future__ import annotations

import pytest
import torch

import netopt
from netopt.constraints import MACsConstraint
from netopt.ir import Network
from netopt.strategies.nearest import nearest_meeting
from netopt.strategies.progressive import _steps_down, largest_meeting
from netopt.zoo import MobileNetV2


class Counted:
    """A bound whose estimates are counted: which networks a search asked about."""

    def __init__(self, net: Network) -> None:
        self.bound = MACsConstraint("50%").bind(net)
        self.resource = self.bound.resource
        self.asked: list[Network] = []

    def estimate(self, net: Network) -> float:
        self.asked.append(net)
        return self.bound.estimate(net)


def _network() -> Network:
    torch.manual_seed(0)
    return netopt.trace(MobileNetV2(0.5, num_classes=10, in_channels=1).eval(), torch.zeros(1, 1, 32, 32)).network


@pytest.mark.parametrize("share", [0.999, 0.97, 0.9, 0.6, 0.2, 0.01])
def test_nearest_meeting_is_the_bisections_answer_for_every_block(share: float) -> None:
    net = _network()
    ids = [g.id for g in net.groups]
    for block in [(g,) for g in ids[:6]] + [tuple(ids[k:k + 3]) for k in range(0, len(ids) - 2, 4)]:
        bound = MACsConstraint("50%").bind(net)
        targets = {bound.resource: share * bound.initial}
        near, far = nearest_meeting(net, block, [bound], targets), largest_meeting(net, block, [bound], targets)
        assert (near is None) == (far is None), block
        if near is not None and far is not None:
            assert near.network == far.network and near.resources == far.resources


def test_nearest_meeting_asks_about_nothing_past_twice_the_answers_step() -> None:
    net = _network()
    block = tuple(g.id for g in net.groups if len(g.valid_widths()) >= 12)[:3]
    steps = _steps_down(net, block)
    counted = Counted(net)
    target = {counted.resource: counted.bound.estimate(net.with_widths(steps[2]))}
    answer = nearest_meeting(net, block, [counted], target)  # type: ignore[list-item]
    assert answer is not None and answer.network == net.with_widths(steps[2])
    deepest = max(steps.index({g: n.widths[g] for g in block}) for n in counted.asked)
    assert deepest <= 2 * 2 + 1 < len(steps) - 1  # a bisection would have asked about the last step first
    assert nearest_meeting(net, block, [counted], {counted.resource: 0.0}) is None  # type: ignore[list-item]
