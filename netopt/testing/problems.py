"""Cheap problems for testing strategies and constraints: no data, no training.

`ParamsKept` is a stand-in objective whose "accuracy" is the share of parameters a network
keeps (plus a small seeded jitter, so that ties are broken differently per proposal). It is
deterministic for a seed and costs microseconds, so a strategy can be property-tested on
hundreds of random networks and budgets.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from netopt.bridge import build, trace
from netopt.constraints import Constraint, MACsConstraint, MemoryConstraint, ReductionSchedule
from netopt.ir import Network, macs
from netopt.measure.base import Fingerprint, Measurement, summarize
from netopt.measure.memory import MemoryModel
from netopt.strategies import Problem

__all__ = ["ParamsKept", "problem", "joint_problem", "StandInTable"]


@dataclass(frozen=True)
class Scored:
    score: float
    steps: int


class ParamsKept:
    """Stand-in objective: the share of parameters kept, plus a seeded jitter below 0.01."""

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

    def training_inputs(self, batches: int, seed: int) -> list[torch.Tensor]:
        return []  # nothing is trained, nothing to re-estimate


def problem(net: Network, constraints: Sequence[Constraint], delay: float = 0.0) -> Problem:
    """`net` built with seeded random weights, under `constraints`, scored by ParamsKept."""
    torch.manual_seed(0)
    traced = trace(build(net).eval(), torch.randn(1, *net.input_shape))
    full = sum(p.numel() for p in traced.module.parameters())
    return Problem(traced, list(constraints), ParamsKept(full, delay))  # type: ignore[arg-type]


def joint_problem(net: Network, macs: str, memory: str, delay: float = 0.0) -> Problem:
    """A joint MACs and peak-activation-memory budget (e.g. "45%", "90%") on `net`."""
    constraints = [MACsConstraint(macs, schedule=ReductionSchedule("10%", decay=0.9)),
                   MemoryConstraint(memory, MemoryModel(), schedule=ReductionSchedule("5%"))]
    return problem(net, constraints, delay)


class StandInTable:
    """A MeasuringEstimator that never measures a module nor learns from what it is told: every
    network's figure is exact (0.01 + 1e-6 MACs, ms); subclasses choose the estimates and the
    side-by-side rounds, to test what strategies do with a table that is off or noisy."""

    unit = "ms"
    measure_seconds = 0.0

    @staticmethod
    def true(net: Network) -> float:
        return 0.01 + 1e-6 * macs(net)

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint({"backend": type(self).__name__})

    def estimate(self, net: Network) -> float:
        return self.true(net)

    def measured(self, traced: Any, nets: Sequence[Network]) -> list[Measurement]:
        return [summarize([self.true(n)] * 3, "ms") for n in nets]

    def measure_networks(self, traced: Any, nets: Sequence[Network], passes: int = 2) -> list[Measurement]:
        return self.measured(traced, nets)

    def measure_module(self, module: nn.Module, example_input: Any) -> Measurement:
        raise NotImplementedError

    def calibration(self, net: Network) -> Any:
        return SimpleNamespace(points=[[0.0, 0.0, 0.0]])

    def calibrate(self, traced: Any) -> Any:
        return self.calibration(traced.network)

    def recalibrate(self, traced: Any, nets: Sequence[Network], figures: Sequence[float | None] | None = None) -> Any:
        return self.calibration(traced.network)

    def pin(self, net: Network, points: Sequence[Sequence[float]]) -> None:
        pass
