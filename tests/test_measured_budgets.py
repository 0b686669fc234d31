"""Budgets that hold when measured: relative budgets against the start's measurement, final
networks checked end to end, the lookup table recalibrated when they miss, and all of it
resumable.

Most tests run on `Device`, a backend whose "latency" is a deterministic function of the
module (a call cost, a cost per parameter and per layer): with it a lookup table is exact up
to its calibration, so a deliberately wrong calibration makes estimates miss by a known
factor, and the closed loop must find the budget anyway. One test runs the real ONNX Runtime.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from torch import nn

import netopt
from netopt.app.reports import summary
from netopt.bridge import build
from netopt.constraints import EnergyConstraint, LatencyConstraint, MACsConstraint, ReductionSchedule
from netopt.errors import ConfigError, InfeasibleError, LookupTableError, ObjectiveError
from netopt.lut import Calibration, LookupTable, structure_key
from netopt.lut.table import _at_fraction
from netopt.measure import MeasureSettings, NoisyMeasurementWarning, OnnxRuntimeCPU
from netopt.measure.base import Backend, Fingerprint, Measurement, summarize
from netopt.measure.energy import EnergyModel
from netopt.strategies import NetAdaptV2, Problem, ProgressiveBarrier, RandomSearch, UniformWidth
from netopt.strategies.base import smallest
from netopt.testing.problems import ParamsKept
from netopt.zoo import MobileNetV1


class Device(Backend):
    """0.05 ms a call, 2e-5 ms a parameter, 1e-3 ms a layer: additive, so layer sums are exact."""

    unit = "ms"

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls, self.fail_after = 0, fail_after

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint({"backend": "test-device"})

    def measure(self, module: nn.Module, example_input: torch.Tensor) -> Measurement:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("the device went away")
        params = sum(p.numel() for p in module.parameters())
        layers = sum(1 for m in module.modules() if not list(m.children()))
        return summarize([0.05 + 2e-5 * params + 1e-3 * layers] * 5, "ms", self.fingerprint.key)


def traced() -> netopt.Traced:
    torch.manual_seed(0)
    return netopt.trace(MobileNetV1(0.25, 32, num_classes=10).eval(), torch.randn(1, 3, 32, 32))


def biased_table(path: Path, tr: netopt.Traced, ratio: float = 0.7) -> LookupTable:
    """A table whose calibration estimates every network at `ratio` of what it measures."""
    lut = LookupTable.open(path, Device())
    right = lut.calibrate(tr, max_networks=4)
    wrong = Calibration.fit([(x, y * ratio, *rest) for x, y, *rest in right.points])
    lut.store.put_calibration(structure_key(tr.network), wrong)
    lut.close()
    return LookupTable.open(path, Device())


def latency_problem(lut: LookupTable, tr: netopt.Traced, budget: str | float = "50%",
                    objective: object = None) -> Problem:
    full = sum(p.numel() for p in tr.module.parameters())
    constraint = LatencyConstraint(budget, lut, ReductionSchedule("8%", decay=0.96))
    return Problem(tr, [constraint], objective or ParamsKept(full))  # type: ignore[arg-type]


def test_binding_calibrates_and_resolves_a_relative_budget_against_the_measured_start(tmp_path: Path) -> None:
    tr = traced()
    lut = LookupTable.open(tmp_path / "lut.sqlite", Device())
    with pytest.raises(LookupTableError, match=r"no calibration for this network's structure .*call "
                                               r"lut\.calibrate\(traced\)"):
        lut.estimate(tr.network)
    bound = LatencyConstraint("50%", lut).bind(tr.network, tr)
    assert lut.calibration(tr.network) is not None  # binding calibrated it, and the table keeps it
    start = lut.measured(tr, [tr.network])[0].median
    assert (bound.basis, bound.measured_start, bound.budget) == ("measured", start, pytest.approx(0.5 * start))
    assert LatencyConstraint("50%", lut, basis="estimated").bind(tr.network, tr).basis == "estimated"
    assert LatencyConstraint(0.1, lut).bind(tr.network, tr).budget == 0.1  # absolute: as given, checked as measured
    assert MACsConstraint("50%").bind(tr.network, tr).basis == "estimated"  # MACs are not measured
    calls = lut.backend.calls  # type: ignore[attr-defined]
    again = LookupTable.open(tmp_path / "lut.sqlite", Device())
    figures = [(b.initial, b.budget, b.basis, b.measured_start)
               for b in (LatencyConstraint("50%", t).bind(tr.network, tr) for t in (again, lut))]
    assert figures[0] == figures[1]
    assert lut.backend.calls == calls and again.backend.calls == 0  # type: ignore[attr-defined]  # all kept


def test_a_measured_basis_needs_an_estimator_that_measures() -> None:
    with pytest.raises(ConfigError, match=r"^energy budget basis 'measured' needs an estimator that measures whole "
                                          r"networks .*EnergyModel only estimates"):
        EnergyConstraint("50%", EnergyModel(), basis="measured")


def test_a_budget_below_the_smallest_networks_measurement_is_refused_with_the_floor(tmp_path: Path) -> None:
    tr = traced()
    lut = LookupTable.open(tmp_path / "lut.sqlite", Device())
    floor = tr.network.with_widths({g.id: g.min_width for g in tr.network.groups})
    with pytest.raises(InfeasibleError, match=r"latency budget .* cannot be met: the smallest network the channel "
                                              r"groups allow measures .* end to end \(\d+% of the start's measured"):
        ProgressiveBarrier(short_term_steps=0, long_term_steps=0).run(latency_problem(lut, tr, "1%"))
    assert lut.measured(tr, [floor])[0].median > 0.01 * lut.measured(tr, [tr.network])[0].median


@pytest.mark.parametrize("make", [
    lambda: ProgressiveBarrier(short_term_steps=0, long_term_steps=0),
    lambda: NetAdaptV2(supernet_steps=0, long_term_steps=0, samples=3, bn_batches=0),
    lambda: UniformWidth(short_term_steps=0, long_term_steps=0),
    lambda: RandomSearch(short_term_steps=0, long_term_steps=0, trials=12),
], ids=["ProgressiveBarrier", "NetAdaptV2", "UniformWidth", "RandomSearch"])
def test_every_strategy_meets_the_budget_as_measured_though_its_table_estimates_30_percent_low(
        tmp_path: Path, make: object) -> None:
    tr = traced()
    lut = biased_table(tmp_path / "lut.sqlite", tr)
    problem = latency_problem(lut, tr)
    budget = problem.bind()[0].budget
    before = len(lut.calibration(tr.network).points)  # type: ignore[union-attr]
    result = make().run(problem, run_dir=tmp_path / "run")  # type: ignore[operator]
    measured = result.final.measured["latency"]
    assert measured <= budget and measured == lut.measured(tr, [result.final.network])[0].median
    assert result.basis == {"latency": "measured"} and result.budgets == {"latency": budget}
    assert len(lut.calibration(tr.network).points) > before  # type: ignore[union-attr]  # what it measured was added
    open_loop = 0.7 * measured  # the biased table's figure for the same network: it would have stopped far higher
    assert open_loop < budget


def test_an_iterative_strategy_measures_as_it_goes_and_recalibrates_before_its_estimates_reach_the_budget(
        tmp_path: Path) -> None:
    """The closed loop: every member is measured as the strategy goes on from it, so a table that
    misjudges the strategy's networks (here: 30% low) is recalibrated at the first iteration,
    not at a missed verification at the end, and the run lands just within the budget."""
    tr = traced()
    lut = biased_table(tmp_path / "lut.sqlite", tr)
    problem = latency_problem(lut, tr)
    budget = problem.bind()[0].budget
    result = ProgressiveBarrier(short_term_steps=0, long_term_steps=0).run(problem, run_dir=tmp_path / "run")
    record = json.loads((tmp_path / "run" / "calibrations.json").read_text())["latency"]
    members = {str(m.iteration): m for m in result.family}
    first = min(map(int, record["tracked"]))  # the first member estimated within NEAR of the budget
    assert first <= 2 and str(result.final.iteration) in record["tracked"]  # and the last
    for iteration, figure in record["tracked"].items():
        assert figure == pytest.approx(lut.measured(tr, [members[iteration].network])[0].median)
    assert record["added"][0] == [members[str(first)].network.widths]
    assert all(record["given"])  # every addition a tracked one: no verification missed
    assert 0.9 * budget <= result.final.measured["latency"] <= budget


class Drifting(Device):
    """Device on a machine that slows down as it works: every measurement 0.3% slower than the last."""

    def measure(self, module: nn.Module, example_input: torch.Tensor) -> Measurement:
        m = Device.measure(self, module, example_input)
        return summarize([m.median * (1 + 0.003 * self.calls)] * 5, "ms", self.fingerprint.key)


def test_a_relative_budget_is_checked_side_by_side_with_the_start_so_the_machines_drift_cancels(
        tmp_path: Path) -> None:
    tr = traced()
    lut = LookupTable.open(tmp_path / "lut.sqlite", Drifting())
    problem = latency_problem(lut, tr)
    lut.calibrate(tr)  # what binding would do: kept, and found by the run
    result = ProgressiveBarrier(short_term_steps=0, long_term_steps=0, land=False).run(  # the loop's drift alone
        problem, run_dir=tmp_path / "run")
    final = result.final

    def true(net: netopt.Network) -> float:
        return Device().measure(build(net), tr.example_input()).median

    assert final.measured["latency"] / result.starts["latency"] <= 0.5 and true(final.network) / true(tr.network) <= 0.5
    # the calibration, measured while the machine slowed, strays: the networks the run tracked
    # joined it with their figures side by side with the start, at the start's level, drift-free
    record = json.loads((tmp_path / "run" / "calibrations.json").read_text())["latency"]
    assert record["added"] and all(record["given"]), "the drift is taken for a miss"
    assert record["tracked"][str(final.iteration)] == final.measured["latency"]  # verified by that one measurement
    level = result.starts["latency"] / true(tr.network)
    points = {x: y for x, y, *_ in lut.calibration(tr.network).points}  # type: ignore[union-attr]
    for (widths,), figure in zip(record["added"], record["verified"], strict=True):
        net = tr.network.with_widths(widths)
        assert figure == pytest.approx(level * true(net), rel=0.02) and points[lut.layer_sum(net)] == figure
    kept = lut.measured(tr, [final.network])[0].median  # measured minutes after the start was
    assert kept / result.starts["latency"] > 0.5, "a figure kept from another minute would have missed"
    assert "% of the start measured side by side" in summary(result)


def test_iterations_continue_from_the_measured_figure_and_a_resumed_run_gives_the_same_result(tmp_path: Path) -> None:
    """Killed after the table was recalibrated, a run resumes to the uninterrupted run's result."""
    tr = traced()
    biased_table(tmp_path / "pristine.sqlite", tr).close()

    def run(name: str, objective: object = None, resume: bool = False) -> netopt.strategies.Result:
        if not resume:
            shutil.copy(tmp_path / "pristine.sqlite", tmp_path / f"{name}.sqlite")
        lut = LookupTable.open(tmp_path / f"{name}.sqlite", Device())
        return ProgressiveBarrier(short_term_steps=0, long_term_steps=0).run(
            latency_problem(lut, tr, "65%", objective=objective), run_dir=tmp_path / name, resume=resume)

    whole = run("whole")
    record = json.loads((tmp_path / "whole" / "calibrations.json").read_text())
    assert record["latency"]["added"]  # the run recalibrated its table at least once
    calls = _Counting.total(tr, whole)
    for stop in (calls - 2, calls - 5):
        name = f"stopped-{stop}"
        with pytest.raises(ObjectiveError, match="killed"):
            run(name, _Counting(tr, stop))
        if stop == calls - 2:  # killed after the recalibration
            assert json.loads((tmp_path / name / "calibrations.json").read_text())["latency"]["added"]
        resumed = run(name, resume=True)
        assert resumed.final.network.widths == whole.final.network.widths
        assert [p.to_dict() for p in resumed.history] == [p.to_dict() for p in whole.history]
        assert resumed.final.measured == whole.final.measured
    # a run begun before netopt tracked its networks resumes as it began: without tracking
    with pytest.raises(ObjectiveError, match="killed"):
        run("older", _Counting(tr, calls - 5))
    path = tmp_path / "older" / "calibrations.json"
    record = json.loads(path.read_text())
    del record["latency"]["tracked"]
    path.write_text(json.dumps(record))
    older = run("older", resume=True)
    assert "tracked" not in json.loads(path.read_text())["latency"]
    assert older.final.measured["latency"] <= older.budgets["latency"]


