"""The contract every measurement `Backend` (and every IR estimator) keeps, as test classes to subclass.

    import pytest
    from netopt.testing.backends import BackendContract

    class TestMyBackend(BackendContract):
        runs_at_least = 10

        @pytest.fixture
        def backend(self):
            return MyBackend(settings=MeasureSettings(warmup=2, runs=10, min_seconds=0.0))

A backend measures a small conv network within the Measurement's invariants, keeps a stable
fingerprint that names it, charges a bigger network more, and leaves the module's mode alone.
An estimator (`EstimatorContract`, fixture `estimator`) prices an IR network: a finite
non-negative figure, more for a wider network, under a stable fingerprint. netopt runs both on
every registered backend (tests/test_measure.py). `check_backend(backend)` runs the backend
contract in one call.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from netopt.ir import Builder, Network
from netopt.measure.base import Backend, Estimator, Measurement

__all__ = ["BackendContract", "EstimatorContract", "check_backend", "check_measurement", "small_model"]


def small_model(width: int = 8, size: int = 16) -> tuple[nn.Module, torch.Tensor]:
    """A conv-BN-ReLU stack with a linear head, and an input for it."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(width, 10),
    )
    return model.eval(), torch.randn(1, 3, size, size)


def small_network(width: int = 8, size: int = 16) -> Network:
    """`small_model`'s shape as an IR network."""
    b = Builder((3, size, size))
    x = b.relu(b.bn(b.conv(b.input, width, 3)))
    x = b.relu(b.conv(x, width, 3))
    return b.build(b.linear(b.flatten(b.adaptive_avgpool(x)), 10))


def check_measurement(m: Measurement, unit: str) -> None:
    """The invariants of any Measurement."""
    assert m.unit == unit, f"unit {m.unit!r}, backend says {unit!r}"
    assert m.samples and all(math.isfinite(s) and s >= 0 for s in m.samples), "samples must be finite, >= 0"
    assert m.min == min(m.samples), "min is the smallest sample"
    assert m.min <= m.median <= m.p90 <= max(m.samples), "min <= median <= p90 <= max"
    assert m.iqr >= 0 and m.iqr_ratio >= 0


def _measures_within_the_invariants(backend: Backend, runs_at_least: int) -> Measurement:
    model, x = small_model()
    first = backend.measure(model, x)
    check_measurement(first, backend.unit)
    assert len(first.samples) >= runs_at_least, f"{len(first.samples)} samples, expected >= {runs_at_least}"
    assert first.fingerprint == backend.fingerprint.key, "a measurement carries its backend's fingerprint key"
    assert model.training is False, "measuring must not change the module's mode"
    return first


def _fingerprint_is_stable_and_named(backend: Backend) -> None:
    assert backend.fingerprint.key == backend.fingerprint.key, "the fingerprint is stable"
    assert backend.fingerprint.fields.get("backend"), "the fingerprint names the backend"


def _bigger_costs_more(backend: Backend, small: Measurement) -> None:
    big, big_x = small_model(width=64, size=64)
    assert backend.measure(big, big_x).min > small.min, "a network with ~100x the work must cost more"


def check_backend(backend: Backend, runs_at_least: int = 1) -> None:
    """Run the contract against `backend`; raises AssertionError naming the broken rule."""
    first = _measures_within_the_invariants(backend, runs_at_least)
    _fingerprint_is_stable_and_named(backend)
    _bigger_costs_more(backend, first)


class BackendContract:
    """The Backend contract as tests: subclass it and override the `backend` fixture."""

    runs_at_least: ClassVar[int] = 1
    """The fewest timed samples a measurement may carry (the fixture's protocol's `runs`)."""

    @pytest.fixture
    def backend(self) -> Backend:
        """Override: a backend of yours, with a quick protocol."""
        raise NotImplementedError("override the backend fixture: return MyBackend(settings=MeasureSettings(...))")

    def test_a_measurement_keeps_its_invariants(self, backend: Backend) -> None:
        _measures_within_the_invariants(backend, self.runs_at_least)

    def test_the_fingerprint_is_stable_and_names_the_backend(self, backend: Backend) -> None:
        _fingerprint_is_stable_and_named(backend)

    def test_a_bigger_network_costs_more(self, backend: Backend) -> None:
        model, x = small_model()
        _bigger_costs_more(backend, backend.measure(model, x))


class EstimatorContract:
    """The estimator contract as tests: subclass it and override the `estimator` fixture."""

    @pytest.fixture
    def estimator(self) -> Estimator:
        """Override: an estimator of yours (an IR network in, a figure out)."""
        raise NotImplementedError("override the estimator fixture: return MyEstimator()")

    def test_an_estimate_is_finite_and_non_negative(self, estimator: Estimator) -> None:
        value = estimator.estimate(small_network())
        assert math.isfinite(value) and value >= 0, f"estimate {value!r} must be finite and >= 0"
        assert isinstance(getattr(estimator, "unit", None), str), "an estimator names its unit"

    def test_the_fingerprint_is_stable(self, estimator: Estimator) -> None:
        fingerprint: Any = estimator.fingerprint
        assert fingerprint.key == estimator.fingerprint.key and fingerprint.fields, "a stable, non-empty fingerprint"

    def test_a_wider_network_costs_more(self, estimator: Estimator) -> None:
        small, wide = estimator.estimate(small_network()), estimator.estimate(small_network(width=64, size=64))
        assert wide > small, f"a network with ~100x the work must cost more ({wide} <= {small})"
