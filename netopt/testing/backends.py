"""A contract every measurement `Backend` passes: use it for your own backends too.

    from netopt.testing.backends import check_backend
    check_backend(MyBackend())

It measures a small conv network and checks the Measurement's invariants, that the
fingerprint is stable and identifies the platform, and that a bigger network costs more.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from netopt.measure.base import Backend, Measurement

__all__ = ["check_backend", "check_measurement", "small_model"]


def small_model(width: int = 8, size: int = 16) -> tuple[nn.Module, torch.Tensor]:
    """A conv-BN-ReLU stack with a linear head, and an input for it."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(width, 10),
    )
    return model.eval(), torch.randn(1, 3, size, size)


def check_measurement(m: Measurement, unit: str) -> None:
    """The invariants of any Measurement."""
    assert m.unit == unit, f"unit {m.unit!r}, backend says {unit!r}"
    assert m.samples and all(math.isfinite(s) and s >= 0 for s in m.samples), "samples must be finite, >= 0"
    assert m.min == min(m.samples), "min is the smallest sample"
    assert m.min <= m.median <= m.p90 <= max(m.samples), "min <= median <= p90 <= max"
    assert m.iqr >= 0 and m.iqr_ratio >= 0


def check_backend(backend: Backend, runs_at_least: int = 1) -> None:
    """Run the contract against `backend`; raises AssertionError naming the broken rule."""
    model, x = small_model()
    first = backend.measure(model, x)
    check_measurement(first, backend.unit)
    assert len(first.samples) >= runs_at_least, f"{len(first.samples)} samples, expected >= {runs_at_least}"
    assert first.fingerprint == backend.fingerprint.key, "a measurement carries its backend's fingerprint key"
    assert backend.fingerprint.key == backend.fingerprint.key, "the fingerprint is stable"
    assert backend.fingerprint.fields.get("backend"), "the fingerprint names the backend"
    big, big_x = small_model(width=64, size=64)
    assert backend.measure(big, big_x).min > first.min, "a network with ~100x the work must cost more"
    assert model.training is False, "measuring must not change the module's mode"
