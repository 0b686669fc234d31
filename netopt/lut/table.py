"""`LookupTable`: layer-wise costs measured once per platform, summed and calibrated.

Calibration, in two steps (figures in benchmarks/bench_lut.py and the README):
1. Units, not ops: a conv is measured together with the BatchNorm and activation that the
   runtime fuses into it, so the sum sees the runtime's fusions.
2. Per-call overhead: every stand-alone measurement pays the runtime's fixed cost of one call
   (session run, input binding), which the whole network pays once. It is measured on the
   cheapest model there is and taken off each unit: layer_sum = overhead + sum(unit - overhead).
3. A correction fitted on whole-network measurements of the network being searched
   (`calibrate`): the measured cost as a non-decreasing function of the layer sum (isotonic
   regression, interpolated), stored per structure. Calibration chooses its own networks, more
   where the ratio measured / layer sum changes, within a stated number of measurements; a
   strategy whose final network misses a budget when measured adds what it measured
   (`recalibrate`). See `Calibration`.

A structure without a calibration is never estimated: `estimate` raises, naming `calibrate`.
Whole networks measured end to end are kept in the table beside the units (`measured`), so
that a budget, a calibration and a check of a final network read the same figure in every
process and after a resume.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import random
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from netopt.errors import LookupTableError
from netopt.ir import Network
from netopt.lut.pgstore import PostgresStore, is_postgres_url
from netopt.lut.probe import overhead_module, unit_module, unmeasurable_ops
from netopt.lut.store import Calibration, Store
from netopt.lut.units import Unit, units
from netopt.measure.base import MEASURED_PASSES, Backend, Fingerprint, Measurement, NoisyMeasurementWarning, steady

if TYPE_CHECKING:
    import torch
    from torch import nn

    from netopt.bridge import Traced

__all__ = ["LookupTable", "structure_key", "random_variants", "CALIBRATION_NETWORKS"]

OVERHEAD = "overhead"
CALIBRATION_NETWORKS = 16
"""Whole networks `calibrate` measures at most (each ~50 timed runs, twice)."""
CALIBRATED = 0.03
"""Neighbouring calibration networks whose ratios measured / layer sum differ by less than this
need no network between them."""


def structure_key(net: Network) -> str:
    """Identifies a network's structure (not its widths): calibrations are kept per structure."""
    return hashlib.sha256(net.at_full_width().to_json().encode()).hexdigest()[:24]


def network_signature(net: Network) -> str:
    """A whole network at its widths: the key of its end-to-end measurement in the table."""
    return "network:" + hashlib.sha256(net.to_json().encode()).hexdigest()[:24]