class _Counting(ParamsKept):
    """ParamsKept that raises at its `stop`-th call: a run killed there."""

    def __init__(self, tr: netopt.Traced, stop: int | None = None) -> None:
        super().__init__(sum(p.numel() for p in tr.module.parameters()))
        self.calls, self.stop = 0, stop

    def short_term(self, module: nn.Module, steps: int, seed: int) -> object:  # type: ignore[override]
        self.calls += 1
        if self.stop is not None and self.calls >= self.stop:
            raise RuntimeError("killed")
        return super().short_term(module, steps, seed)

    @staticmethod
    def total(tr: netopt.Traced, result: netopt.strategies.Result) -> int:
        return len(result.history) + 3  # every proposal, the start's score, the final's long term and test


def test_an_interrupted_calibration_resumes_and_nothing_half_written_is_kept(tmp_path: Path) -> None:
    tr = traced()
    uninterrupted = LookupTable.open(tmp_path / "whole.sqlite", Device())
    whole = uninterrupted.calibrate(tr, max_networks=8)
    lut = LookupTable.open(tmp_path / "lut.sqlite", Device())
    lut.layer_sum(tr.network)  # the units first: the failure below comes while whole networks are measured
    units = lut.backend.calls  # type: ignore[attr-defined]
    lut.backend.fail_after = units + 30  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="went away"):
        lut.calibrate(tr, max_networks=8)
    assert lut.calibration(tr.network) is None and LookupTable.open(tmp_path / "lut.sqlite", Device()).calibration(
        tr.network) is None
    again = LookupTable.open(tmp_path / "lut.sqlite", Device())
    assert again.calibrate(tr, max_networks=8) == whole
    assert again.backend.calls < uninterrupted.backend.calls - 30  # type: ignore[attr-defined]  # kept ones reused


