"""Stand-ins shared by strategy tests (and the subprocesses they kill): a cheap objective,
a joint MACs + memory problem, and one fixed small network with a residual."""

from __future__ import annotations

from netopt.ir import Builder, Network
from netopt.testing.problems import ParamsKept
from netopt.testing.problems import joint_problem as problem_for

__all__ = ["ParamsKept", "problem_for", "fixed_net"]


def fixed_net() -> Network:
    b = Builder((3, 16, 16))
    x = b.relu(b.bn(b.conv(b.input, 32, 3, stride=2)))
    y = b.relu(b.bn(b.conv(x, 48, 3)))
    y = b.bn(b.conv(y, 32, 1))
    x = b.relu(b.add_(x, y))
    x = b.relu(b.bn(b.conv(x, 64, 3, stride=2)))
    return b.build(b.linear(b.flatten(b.adaptive_avgpool(x)), 10))