class LookupTable:
    """Costs of network units on one backend, filled lazily or prebuilt, kept in SQLite."""

    def __init__(self, store: Store | PostgresStore, backend: Backend, wait_timeout: float = 600.0,
                 calibration_networks: int = CALIBRATION_NETWORKS) -> None:
        missing = unmeasurable_ops()
        if missing:
            raise LookupTableError(
                f"the lookup table cannot measure op kinds {[k.value for k in missing]}: each needs a builder in "
                "netopt/bridge/build.py FACTORIES (or a place in lut/units.FREE if it costs nothing)"
            )
        self.store = store
        self.backend = backend
        self.unit = backend.unit
        self.wait_timeout = wait_timeout
        self.calibration_networks = calibration_networks  # what `calibrate` measures at most, unless told
        self.measurements = 0  # how many measurements this instance took (0 on a warm table)
        self.measure_seconds = 0.0  # wall time spent measuring (the rest of an estimate is bookkeeping)
        # Entries never change once written, so what was read once is kept: searches estimate
        # thousands of networks that share almost all of their units.
        self._mins: dict[str, float] = {}
        self._signatures: dict[Unit, str] = {}
        self._structures: dict[tuple[object, ...], str] = {}
        self._calibrations: dict[str, Calibration | None] = {}  # by structure; a pinned one is never re-read

    @classmethod
    def open(cls, path: str | Path, backend: Backend, calibration_networks: int = CALIBRATION_NETWORKS) -> LookupTable:
        """Open (or create) the table at `path` for `backend`'s platform: an SQLite file (one
        machine), or a PostgreSQL URL ("postgresql://user:password@host:5432/db", the postgres
        extra) that many search machines share. `calibration_networks`: the most whole networks
        a calibration measures (binding a constraint calibrates)."""
        store = PostgresStore(str(path), backend.fingerprint) if is_postgres_url(path) else \
            Store(path, backend.fingerprint)
        return cls(store, backend, calibration_networks=calibration_networks)

    def close(self) -> None:
        self.store.close()

    @property
    def fingerprint(self) -> Fingerprint:
        return self.backend.fingerprint

    # --- measuring -------------------------------------------------------------------------

    def overhead(self) -> float:
        """The backend's fixed cost of one call, in `unit`."""
        if OVERHEAD not in self._mins:
            measured = self._ensure_one(OVERHEAD, {"overhead": True}, lambda: self.backend.measure(*overhead_module()))
            self._mins[OVERHEAD] = measured.min
        return self._mins[OVERHEAD]

    def signature(self, unit: Unit) -> str:
        if unit not in self._signatures:
            self._signatures[unit] = unit.signature
        return self._signatures[unit]

    def _known(self, signatures: Iterable[str]) -> None:
        """Read the entries of `signatures` not in memory yet (only their minimum is used)."""
        unread = [s for s in set(signatures) if s not in self._mins]
        if unread:
            self._mins.update({s: m.min for s, m in self.store.get_many(unread).items()})

    def ensure(self, nets: Iterable[Network], progress: str | None = None) -> None:
        """Measure every unit of `nets` that the table does not hold yet."""
        todo: dict[str, tuple[Network, Unit]] = {}
        for net in nets:
            for u in units(net):
                todo.setdefault(self.signature(u), (net, u))
        self._known(todo)
        missing = sorted(s for s in todo if s not in self._mins)
        bar = tqdm(missing, desc=progress or "measuring layers", unit="layer", disable=None, leave=False)
        with warnings.catch_warnings():  # units run for microseconds: their spread is expected; the min is kept
            warnings.simplefilter("ignore", NoisyMeasurementWarning)
            for sig in bar:
                net, u = todo[sig]
                measured = self._ensure_one(sig, u.describe(),
                                            lambda net=net, u=u: self.backend.measure(*unit_module(net, u)))
                self._mins[sig] = measured.min

    def _ensure_one(self, sig: str, description: dict[str, object], measure: object) -> Measurement:
        deadline = time.monotonic() + self.wait_timeout
        while True:
            found = self.store.get(sig)
            if found is not None:
                return found
            if self.store.claim(sig):
                started = time.perf_counter()
                try:
                    result: Measurement = measure()  # type: ignore[operator]
                except BaseException:
                    self.store.release(sig)
                    raise
                self.measure_seconds += time.perf_counter() - started
                self.store.put(sig, description, result)
                self.measurements += 1
                return result
            if time.monotonic() > deadline:
                raise LookupTableError(
                    f"waited {self.wait_timeout:.0f} s for another process to measure layer {sig}; "
                    "it may be stuck: stop it or raise wait_timeout"
                )
            time.sleep(0.02)

    def prebuild(self, net: Network, points_per_group: int = 4) -> int:
        """Measure every unit of `net` over a grid of widths (each group at `points_per_group`
        evenly spaced valid widths, all combinations per unit). Returns how many were new."""
        before = self.measurements
        self.overhead()
        grid = {g.id: _spread(g.valid_widths(), points_per_group) for g in net.groups}
        variants: dict[str, Network] = {}
        for u in units(net.at_full_width()):
            involved = sorted({s.group for name in (*u.head.inputs, u.nodes[-1].name)
                               for s in net.layout(name) if s.group in grid})
            for combo in itertools.product(*(grid[g] for g in involved)):
                variant = net.with_widths(dict(zip(involved, combo, strict=True)))
                variants.setdefault(variant.to_json(), variant)
        self.ensure(variants.values(), progress="prebuilding lookup table")
        return self.measurements - before

    # --- estimating ------------------------------------------------------------------------

    def _unit_mins(self, net: Network) -> list[tuple[Unit, float]]:
        """Each unit of `net` with its stand-alone cost (measuring what is missing)."""
        found = [(u, self.signature(u)) for u in units(net)]
        self._known(sig for _, sig in found)
        if any(sig not in self._mins for _, sig in found):
            self.ensure([net])
        return [(u, self._mins[sig]) for u, sig in found]

    def unit_costs(self, net: Network) -> list[tuple[Unit, float]]:
        """Each unit of `net` with its cost net of the per-call overhead (measuring what is missing)."""
        overhead = self.overhead()
        return [(u, max(cost - overhead, 0.0)) for u, cost in self._unit_mins(net)]

    def layer_sum(self, net: Network) -> float:
        """Uncorrected estimate: overhead + the sum of the unit costs."""
        return self.overhead() + sum(cost for _, cost in self.unit_costs(net))

    def naive_sum(self, net: Network) -> float:
        """The plain sum of stand-alone unit measurements, for comparison (no calibration)."""
        return sum(cost for _, cost in self._unit_mins(net))

    def structure(self, net: Network) -> str:
        """`structure_key(net)`, remembered: estimates ask for it thousands of times."""
        key = (net.nodes, net.input_shape, net.outputs, net.step)
        if key not in self._structures:
            self._structures[key] = structure_key(net)
        return self._structures[key]

    def calibration(self, net: Network) -> Calibration | None:
        """The calibration of `net`'s structure, if one was fitted (or pinned)."""
        key = self.structure(net)
        if key not in self._calibrations:
            self._calibrations[key] = self.store.calibration(key)
        return self._calibrations[key]

    def pin(self, net: Network, points: Sequence[Sequence[float]]) -> None:
        """Estimate `net`'s structure with the calibration of `points` (a `Calibration.points`) in
        this process, whatever the table holds: a resumed run goes on with the one it started with."""
        self._calibrations[self.structure(net)] = Calibration(tuple((float(x), float(y)) for x, y in points))

    def estimate(self, net: Network) -> float:
        """Calibrated cost of `net` in `unit` (Estimator protocol); a structure never calibrated
        is refused rather than estimated by its biased layer sum."""
        raw = self.layer_sum(net)
        cal = self.calibration(net)
        if cal is None:
            raise LookupTableError(
                f"the lookup table holds no calibration for this network's structure ({self.structure(net)}), and its "
                "layer sum alone is biased (fused layers, per-call costs); call lut.calibrate(traced) once (it is kept "
                "in the table; binding a constraint does it), or read lut.layer_sum(net) for the uncorrected sum")
        return cal.apply(raw)

    def measure_module(self, module: nn.Module, example_input: torch.Tensor) -> Measurement:
        """One end-to-end measurement of `module` on this table's backend (MeasuringEstimator)."""
        return self.backend.measure(module, example_input)

    def measure_networks(self, traced: Traced, nets: Sequence[Network], passes: int = 2) -> list[Measurement]:
        """End-to-end measurements of `nets`, materialized from `traced`, taken now.

        Every network is measured in `passes` rounds over the whole list (again at once if a
        round is noisy), and the round with the lowest median kept: load from other tenants
        only ever slows a run down, and rounds apart in time rarely both meet it.
        """
        modules = [traced.materialize(net) for net in nets]
        x = traced.example_input()
        best: list[Measurement | None] = [None] * len(nets)
        rounds = [(p, i) for p in range(passes) for i in range(len(nets))]
        with warnings.catch_warnings(record=True) as noisy:
            warnings.simplefilter("always", NoisyMeasurementWarning)
            for _, i in tqdm(rounds, desc="measuring networks", disable=None if len(rounds) > 2 else True,
                             leave=False):
                m = steady(functools.partial(self.backend.measure, modules[i], x))
                current = best[i]
                if current is None or m.median < current.median:
                    best[i] = m
        kept = [m for m in best if m is not None]
        for w in noisy:
            if not issubclass(w.category, NoisyMeasurementWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if any(m.noisy for m in kept):  # one line for the lot, not one per round
            worst = max(m.iqr_ratio for m in kept)
            warnings.warn(f"{sum(m.noisy for m in kept)} of {len(kept)} whole-network measurements stayed noisy "
                          f"(IQR/median up to {worst:.0%}) in their best of {passes} rounds: the machine is busy; "
                          "their medians are kept", NoisyMeasurementWarning, stacklevel=2)
        return kept

    def measured(self, traced: Traced, nets: Sequence[Network]) -> list[Measurement]:
        """End-to-end measurements of `nets` as the table keeps them: each network is measured
        once (those not held yet side by side in 3 rounds, as `measure_networks` does) and read
        back from then on, in this process, in others sharing the table, and after a resume."""
        sigs = [network_signature(n) for n in nets]
        found = self.store.get_many(sorted(set(sigs)))
        todo = {s: n for s, n in zip(sigs, nets, strict=True) if s not in found}
        if todo:
            started = time.perf_counter()
            taken = self.measure_networks(traced, list(todo.values()), passes=MEASURED_PASSES)
            for (sig, net), m in zip(todo.items(), taken, strict=True):
                self.store.put(sig, {"network": self.structure(net), "widths": net.widths}, m)
            self.measure_seconds += time.perf_counter() - started
            found = self.store.get_many(sorted(set(sigs)))  # another process's figure, where it came first
        return [found[s] for s in sigs]

    def calibrate(self, traced: Traced, max_networks: int | None = None, seed: int = 0) -> Calibration:
        """Fit the correction on end-to-end measurements of `traced` at widths this chooses.

        It starts from the full network, the smallest one (every group at its minimum: searches
        under tight budgets go that low) and three variants between (global fractions 1/4, 1/2,
        3/4, each group jittered), plus one with half its residual branches removed where the
        network has any. Then, while fewer than `max_networks` are measured, it adds a variant
        half way (in width) between the two neighbours, by layer sum, whose ratios measured /
        layer sum differ most, until no two differ by more than 3%. Measurements are kept in
        the table as they are taken, so an interrupted calibration resumes where it stopped; the
        calibration itself is written once, at the end. `max_networks` defaults to the table's
        `calibration_networks` (16)."""
        max_networks = self.calibration_networks if max_networks is None else max_networks
        if max_networks < 2:
            raise LookupTableError(f"calibrate(max_networks={max_networks}) needs at least 2 networks (the full "
                                   "and the smallest), and fits the ratio better with more; the default is "
                                   f"{CALIBRATION_NETWORKS}")
        net = traced.network
        placed = [(1.0, net), (0.0, _at_fraction(net, 0.0, seed))]
        placed += [(f, _at_fraction(net, f, seed + k)) for k, f in enumerate((0.5, 0.25, 0.75), 1)]
        placed = placed[:max_networks]
        extra = [_half_bypassed(net)] if net.bypassable and len(placed) < max_networks else []
        bar = tqdm(total=max_networks, desc="calibrating", unit="network", disable=None, leave=False)
        points = self._points(traced, [n for _, n in placed] + extra)
        bar.update(len(points))
        curve = points[:len(placed)]  # the fraction-placed networks: where new ones go
        fractions = [f for f, _ in placed]
        while len(points) < max_networks:
            split = _widest_step(curve, fractions)
            if split is None:
                break
            low, high = split
            f = (fractions[low] + fractions[high]) / 2
            (point,) = self._points(traced, [_at_fraction(net, f, seed + len(points))])
            points.append(point)
            curve.append(point)
            fractions.append(f)
            bar.update()
        bar.close()
        cal = Calibration.fit(points)
        key = self.structure(net)
        self.store.put_calibration(key, cal)
        self._calibrations[key] = cal
        return cal

    def recalibrate(self, traced: Traced, nets: Sequence[Network]) -> Calibration:
        """Add end-to-end measurements of `nets` (measured now where the table holds none) to the
        calibration of their structure, and keep it: what a strategy does with its family and its
        final network when a measurement misses a budget the estimate met."""
        key = self.structure(traced.network)
        before = self.calibration(traced.network)
        new = [(self.layer_sum(n), m.median) for n, m in zip(nets, self.measured(traced, nets), strict=True)]
        cal = before.with_points(new) if before is not None else Calibration.fit(new)
        self.store.put_calibration(key, cal)
        self._calibrations[key] = cal
        return cal

    def _points(self, traced: Traced, nets: Sequence[Network]) -> list[tuple[float, float]]:
        self.ensure(nets, progress="measuring layers for calibration")
        return [(self.layer_sum(n), m.median) for n, m in zip(nets, self.measured(traced, nets), strict=True)]


def _at_fraction(net: Network, fraction: float, seed: int) -> Network:
    """The network at a global width fraction (0: every group at its minimum, 1: the full
    network), each group jittered by up to ±0.1 in between."""
    if fraction >= 1.0:
        return net.at_full_width()
    rng = random.Random(seed)
    widths = {}
    for g in net.groups:
        share = 0.0 if fraction <= 0.0 else min(1.0, max(0.0, fraction + rng.uniform(-0.1, 0.1)))
        valid = g.valid_widths()
        widths[g.id] = valid[0] if share == 0.0 else _nearest(valid, g.min_width + share * (g.full_width - g.min_width))
    return net.with_widths(widths)


def _half_bypassed(net: Network) -> Network:
    """The full network with every other residual branch removed (from the first)."""
    groups = [g.id for g in net.groups if g.bypass]
    return net.at_full_width().with_widths({g: 0 for g in groups[::2]})


def _widest_step(points: Sequence[tuple[float, float]], fractions: Sequence[float]) -> tuple[int, int] | None:
    """The neighbours by layer sum whose ratios measured / layer sum differ most (and by more
    than CALIBRATED), as indices into `points`; None where no such pair can be split further."""
    order = sorted(range(len(points)), key=lambda k: points[k][0])
    best, step = None, CALIBRATED
    for a, b in itertools.pairwise(order):
        if abs(fractions[a] - fractions[b]) < 0.02:
            continue  # too close in width for a network between them
        ra, rb = points[a][1] / points[a][0], points[b][1] / points[b][0]
        change = abs(rb / ra - 1.0)
        if change > step:
            best, step = (a, b), change
    return best


def random_variants(net: Network, count: int, seed: int = 0) -> list[Network]:
    """Random shrunken networks spread over the range: a global fraction, jittered per group."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        fraction = rng.uniform(0.25, 1.0)
        widths = {}
        for g in net.groups:
            target = g.full_width * min(1.0, max(0.0, fraction + rng.uniform(-0.15, 0.15)))
            widths[g.id] = _nearest(g.valid_widths(), target)
        out.append(net.with_widths(widths))
    return out


def _spread(values: tuple[int, ...], k: int) -> tuple[int, ...]:
    if len(values) <= k:
        return values
    picks = {values[round(i * (len(values) - 1) / (k - 1))] for i in range(k)} if k > 1 else {values[-1]}
    return tuple(sorted(picks))


def _nearest(values: Sequence[int], target: float) -> int:
    return min(values, key=lambda w: abs(w - target))