def test_calibration_stays_within_its_stated_number_of_networks(tmp_path: Path) -> None:
    tr = traced()
    lut = LookupTable.open(tmp_path / "lut.sqlite", Device())
    for most in (2, 5, 9):
        assert len(lut.calibrate(tr, max_networks=most).points) <= most
    with pytest.raises(LookupTableError, match=r"max_networks=1\) needs at least 2"):
        lut.calibrate(tr, max_networks=1)


@pytest.mark.slow
def test_on_onnx_runtime_the_final_network_is_checked_end_to_end(tmp_path: Path) -> None:
    """A network this small is mostly call costs (its smallest variant measures 70-90% of it), so
    the budget lies half way between the two as this machine measures them now."""
    warnings.simplefilter("ignore", NoisyMeasurementWarning)
    tr = traced()
    lut = LookupTable.open(tmp_path / "lut.sqlite", OnnxRuntimeCPU(threads=1, settings=MeasureSettings(
        warmup=2, runs=10, min_seconds=0.0)))
    start, floor = (m.median for m in lut.measured(tr, [tr.network, smallest(tr.network)]))
    problem = latency_problem(lut, tr, (start + floor) / 2)
    bound = problem.bind()[0]
    result = ProgressiveBarrier(short_term_steps=0, long_term_steps=0).run(problem)
    assert bound.basis == "measured" and bound.budget == (start + floor) / 2
    assert result.final.measured["latency"] <= bound.budget
    assert result.final.measured["latency"] == lut.measured(tr, [result.final.network])[0].median


