"""Measuring side by side: figures taken under different loads still compare.

`Drifting` is a device whose speed changes at every window of measurements, cycling through
1x, 1.6x, 2.6x and 4.1x slower (a shared machine whose neighbours come and go). It runs each
model for a known time, spun, not slept, so the timings are exact to microseconds: within a
window, ratios are the truth; across windows, they are off by the drift unless the lookup
table anchors them.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from torch import nn

import netopt
from netopt.lut import LookupTable, units
from netopt.lut.probe import unit_module
from netopt.measure import Backend, Fingerprint, Measurement, MeasureSettings, NoisyMeasurementWarning
from netopt.measure.timing import time_calls, time_interleaved
from netopt.zoo import MobileNetV1

QUICK = MeasureSettings(warmup=1, runs=5, min_seconds=0.0)


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.simplefilter("ignore", NoisyMeasurementWarning)


def cost(module: nn.Module) -> float:
    """The device's time for one call of `module` at speed 1, ms."""
    return 0.05 + 1e-5 * sum(p.numel() for p in module.parameters())


def spin(ms: float) -> None:
    end = time.perf_counter() + ms / 1e3
    while time.perf_counter() < end:
        pass


class Drifting(Backend):
    """Another speed at every window (each `measure`, each `measure_together`)."""

    unit = "ms"

    def __init__(self) -> None:
        self.speed, self.settings, self.windows = 1.0, QUICK, 0

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint({"backend": "drifting-test-device"})

    def _window(self) -> None:
        self.windows += 1
        self.speed = 1.6 ** (self.windows % 4)

    def measure(self, module: nn.Module, example_input: torch.Tensor) -> Measurement:
        self._window()
        ms = cost(module)
        return time_calls(lambda: spin(ms * self.speed), self.settings, self.fingerprint.key)

    def runner(self, module: nn.Module, example_input: torch.Tensor) -> Callable[[], object]:
        ms = cost(module)
        return lambda: spin(ms * self.speed)

    def measure_together(self, items: Sequence[tuple[nn.Module, torch.Tensor]], seed: int = 0,
                         warm: bool = False) -> list[Measurement]:
        self._window()
        return super().measure_together(items, seed, warm)


def traced() -> netopt.Traced:
    torch.manual_seed(0)
    return netopt.trace(MobileNetV1(0.25, 32, num_classes=10).eval(), torch.randn(1, 3, 32, 32))


def test_interleaved_timing_calls_every_run_once_a_cycle_in_changing_orders() -> None:
    calls: list[int] = []
    runs = [lambda i=i: calls.append(i) for i in range(4)]
    taken = time_interleaved(runs, MeasureSettings(warmup=2, runs=6, min_seconds=0.0))
    assert [len(m.samples) for m in taken] == [6] * 4
    timed = calls[8:]  # after 2 warm-ups each
    cycles = [timed[k:k + 4] for k in range(0, len(timed), 4)]
    assert all(sorted(c) == [0, 1, 2, 3] for c in cycles)
    assert len({tuple(c) for c in cycles}) > 1  # not always the same neighbours


class Crowded:
    """Runs that pay for the caches their predecessor took: a call after another run's costs
    its own time plus half the predecessor's (a large model evicts more)."""

    def __init__(self) -> None:
        self.last: int | None = None
        self.costs: list[float] = []

    def run(self, ms: float) -> Callable[[], None]:
        me = len(self.costs)
        self.costs.append(ms)

        def call() -> None:
            penalty = 0.0 if self.last in (None, me) else 0.5 * self.costs[self.last]  # type: ignore[index]
            self.last = me
            spin(ms + penalty)

        return call


def test_warm_visits_time_each_run_from_its_own_caches_whatever_its_company() -> None:
    device = Crowded()
    small, large = device.run(0.2), device.run(2.0)
    settings = MeasureSettings(warmup=1, runs=10, min_seconds=0.0)
    cold = time_interleaved([small, large], settings)
    warm = time_interleaved([small, large], settings, warm=True)
    # each timed straight after the other: 1.2 ms and 2.1 ms, 1.75x; their own: 10x
    assert cold[1].median / cold[0].median < 3
    assert warm[1].median / warm[0].median == pytest.approx(10.0, rel=0.1)


