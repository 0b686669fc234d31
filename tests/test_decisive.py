"""Decisions by measurement do not hang on noise: a figure checked against a budget takes the usual
side-by-side rounds where they agree, more while its interval straddles the threshold, up to a cap
(then its median decides and the run's record says the decision was close), and a resumed run
decides by the recorded rounds without measuring.

The estimator is a stand-in lookup table whose side-by-side rounds scale the network's true
figure (a function of its MACs) by a scripted or seeded noise: nothing is timed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from itertools import cycle
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from torch import nn

from netopt.constraints import Bound, LatencyConstraint, ReductionSchedule
from netopt.ir import Builder, Network
from netopt.measure.base import Fingerprint, Measurement, summarize
from netopt.runs import RunDir
from netopt.strategies import ProgressiveBarrier, Result
from netopt.strategies.base import Candidate, Problem
from netopt.strategies.budgets import MeasuredBudgets, read_record
from netopt.strategies.decisive import Decisive, Reading
from netopt.testing.problems import StandInTable, problem


class Noisy(StandInTable):
    """Exact estimates and kept figures; side-by-side rounds give the network `noise` times its
    figure beside the exact start."""

    def __init__(self, noise: Iterator[float]) -> None:
        self.noise, self.rounds = noise, 0

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint({"backend": "noisy"})

    def measure_networks(self, traced: Any, nets: Sequence[Network], passes: int = 2) -> list[Measurement]:
        self.rounds += 1
        start, *rest = nets
        return [summarize([self.true(start)] * 3, "ms"), *(summarize([self.true(n) * next(self.noise)] * 3, "ms")
                                                            for n in rest)]


def network() -> Network:
    b = Builder((3, 16, 16))
    x = b.relu(b.bn(b.conv(b.input, 64, 3, stride=2)))
    y = b.relu(b.bn(b.conv(x, 96, 3)))
    x = b.relu(b.add_(x, b.bn(b.conv(y, 64, 1))))
    x = b.relu(b.bn(b.conv(x, 128, 3)))
    return b.build(b.linear(b.flatten(b.adaptive_avgpool(x)), 10))


def budgets(noise: Sequence[float], run_dir: Path, share: float, resume: bool = False) -> tuple[
        MeasuredBudgets, Candidate, Noisy]:
    """MeasuredBudgets on a stand-in whose rounds scale the candidate (the network at 3/4 width)
    by `noise` in turn, against a budget `share` times its true figure."""
    table = Noisy(cycle(noise))
    made = problem(network(), [LatencyConstraint("50%", table, ReductionSchedule("5%"))])
    start = made.traced.network
    candidate = start.with_widths({g: w * 3 // 4 for g, w in start.widths.items()})
    bound = Bound(made.constraints[0], table.true(start), share * table.true(candidate), "measured",
                  table.true(start))
    run_dir.mkdir(exist_ok=True)
    record = read_record(made, run_dir) if resume else {}
    measured = MeasuredBudgets(made, [bound], record, RunDir(run_dir))
    return measured, Candidate(1, candidate, nn.Identity(), 0.0, {"latency": table.true(candidate)}), table


def record(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "calibrations.json").read_text())["latency"]


def test_a_figure_far_from_its_budget_decides_with_the_usual_rounds(tmp_path: Path) -> None:
    measured, candidate, table = budgets([1.01, 0.99, 1.0], tmp_path, share=1.1)
    assert measured.verify(candidate) == {}
    assert table.rounds == Decisive().rounds == 3 and "close" not in record(tmp_path)
    assert candidate.measured["latency"] == pytest.approx(table.true(candidate.network))


def test_a_figure_straddling_its_budget_measures_more_rounds_until_it_is_decisive(tmp_path: Path) -> None:
    measured, candidate, table = budgets([1.0, 1.06, 0.96, *[1.0] * 20], tmp_path, share=1.03)
    assert measured.verify(candidate) == {}
    assert Decisive().rounds < table.rounds < Decisive().most and "close" not in record(tmp_path)
    (widths, ratios), = record(tmp_path)["rounds"]
    assert widths == candidate.network.widths and len(ratios) == table.rounds


def test_a_figure_straddling_its_budget_after_the_most_rounds_is_decided_by_its_median_and_recorded_close(
        tmp_path: Path) -> None:
    measured, candidate, table = budgets([1.05, 0.95], tmp_path, share=1.02)
    misses = measured.verify(candidate)
    assert table.rounds == Decisive().most == 9
    figure = candidate.measured["latency"]
    assert misses == {"latency": figure} and figure == pytest.approx(1.05 * table.true(candidate.network))  # 5 of 9
    (close,) = record(tmp_path)["close"]
    assert close["decision"] == "verify" and close["rounds"] == 9 and close["figure"] == figure
    low, high = close["interval"]
    assert low < close["thresholds"][0] < high


def test_a_resumed_run_decides_by_its_recorded_rounds_without_measuring(tmp_path: Path) -> None:
    first, candidate, _ = budgets([1.05, 0.95], tmp_path, share=1.02)
    misses = first.verify(candidate)
    before = record(tmp_path)
    again, same, table = budgets([float("nan")], tmp_path, share=1.02, resume=True)
    assert again.verify(same) == misses and same.measured == candidate.measured
    assert again.landing_figure(again.bounds[0], same.network) == candidate.measured["latency"]
    assert table.rounds == 0 and record(tmp_path)["close"] == before["close"]  # nothing measured, nothing added


def test_tracking_recalibrates_only_where_the_rounds_agree_the_estimate_strays(tmp_path: Path) -> None:
    measured, candidate, table = budgets([1.05, 1.08, 1.065, *[1.065] * 20], tmp_path, share=1.5)
    measured.track(candidate)  # +6.5%: more than the 5% an estimate may stray, once the rounds agree
    assert table.rounds > Decisive().rounds and record(tmp_path)["added"] == [[candidate.network.widths]]


def test_the_most_rounds_cannot_be_fewer_than_the_usual() -> None:
    with pytest.raises(ValidationError, match="most=2 is below rounds=3"):
        Decisive(most=2)
    assert Reading(1.0, [0.5]).interval() == (float("-inf"), float("inf"))


def seeded(seed: int) -> Iterator[float]:
    rng = random.Random(seed)
    while True:
        yield rng.gauss(1.0, 0.02)


def run(seed: int, run_dir: Path | None = None) -> Result:
    made = problem(network(), [LatencyConstraint("60%", Noisy(seeded(seed)), ReductionSchedule("5%", decay=0.96))])
    return ProgressiveBarrier(short_term_steps=0, long_term_steps=0, progress=False).run(
        Problem(made.traced, made.constraints, made.objective), run_dir=run_dir)


def test_runs_measuring_2_percent_noise_give_the_same_family_and_final(tmp_path: Path) -> None:
    """Seed 5's noise, decided by its usual rounds alone, recalibrates and adds a member."""
    results = [run(seed, tmp_path / str(seed)) for seed in (0, 3, 5)]
    families = {tuple(m.network for m in r.family) for r in results}
    assert len(families) == 1 and len({r.final.network for r in results}) == 1


@pytest.mark.parametrize("level", [0.8, 0.9, 0.95])
def test_the_interval_takes_students_t_within_a_fraction_of_a_percent_of_scipys(level: float) -> None:
    from scipy.stats import t

    from netopt.strategies.decisive import _t

    for df in range(1, 12):
        assert _t(level, df) == pytest.approx(t.ppf((1 + level) / 2, df), rel=2e-3)


def test_a_strategys_most_rounds_reaches_its_measured_budgets() -> None:
    from netopt.errors import ConfigError
    from netopt.strategies import NetAdaptV2
    from netopt.strategies.engine import Engine

    made = problem(network(), [LatencyConstraint("60%", Noisy(seeded(0)), ReductionSchedule("5%"))])
    engine = Engine(made, ProgressiveBarrier(most_rounds=5).config(), short_term_steps=0, seed=0)
    assert engine.budgets.decisive == Decisive(most=5)
    default = Engine(made, NetAdaptV2().config(), short_term_steps=0, seed=0)
    assert default.budgets.decisive == Decisive() and NetAdaptV2(most_rounds=2).config()["most_rounds"] == 2
    with pytest.raises(ConfigError, match="most_rounds 1 must be at least 2"):
        ProgressiveBarrier(most_rounds=1)