class ColdWeights(Device):
    """Compute costs 1e-6 ms a multiply-accumulate, and whole networks, timed side by side with
    others, fetch their weights anew every call (2e-6 ms a parameter), which a unit timed warm on
    its own does not: what ONNX Runtime does on a CPU whose caches a neighbour's run emptied. Its
    layer sums miss the weights' share (a third of the full network's cost)."""

    def measure(self, module: nn.Module, example_input: torch.Tensor) -> Measurement:
        macs = [0]

        def count(layer: nn.Module, inputs: object, output: torch.Tensor) -> None:
            macs[0] += output.numel() * layer.weight[0].numel()  # type: ignore[index]

        hooks = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        with torch.no_grad():
            module(example_input)
        for h in hooks:
            h.remove()
        return summarize([0.05 + 1e-6 * macs[0]] * 5, "ms", self.fingerprint.key)

    def measure_together(self, items: Sequence[tuple[nn.Module, torch.Tensor]], seed: int = 0,
                         warm: bool = False) -> list[Measurement]:
        return [summarize([self.measure(m, x).median + 2e-6 * sum(p.numel() for p in m.parameters())] * 5, "ms",
                          self.fingerprint.key) for m, x in items]


def test_a_calibration_prices_weights_that_the_layer_sum_misses(tmp_path: Path) -> None:
    tr = traced()
    lut = LookupTable.open(tmp_path / "lut.sqlite", ColdWeights())
    cal = lut.calibrate(tr)
    assert cal.weighted
    net = tr.network
    lean = [_at_fraction(net, f, seed, tilt) for f in (0.3, 0.6) for seed, tilt in ((7, 0.4), (8, -0.4), (9, 0.0))]
    measured = [m.median for m in lut.measure_networks(tr, lean)]
    errors = [lut.estimate(n) / m - 1 for n, m in zip(lean, measured, strict=True)]
    assert max(map(abs, errors)) < 0.02, errors
    line = Calibration.fit([p[:2] for p in cal.points])  # the layer sum alone, on the same networks
    assert max(abs(line.apply(lut.layer_sum(n)) / m - 1) for n, m in zip(lean, measured, strict=True)) > 0.05
