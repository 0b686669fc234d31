"""Budgets as measured: the estimates a strategy steers by, corrected by what it measures.

A budget whose constraint is estimated by a lookup table is checked by measurement
(`Bound.basis == "measured"`). `MeasuredBudgets` keeps that loop closed for one run: `verify`
measures a chosen network end to end and, where it misses a budget its estimate met, adds it
(and the family) to the table's calibration; `track` measures each network an iterative
strategy goes on from once its estimate nears the budget, and recalibrates where the estimate
strays. A relative budget is measured side by side with the start, so the machine's drift
between minutes cancels, in rounds until the figure is decisive against the threshold it is
checked by (`netopt.strategies.decisive`: noise does not decide).

The run directory keeps a `TableRecord` per table (calibrations.json, versioned with the run
directory): the calibration each table started with and every network added since, with its
figure, and every side-by-side round measured, so that a resumed run estimates each proposal
and decides each check as the stopped one did.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netopt.errors import LookupTableError, first_line
from netopt.measure.base import MeasuringEstimator, NoisyMeasurementWarning
from netopt.runs import RunDir, RunError
from netopt.strategies.base import Candidate, Problem
from netopt.strategies.decisive import Decisive, Reading

if TYPE_CHECKING:
    from netopt.constraints import Bound
    from netopt.ir import Network

__all__ = ["MeasuredBudgets", "TableRecord", "read_record", "TRACKED", "NEAR"]

LOG = logging.getLogger("netopt.progress")
TRACKED = 0.05
"""How far an iterative strategy's estimate may stray from its network's measurement before the
table is recalibrated (`MeasuredBudgets.track`): half the ±10% an estimate is held to."""
NEAR = 1.25
"""An iterative strategy measures the networks it goes on from once their estimates come within
this factor of the budget (`MeasuredBudgets.track`)."""

Widths = dict[str, int]


@dataclass
class TableRecord:
    """One lookup table's part of a run's calibration record.

    `points`: the calibration the run started with; `added`: the networks added since, in order
    (each addition a list of width assignments, the last the one that missed or strayed);
    `verified`: each addition's figure for that last network; `given`: whether that figure was
    measured side by side with the start; `tracked`: iteration -> the figure `track` measured
    (None for a run begun before netopt tracked, which resumes without tracking); `landed`: the
    (widths, figure) of every network the landing measured (`netopt.strategies.landing`);
    `rounds`: (widths, each side-by-side round's ratio to the start) of every network measured
    against a relative budget (`netopt.strategies.decisive`), so a resumed run decides by them;
    `close`: the decisions still straddling their threshold after the most rounds."""

    points: list[list[float]]
    added: list[list[Widths]] = field(default_factory=list)
    verified: list[float | None] = field(default_factory=list)
    given: list[bool] = field(default_factory=list)
    tracked: dict[str, float] | None = field(default_factory=dict)
    landed: list[tuple[Widths, float]] = field(default_factory=list)
    rounds: list[tuple[Widths, list[float]]] = field(default_factory=list)
    close: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> TableRecord:
        """Checked as it is read: a damaged record raises ValueError naming what is wrong."""
        points = [[float(v) for v in p] for p in doc["points"]]
        if not points:
            raise ValueError("no calibration points")
        added = doc["added"]
        if not all(isinstance(w, dict) for step in added for w in step):
            raise ValueError("added networks are not widths")
        verified = doc.get("verified", [None] * len(added))
        if not all(v is None or isinstance(v, float | int) for v in verified):
            raise ValueError("verified figures are not numbers")
        tracked = doc.get("tracked")  # absent: a run begun before netopt tracked
        if "tracked" in doc and not (isinstance(tracked, dict) and all(isinstance(v, float | int)
                                                                       for v in tracked.values())):
            raise ValueError("tracked figures are not numbers")
        given = doc.get("given", [False] * len(added))
        if not all(isinstance(v, bool) for v in given):
            raise ValueError("given flags are not true or false")
        landed = [(dict(w), float(v)) for w, v in doc.get("landed", [])]  # absent: a run begun before landing
        rounds = [(dict(w), [float(r) for r in rs]) for w, rs in doc.get("rounds", [])]  # absent: before rounds
        close = [dict(c) for c in doc.get("close", [])]
        return cls(points, added, list(verified), list(given), tracked, landed, rounds, close)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"points": self.points, "added": self.added}
        if self.tracked is not None:
            doc["tracked"] = self.tracked
        if self.added:
            doc.update(verified=self.verified, given=self.given)
        if self.landed:
            doc["landed"] = [[w, v] for w, v in self.landed]
        if self.rounds:
            doc["rounds"] = [[w, rs] for w, rs in self.rounds]
        if self.close:
            doc["close"] = self.close
        return doc


def read_record(problem: Problem, run_dir: str | Path) -> dict[str, TableRecord]:
    """A resumed run's calibration record, its starting calibrations pinned on their tables."""
    raw = RunDir(run_dir).calibrations() if Path(run_dir).is_dir() else {}
    record: dict[str, TableRecord] = {}
    try:
        for c in problem.constraints:
            if c.resource in raw and isinstance(c.estimator, MeasuringEstimator):
                record[c.resource] = TableRecord.from_json(raw[c.resource])
                c.estimator.pin(problem.traced.network, record[c.resource].points)
    except (AttributeError, KeyError, TypeError, ValueError, LookupTableError) as exc:
        raise RunError(f"{Path(run_dir) / RunDir.CALIBRATIONS} is damaged ({first_line(exc, 80)}); it holds the "
                       "calibrations the run estimated with: restore it, or start a new run") from None
    return record


def table(bound: Bound) -> MeasuringEstimator:
    """A budget checked by measurement: its estimator measures (a lookup table)."""
    assert isinstance(bound.constraint.estimator, MeasuringEstimator), bound
    return bound.constraint.estimator


class MeasuredBudgets:
    """One run's budgets as the strategy sees them: estimates, corrected where measured (see the
    module docstring). `soft` budgets (a reward's targets) refuse nothing."""

    def __init__(self, problem: Problem, bounds: Sequence[Bound], record: dict[str, TableRecord],
                 run: RunDir | None, soft: frozenset[str] = frozenset(), decisive: Decisive | None = None) -> None:
        self.problem, self.bounds, self.soft, self.run = problem, list(bounds), soft, run
        self.decisive = decisive or Decisive()
        """How many side-by-side rounds a decision by measurement takes (`netopt.strategies.decisive`)."""
        self.record = record
        if run is not None and not record:
            self.record.update({b.resource: TableRecord([list(p) for p in table(b).calibration(self.network).points])
                                for b in self.measuring()})
            self.save()
        self.applied: dict[str, int] = {}  # recorded additions this process has made again
        self.aims: dict[str, float] = {}  # budgets that estimates must meet with a margin (see `aim`)
        self.measured_over: dict[Network, dict[str, float]] = {}
        """Networks measured over a budget: their measured figures replace estimates."""
        self.readings: dict[tuple[str, Network], Reading] = {}  # this process's, with their noisy rounds
        self.seconds = 0.0  # spent measuring side by side (the tables' own clocks count the rest)

    @property
    def network(self) -> Network:
        return self.problem.traced.network

    def measuring(self) -> list[Bound]:
        """The budgets checked by measurement."""
        return [b for b in self.bounds if b.basis == "measured"]

    # --- estimates, as corrected -----------------------------------------------------------------

    def resources(self, network: Network) -> dict[str, float]:
        """Each resource estimated, or as measured where `network` was measured over a budget."""
        estimated = {b.resource: b.estimate(network) for b in self.bounds}
        return {**estimated, **self.measured_over.get(network, {})} if self.measured_over else estimated

    def aim(self, bound: Bound) -> float:
        """What estimates must meet for `bound`: its budget, or less where a network the estimate
        put within budget measured over it and the recalibrated table still estimates it low
        (by the measured / estimated ratio there)."""
        return self.aims.get(bound.resource, bound.budget)

    def targets(self, iteration: int, resources: dict[str, float]) -> dict[str, float]:
        """Eq. 2: each resource still over budget tightened by its schedule for `iteration`; one
        within budget may not rise above it."""
        return {b.resource: b.target(iteration, resources[b.resource], self.aim(b))
                if resources[b.resource] > self.aim(b) else self.aim(b) for b in self.bounds}

    def met(self, resources: dict[str, float]) -> bool:
        """Every budget met by these estimates (an iterative strategy's stopping rule)."""
        return all(resources[b.resource] <= self.aim(b) for b in self.bounds)

    def feasible(self, resources: dict[str, float]) -> bool:
        """Every hard budget met (a soft one, a reward's target, refuses nothing)."""
        return all(resources[b.resource] <= self.aim(b) for b in self.bounds if b.resource not in self.soft)

    # --- measuring -------------------------------------------------------------------------------

    def verify(self, candidate: Candidate, members: Sequence[Candidate] = ()) -> dict[str, float]:
        """Measure `candidate` end to end for every budget checked by measurement (going on from
        the rounds `track` measured, where it did; the figures go in `candidate.measured`), until
        the figure is decisive against the budget; for each hard budget it misses, add its
        measurement and the members' to that table's calibration. Returns the missed budgets'
        measured figures (empty: every budget holds as measured)."""
        misses: dict[str, float] = {}
        for b in self.measuring():
            value = self.measure_now(b, candidate.network)
            candidate.measured[b.resource] = value
            if value > b.budget and b.resource not in self.soft:
                misses[b.resource] = value
                self.recalibrate(b, [*(m.network for m in members), candidate.network], value)
                LOG.info("%s measures %.4g %s against its budget %.4g (estimated %.4g): lookup table recalibrated",
                         b.resource, value, b.unit, b.budget, candidate.resources.get(b.resource, float("nan")))
        if misses:
            self.measured_over[candidate.network] = misses
        return misses

    def measure_now(self, bound: Bound, network: Network, thresholds: Sequence[float] = (),
                    decision: str = "verify") -> float:
        """`network`'s figure for a budget checked by measurement, decisive against `thresholds`
        (default: the budget). Against a relative budget it is measured side by side with the
        start in rounds (call by call in turn), given as the start's measurement at binding
        times the rounds' median ratio, so that the machine's drift between minutes cancels and
        "50%" means half the start's time under the same load; rounds are added while the
        figure's interval straddles a threshold, up to `Decisive.most` (then the `decision` is
        recorded as close). The rounds are kept in the run's record: a resumed run decides by
        them. Against an absolute budget, as the table keeps it."""
        if bound.measured_start is None:
            return table(bound).measured(self.problem.traced, [network])[0].median
        reading, aims = self.reading(bound, network), list(thresholds) or [bound.budget]
        taken, noisy = len(reading.ratios), reading.noisy
        close = reading.settle(aims, self.decisive, lambda: self.round(bound, network))
        fresh = len(reading.ratios) - taken
        if fresh:  # measured now (a replayed reading measures nothing, records nothing)
            if reading.noisy - noisy == fresh:
                warnings.warn(f"{bound.resource}: a network measured noisy in all {fresh} side-by-side rounds: the "
                              "machine is busy; the rounds' median is kept", NoisyMeasurementWarning, stacklevel=3)
            if close:
                self.closely(bound, network, reading, aims, decision)
            self.save()
        return reading.value

    def reading(self, bound: Bound, network: Network) -> Reading:
        """`network`'s side-by-side rounds against `bound`'s start, as this run measured them
        (recorded, so a resumed run has them too); empty where none are yet."""
        key = (bound.resource, network)
        if key not in self.readings:
            entry = self.entry(bound.resource)
            ratios = next((rs for w, rs in entry.rounds if w == network.widths), None)
            if ratios is None:
                ratios = []
                entry.rounds.append((dict(network.widths), ratios))  # the same list: rounds added are recorded
            assert bound.measured_start is not None, bound
            self.readings[key] = Reading(bound.measured_start, ratios, self.decisive.level)
        return self.readings[key]

    def round(self, bound: Bound, network: Network) -> tuple[float, bool]:
        """One side-by-side round: `network`'s ratio to the start, and whether the round was noisy."""
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoisyMeasurementWarning)  # one warning per figure, not per round
            start, now = table(bound).measure_networks(self.problem.traced, [self.network, network], passes=1)
        self.seconds += time.perf_counter() - started
        return now.median / start.median, start.noisy or now.noisy

    def closely(self, bound: Bound, network: Network, reading: Reading, thresholds: list[float],
                decision: str) -> None:
        """Record a decision still straddling its threshold after the most rounds: the median decides."""
        self.entry(bound.resource).close.append({
            "decision": decision, "widths": dict(network.widths), "figure": reading.value,
            "thresholds": thresholds, "interval": list(reading.interval()), "rounds": len(reading.ratios)})
        LOG.info("%s: %s measures %.4g %s within its repeatability of %s after %d rounds: decided by the median "
                 "(close)", decision, bound.resource, reading.value, bound.unit,
                 " and ".join(f"{t:.4g}" for t in thresholds), len(reading.ratios))

    def verified(self, current: Candidate, family: Sequence[Candidate]) -> tuple[Candidate, bool]:
        """(current, True) when `current` meets every budget as measured too; else a copy of it
        whose missed resources are the measured figures (the targets of further iterations start
        there), and False."""
        misses = self.verify(current, family)
        if not misses:
            return current, True
        measured = dataclasses.replace(current, resources={**current.resources, **misses},
                                       measured=dict(current.measured))
        return measured, False

    def missed(self, current: Candidate) -> dict[str, tuple[float, float]]:
        """(measured, budget) of every budget `current` was measured over."""
        return {b.resource: (current.measured[b.resource], b.budget) for b in self.measuring()
                if b.resource in current.measured and current.measured[b.resource] > b.budget}

    def track(self, current: Candidate) -> Candidate:
        """The closed loop of an iterative strategy: measure the network it goes on from (after
        the start, once each) for every budget checked by measurement that its estimate puts
        within NEAR of the aim; where the estimate is further than TRACKED from the measurement,
        add the network to the table's calibration (the calibration networks shrink every group
        alike, a strategy's networks do not), so that the estimates steering the next iteration
        are the recalibrated table's. Further from the budget an error only moves the schedule's
        steps, and a measurement would buy little. A resumed run does not measure again what the
        stopped one measured: its additions came back with `catch_up`."""
        bounds = self.measuring()
        if current.iteration == 0 or not bounds:
            return current
        net, measured_any = current.network, False
        for b in bounds:
            tracked = self.entry(b.resource).tracked
            if tracked is None:
                continue  # a run begun before netopt tracked: resumed, it estimates as it began
            estimated = b.estimate(net)
            if str(current.iteration) in tracked or estimated > NEAR * self.aim(b):
                continue
            straying = [estimated * (1 - TRACKED), estimated * (1 + TRACKED)]
            measured = tracked[str(current.iteration)] = self.measure_now(b, net, straying, "track")
            measured_any = True
            if abs(measured / max(estimated, 1e-12) - 1) > TRACKED:
                self.recalibrate(b, [net], measured, given=True)
                LOG.info("iteration %d: %s measures %.4g %s, estimated %.4g: lookup table recalibrated",
                         current.iteration, b.resource, measured, b.unit, estimated)
        if measured_any:  # something was measured: keep its figure (a recalibration kept its own)
            self.save()
        estimates = {b.resource: b.estimate(net) for b in bounds}
        return dataclasses.replace(current, resources={**current.resources, **estimates,
                                                       **self.measured_over.get(net, {})},
                                   measured=dict(current.measured))

    def landing_figure(self, bound: Bound, network: Network, iteration: int | None = None) -> float:
        """`network`'s figure for the landing (`netopt.strategies.landing`), decisive against the
        budget: the member of `iteration` from the rounds `track` measured (more where they
        straddle it; as `track` recorded it where no rounds were kept), another network as the
        landing measured it, else measured now side by side as `verify` does. All of it recorded,
        so that a resumed run lands alike."""
        entry = self.entry(bound.resource)
        tracked = entry.tracked.get(str(iteration)) if iteration is not None and entry.tracked else None
        if tracked is not None and (bound.measured_start is None
                                    or not any(w == network.widths for w, _ in entry.rounds)):
            return tracked  # an absolute budget's (the table's figure), or a run begun before rounds were kept
        found = [v for w, v in entry.landed if w == network.widths]
        if found:
            return found[0]
        value = self.measure_now(bound, network, [bound.budget], "land")
        if tracked is None:  # a member's figure is its rounds'
            entry.landed.append((dict(network.widths), value))
            self.save()
        return value

    # --- the record ------------------------------------------------------------------------------

    def catch_up(self) -> None:
        """Add again every calibration a stopped run had added (its measurements are in the table):
        an iterative strategy resumes where its estimates stood when it stopped."""
        for b in self.measuring():
            added = self.record[b.resource].added if b.resource in self.record else []
            for widths in added[self.applied.get(b.resource, 0):]:
                self.recalibrate(b, [self.network.with_widths(w) for w in widths])

    def recalibrate(self, bound: Bound, nets: Sequence[Network], measured: float | None = None,
                    given: bool = False) -> None:
        """Add `nets` (the last: the one that missed, or strayed, measuring `measured`) to the
        table's calibration, `given`: with `measured` as the last one's figure (measured side by
        side with the start, so the machine's drift cancels) rather than the table's; where the
        new calibration still estimates that network below its measurement, aim lower by that
        ratio. A resumed run's additions come back with the figures recorded then."""
        lut, entry = table(bound), self.entry(bound.resource)
        done, widths = self.applied.get(bound.resource, 0), [n.widths for n in nets]
        again = done < len(entry.added) and entry.added[done] == widths  # a stopped run's, made again
        if again:
            measured = entry.verified[done] if measured is None and done < len(entry.verified) else measured
            given = done < len(entry.given) and entry.given[done]
        lut.recalibrate(self.problem.traced, nets, [*[None] * (len(nets) - 1), measured] if given else None)
        if measured is None:  # recorded before verifications kept their figures
            measured = lut.measured(self.problem.traced, [nets[-1]])[0].median
        self.aims[bound.resource] = bound.budget / max(1.0, measured / max(bound.estimate(nets[-1]), 1e-12))
        self.applied[bound.resource] = done + 1
        if again:
            return
        del entry.added[done:], entry.verified[done:], entry.given[done:]  # a resumed run that went another way
        entry.added.append(widths)
        entry.verified.append(measured)
        entry.given.append(given)
        self.save()

    def entry(self, resource: str) -> TableRecord:
        """The run's record for `resource`'s table (begun empty where the run has none yet)."""
        return self.record.setdefault(resource, TableRecord([]))

    def save(self) -> None:
        """The calibration each table started with and the networks added since, in order."""
        if self.run is not None and self.record:
            self.run.save_calibrations({r: e.to_json() for r, e in self.record.items()})