def test_kept_figures_measured_apart_in_time_compare_as_if_side_by_side(tmp_path: Path) -> None:
    tr = traced()
    device = Drifting()
    lut = LookupTable.open(tmp_path / "lut.sqlite", device)
    full, half = tr.network, tr.network.scaled(0.5)
    truth = cost(tr.materialize(half)) / cost(tr.materialize(full))
    (kept_full,) = lut.measured(tr, [full])
    (alone,) = lut.measure_networks(tr, [half], passes=1)  # a later window: the device runs at another speed
    assert abs(alone.median / kept_full.median / truth - 1) > 0.3
    (kept_half,) = lut.measured(tr, [half])  # later still, side by side with the full network
    assert kept_half.median / kept_full.median == pytest.approx(truth, rel=0.05)
    assert lut.measured(tr, [half])[0] == kept_half  # kept: read back, not measured again
    quarter, eighth = tr.network.scaled(0.25), tr.network.scaled(0.125)
    for net, m in zip((quarter, eighth), lut.measured(tr, [quarter, eighth]), strict=True):  # windows apart
        assert m.median / kept_full.median == pytest.approx(cost(tr.materialize(net)) / cost(tr.materialize(full)),
                                                            rel=0.05)


def test_units_measured_in_different_windows_are_at_one_level(tmp_path: Path) -> None:
    tr = traced()
    device = Drifting()
    lut = LookupTable.open(tmp_path / "lut.sqlite", device)
    nets = [tr.network, tr.network.scaled(0.5), tr.network.scaled(0.25)]
    speeds = set()
    for net in nets:  # three calls: at least three windows, at different speeds
        lut.ensure([net])
        speeds.add(device.speed)
    assert len(speeds) >= 2
    levels = []
    for net in nets:
        for u in units(net):
            entry = lut.store.get(lut.signature(u))
            assert entry is not None
            levels.append(entry.median / cost(unit_module(net, u)[0]))
    assert max(levels) / min(levels) < 1.05, "units measured beside the yardstick are at its first level"
    assert lut.layer_sum(nets[1]) < lut.layer_sum(nets[0])


class Bursty(Drifting):
    """Bursts of load that slow a share of the calls in a window 3x, another share each window
    (none, then 70%): medians move with the share, minimums do not (40 runs: every model has
    calls the burst spared)."""

    def __init__(self) -> None:
        super().__init__()
        self.settings = MeasureSettings(warmup=1, runs=40, min_seconds=0.0)

    def _window(self) -> None:
        self.windows += 1
        self.share = 0.7 * (self.windows % 2)
        self.calls = 0

    def runner(self, module: nn.Module, example_input: torch.Tensor) -> Callable[[], object]:
        ms = cost(module)

        def call() -> None:
            self.calls += 1
            spin(ms * (3.0 if (self.calls * 0.618) % 1 < self.share else 1.0))

        return call


def test_a_burst_of_load_in_one_batch_does_not_move_its_units(tmp_path: Path) -> None:
    tr = traced()
    device = Bursty()
    lut = LookupTable.open(tmp_path / "lut.sqlite", device)
    nets = [tr.network, tr.network.scaled(0.5)]
    shares = set()
    for net in nets:  # windows of shares 0 and 0.7 (the yardstick's median 1x, then 3x)
        lut.ensure([net])
        shares.add(device.share)
    assert shares == {0.0, 0.7}
    levels = [lut.store.get(lut.signature(u)).min / cost(unit_module(net, u)[0])  # type: ignore[union-attr]
              for net in nets for u in units(net)]
    assert max(levels) / min(levels) < 1.1, "the minimum the table keeps is scaled by the yardstick's minimum"


def test_a_backend_that_measures_one_model_at_a_time_is_not_anchored(tmp_path: Path) -> None:
    class OneAtATime(Drifting):
        runner = Backend.runner  # type: ignore[assignment]

    device = OneAtATime()
    assert not device.interleaves and Drifting().interleaves
    lut = LookupTable.open(tmp_path / "lut.sqlite", device)
    tr = traced()
    assert lut.yardstick() is None
    lut.ensure([tr.network])
    assert lut.store.get("yardstick") is None
    (m,) = lut.measured(tr, [tr.network.scaled(0.5)])
    assert m.median > 0
