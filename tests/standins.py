"""Stand-ins shared by strategy tests (and the subprocesses they kill): a cheap objective."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

import netopt
from netopt.bridge import build
from netopt.constraints import MACsConstraint, MemoryConstraint, ReductionSchedule
from netopt.ir import Builder, Network
from netopt.measure.memory import MemoryModel
from netopt.strategies import Problem


@dataclass(frozen=True)
class Scored:
    score: float
    steps: int


class ParamsKept:
    """Stand-in objective: 'accuracy' is the share of parameters kept, plus a seeded jitter.
    No training; deterministic for a seed, so strategies can be property-tested fast."""

    def __init__(self, full: int, delay: float = 0.0) -> None:
        self.full, self.delay = full, delay

    def short_term(self, module: nn.Module, steps: int, seed: int) -> Scored:
        time.sleep(self.delay)
        kept = sum(p.numel() for p in module.parameters()) / self.full
        jitter = torch.rand(1, generator=torch.Generator().manual_seed(seed)).item() * 0.01
        return Scored(kept + jitter, steps)

    def long_term(self, module: nn.Module, steps: int, seed: int) -> Scored:
        return self.short_term(module, steps, seed)

    def test(self, module: nn.Module) -> float:
        return self.short_term(module, 0, 0).score


def problem_for(net: Network, macs: str, memory: str, delay: float = 0.0) -> Problem:
    torch.manual_seed(0)
    traced = netopt.trace(build(net).eval(), torch.randn(1, *net.input_shape))
    constraints = [MACsConstraint(macs, schedule=ReductionSchedule("10%", decay=0.9)),
                   MemoryConstraint(memory, MemoryModel(), schedule=ReductionSchedule("5%"))]
    full = sum(p.numel() for p in traced.module.parameters())
    return Problem(traced, constraints, ParamsKept(full, delay))  # type: ignore[arg-type]



def fixed_net() -> Network:
    b = Builder((3, 16, 16))
    x = b.relu(b.bn(b.conv(b.input, 32, 3, stride=2)))
    y = b.relu(b.bn(b.conv(x, 48, 3)))
    y = b.bn(b.conv(y, 32, 1))
    x = b.relu(b.add_(x, y))
    x = b.relu(b.bn(b.conv(x, 64, 3, stride=2)))
    return b.build(b.linear(b.flatten(b.adaptive_avgpool(x)), 10))


