"""`LookupTable`: layer-wise costs measured once per platform, summed and calibrated.

Calibration, in three steps (figures in benchmarks/bench_lut.py and the README):
1. Units, not ops: a conv is measured together with the BatchNorm and activation that the
   runtime fuses into it, so the sum sees the runtime's fusions.
2. Per-call overhead: every stand-alone measurement pays the runtime's fixed cost of one call
   (session run, input binding), which the whole network pays once. It is measured on the
   cheapest model there is and taken off each unit: layer_sum = overhead + sum(unit - overhead).
3. A correction fitted on whole-network measurements of the network being searched
   (`calibrate`): the measured cost as a rising plane in the layer sum and the weights (a
   network fetches its weights anew each call, a unit timed warm does not), stored per
   structure. Calibration chooses its own networks, more where the fit is worst, within a stated
   number of measurements; a strategy whose final network misses a budget when measured adds
   what it measured (`recalibrate`). See `Calibration`.

Side by side, at fixed levels: where the backend can time several models call by call in turn
(`Backend.measure_together`), units are measured in batches beside a fixed yardstick unit and
expressed at the yardstick's first level, and whole networks beside the structure's full
network, at its first level. On a shared machine a model's time moves by 40-60% within a
minute, its ratio to a model timed beside it by a few percent: so a unit measured now adds up
with one measured an hour ago, and a calibration fitted in one minute holds in the next.

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
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from netopt.errors import LookupTableError
from netopt.ir import Network
from netopt.ir.costs import params
from netopt.lut.pgstore import PostgresStore, is_postgres_url
from netopt.lut.probe import overhead_module, unit_module, unmeasurable_ops, yardstick_module
from netopt.lut.store import Calibration, Store
from netopt.lut.units import Unit, units
from netopt.measure.base import (
    MEASURED_PASSES,
    Backend,
    Fingerprint,
    Measurement,
    NoisyMeasurementWarning,
    steady,
    summarize,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from netopt.bridge import Traced

__all__ = ["LookupTable", "structure_key", "random_variants", "CALIBRATION_NETWORKS"]

OVERHEAD = "overhead"
YARDSTICK = "yardstick"
UNIT_BATCH = 24
"""Units measured side by side with the yardstick in one window."""
CALIBRATION_NETWORKS = 16
"""Whole networks `calibrate` measures at most (each ~50 timed runs, twice)."""
Builder = Callable[[], tuple["nn.Module", "torch.Tensor"]]
"""Builds a unit's module and its input, when the unit is measured."""
TILT = 0.25
"""How far calibration networks lean by depth (`_at_fraction`): the deepest group this much
wider than the global fraction and the first this much narrower, or the other way round."""
CALIBRATED = 0.03
"""Calibration networks the fit misses by less than this need no network beside them."""


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
        self._level: float | None = None  # the yardstick's first minimum, once read

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
            self._measure_units({OVERHEAD: ({"overhead": True}, overhead_module)})
        return self._mins[OVERHEAD]

    def yardstick(self) -> float | None:
        """The minimum of the yardstick unit the first time this table measured it alone: the
        level every unit is expressed at (None where the backend cannot measure side by side)."""
        if not self.backend.interleaves:
            return None
        if self._level is None:
            self._measure_units({YARDSTICK: ({"yardstick": True}, yardstick_module)}, measure=self._measure_alone)
            found = self.store.get(YARDSTICK)
            assert found is not None, "the yardstick was just measured, or waited for"
            self._level = found.min
        return self._level

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
        self._measure_units({sig: (u.describe(), functools.partial(unit_module, net, u))
                             for sig, (net, u) in sorted(todo.items())}, progress)

    def _measure_units(self, todo: dict[str, tuple[dict[str, object], Builder]], progress: str | None = None,
                       measure: Callable[[list[tuple[nn.Module, torch.Tensor]]], list[Measurement]] | None = None,
                       ) -> None:
        """Measure the units of `todo` (signature: description, builder) that no process has
        measured, `UNIT_BATCH` at a time side by side with the yardstick, each visit warm
        (`time_interleaved`: the yardstick timed after a large unit would run from cold caches,
        and the scale would follow the batch's company), each expressed at the yardstick's first
        level (`Measurement.scaled`), unless told how (`measure`): a unit measured now and one
        measured an hour ago, under another load, add up. Minimum to minimum: the table keeps a
        unit's minimum, and scaling it by the yardstick's median let a burst of load in one batch
        move the whole batch (MobileNetV3's layer sum moved 2.5-8% between two measurements of
        the same units, 0.2-0.6% minimum to minimum). Several processes share the work through
        claims; a unit another process claimed is waited for."""
        self._known(todo)
        pending = [s for s in todo if s not in self._mins]
        if not pending:
            return
        measure = measure or functools.partial(self._measure_beside_yardstick, level=self.yardstick())
        bar = tqdm(total=len(pending), desc=progress or "measuring layers", unit="layer", disable=None, leave=False)
        deadline = time.monotonic() + self.wait_timeout
        with warnings.catch_warnings():  # units run for microseconds: their spread is expected; the min is kept
            warnings.simplefilter("ignore", NoisyMeasurementWarning)
            while pending:
                claimed: list[str] = []
                for sig in pending:
                    if len(claimed) < UNIT_BATCH and self.store.claim(sig):
                        claimed.append(sig)
                if claimed:
                    started = time.perf_counter()
                    try:
                        taken = measure([todo[sig][1]() for sig in claimed])
                    except BaseException:
                        for sig in claimed:
                            self.store.release(sig)
                        raise
                    finally:
                        self.measure_seconds += time.perf_counter() - started
                    for sig, m in zip(claimed, taken, strict=True):
                        self.store.put(sig, todo[sig][0], m)
                        self._mins[sig] = m.min
                    self.measurements += len(claimed)
                    deadline = time.monotonic() + self.wait_timeout
                elif time.monotonic() > deadline:
                    raise LookupTableError(
                        f"waited {self.wait_timeout:.0f} s for another process to measure layer {pending[0]}; "
                        "it may be stuck: stop it or raise wait_timeout")
                else:
                    time.sleep(0.02)
                self._known(pending)  # what this process and the others measured meanwhile
                left = [sig for sig in pending if sig not in self._mins]
                bar.update(len(pending) - len(left))
                pending = left
        bar.close()

    def _measure_beside_yardstick(self, items: Sequence[tuple[nn.Module, torch.Tensor]],
                                  level: float | None) -> list[Measurement]:
        if level is None:  # the backend measures one model at a time
            return [self.backend.measure(m, x) for m, x in items]
        now, *taken = self.backend.measure_together([yardstick_module(), *items], warm=True)
        return [m.scaled(level / now.min) for m in taken]

    def _measure_alone(self, items: Sequence[tuple[nn.Module, torch.Tensor]]) -> list[Measurement]:
        return [steady(functools.partial(self.backend.measure, m, x)) for m, x in items]

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

    @staticmethod
    def weights(net: Network) -> float:
        """`net`'s weights in millions of parameters: what a whole network fetches anew on each
        call beyond its units timed warm (`Calibration`)."""
        return params(net) / 1e6

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
        self._calibrations[self.structure(net)] = Calibration.fit(points)

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
        return cal.apply(raw, self.weights(net) if cal.weighted else None)  # a search estimates thousands

    def measure_module(self, module: nn.Module, example_input: torch.Tensor) -> Measurement:
        """One end-to-end measurement of `module` on this table's backend (MeasuringEstimator)."""
        return self.backend.measure(module, example_input)

    def measure_networks(self, traced: Traced, nets: Sequence[Network], passes: int = 2) -> list[Measurement]:
        """End-to-end measurements of `nets`, materialized from `traced`, taken now.

        All the networks are measured side by side (call by call in turn, where the backend can:
        `Backend.measure_together`), in `passes` windows, and each network's samples pooled over
        them: every figure is taken under the same load as the others, so that their ratios hold
        where the machine's speed moves (a window's load slows all of them alike).
        """
        x = traced.example_input()
        items = [(traced.materialize(net), x) for net in nets]
        pooled: list[list[float]] = [[] for _ in nets]
        always_noisy = [True] * len(nets)
        fingerprint = ""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoisyMeasurementWarning)
            for p in tqdm(range(passes), desc="measuring networks", disable=None if len(nets) > 2 else True,
                          leave=False):
                for i, m in enumerate(self.backend.measure_together(items, seed=p)):
                    pooled[i].extend(m.samples)
                    always_noisy[i] = always_noisy[i] and m.noisy
                    fingerprint = m.fingerprint
            kept = [summarize(samples, self.unit, fingerprint) for samples in pooled]
        if any(always_noisy):  # one line for the lot, not one per window
            worst = max(m.iqr_ratio for m in kept)
            warnings.warn(f"{sum(always_noisy)} of {len(kept)} whole-network measurements stayed noisy in all "
                          f"{passes} windows (IQR/median up to {worst:.0%}): the machine is busy; their medians are "
                          "kept", NoisyMeasurementWarning, stacklevel=2)
        return kept

    def measured(self, traced: Traced, nets: Sequence[Network]) -> list[Measurement]:
        """End-to-end measurements of `nets` as the table keeps them: each network is measured
        once and read back from then on, in this process, in others sharing the table, and after
        a resume. Those not held yet are measured side by side with the full network (in
        `MEASURED_PASSES` windows, as `measure_networks` does) and expressed at the level the
        full network was kept at when it was first measured, so that figures taken an hour
        apart, under other loads, compare."""
        sigs = [network_signature(n) for n in nets]
        found = self.store.get_many(sorted(set(sigs)))
        todo = {s: n for s, n in zip(sigs, nets, strict=True) if s not in found}
        if todo:
            started = time.perf_counter()
            full = traced.network.at_full_width()
            anchor = network_signature(full)
            if self.backend.interleaves:
                # one network at a time beside the full network: a small network's figure depends
                # on its company (timed among 30 others it runs from a cold cache, 10% slower)
                kept = self.store.get(anchor)
                others = [n for s, n in todo.items() if s != anchor]
                batch: list[Network] = []
                taken: list[Measurement] = []
                if kept is None:  # the first figure of this structure: the level of all that follow
                    first = self.measure_networks(traced, [full, *others[:1]], passes=MEASURED_PASSES)
                    kept, batch, taken, others = first[0], [full, *others[:1]], first, others[1:]
                for net in others:
                    now = self.measure_networks(traced, [full, net], passes=MEASURED_PASSES)
                    batch.append(net)
                    taken.append(now[1].scaled(kept.median / now[0].median))
            else:  # measured one at a time: nothing to anchor to
                batch = list(todo.values())
                taken = self.measure_networks(traced, batch, passes=MEASURED_PASSES)
            for net, m in zip(batch, taken, strict=True):
                self.store.put(network_signature(net), {"network": self.structure(net), "widths": net.widths}, m)
            self.measure_seconds += time.perf_counter() - started
            found = self.store.get_many(sorted(set(sigs)))  # another process's figure, where it came first
        return [found[s] for s in sigs]

    def calibrate(self, traced: Traced, max_networks: int | None = None, seed: int = 0) -> Calibration:
        """Fit the correction on end-to-end measurements of `traced` at widths this chooses.

        It starts from the full network, the smallest one (every group at its minimum: searches
        under tight budgets go that low) and four variants between (global fractions 1/2, 1/4
        twice, 3/4, each group jittered; the two at 1/4 tilted by depth, one each way, so that
        networks of a like layer sum differ in their weights, which the fit prices apart). Then,
        while fewer than `max_networks` are measured, it fits (`Calibration`) and adds a variant
        half way (in width) between the neighbours it fits worst (their errors, weighted by how
        far apart they are), tilted one way and then the other, until every network is fitted
        within 3%. All are measured side by side with the full network and kept in
        the table as they are taken, so an interrupted calibration resumes where it stopped;
        the calibration itself is written once, at the end. `max_networks` defaults to the
        table's `calibration_networks` (16).

        Networks with residual branches removed are not among them: they pay less per layer
        than their layer sum says (MobileNetV3: 1.17 against 1.28-1.35 for width variants), and
        a line through both fitted neither; their estimates are a little high (safe) until a
        strategy's measured final joins the calibration (`recalibrate`)."""
        max_networks = self.calibration_networks if max_networks is None else max_networks
        if max_networks < 2:
            raise LookupTableError(f"calibrate(max_networks={max_networks}) needs at least 2 networks (the full "
                                   "and the smallest), and fits better with more; the default is "
                                   f"{CALIBRATION_NETWORKS}")
        net = traced.network
        placed = [(1.0, net), (0.0, _at_fraction(net, 0.0, seed))]
        placed += [(f, _at_fraction(net, f, seed + k, tilt)) for k, (f, tilt) in
                   enumerate(((0.5, 0.0), (0.25, TILT), (0.25, -TILT), (0.75, 0.0)), 1)]
        placed = placed[:max_networks]
        bar = tqdm(total=max_networks, desc="calibrating", unit="network", disable=None, leave=False)
        points = self._points(traced, [n for _, n in placed])
        bar.update(len(points))
        fractions = [f for f, _ in placed]
        while len(points) < max_networks:
            split = _worst_fitted(points, fractions, Calibration.fit(points))
            if split is None:
                break
            f = (fractions[split[0]] + fractions[split[1]]) / 2
            tilt = TILT if len(points) % 2 else -TILT  # deep layers wider, then shallow ones: weights apart
            (point,) = self._points(traced, [_at_fraction(net, f, seed + len(points), tilt)])
            points.append(point)
            fractions.append(f)
            bar.update()
        bar.close()
        cal = Calibration.fit(points)
        key = self.structure(net)
        self.store.put_calibration(key, cal)
        self._calibrations[key] = cal
        return cal

    def recalibrate(self, traced: Traced, nets: Sequence[Network],
                    figures: Sequence[float | None] | None = None) -> Calibration:
        """Add end-to-end measurements of `nets` (measured now where the table holds none) to the
        calibration of their structure, and keep it: what a strategy does with its family and its
        final network when a measurement misses a budget the estimate met, and with a network
        whose estimate strays from its measurement. `figures`, one per network (None: the
        table's), are measurements taken already at the level the table keeps the full network."""
        key = self.structure(traced.network)
        before = self.calibration(traced.network)
        figures = [None] * len(nets) if figures is None else list(figures)
        if len(figures) != len(nets):
            raise LookupTableError(f"recalibrate got {len(figures)} figures for {len(nets)} networks; give one per "
                                   "network (None: the table measures it)")
        todo = [n for n, f in zip(nets, figures, strict=True) if f is None]
        taken = iter(m.median for m in self.measured(traced, todo)) if todo else iter(())
        new = [(self.layer_sum(n), next(taken) if f is None else f, self.weights(n))
               for n, f in zip(nets, figures, strict=True)]
        cal = before.with_points(new) if before is not None else Calibration.fit(new)
        self.store.put_calibration(key, cal)
        self._calibrations[key] = cal
        return cal

    def _points(self, traced: Traced, nets: Sequence[Network]) -> list[tuple[float, float, float]]:
        self.ensure(nets, progress="measuring layers for calibration")
        return [(self.layer_sum(n), m.median, self.weights(n))
                for n, m in zip(nets, self.measured(traced, nets), strict=True)]


def _at_fraction(net: Network, fraction: float, seed: int, tilt: float = 0.0) -> Network:
    """The network at a global width fraction (0: every group at its minimum, 1: the full
    network), each group jittered by up to ±0.1 in between, and tilted by depth: `tilt` more
    for the deepest group, `tilt` less for the first (deep layers hold most of the weights and
    little of the compute, so a tilted network has other weights at a like layer sum)."""
    if fraction >= 1.0:
        return net.at_full_width()
    rng = random.Random(seed)
    widths = {}
    depth = max(len(net.groups) - 1, 1)
    for k, g in enumerate(net.groups):
        lean = tilt * (2 * k / depth - 1)
        share = 0.0 if fraction <= 0.0 else min(1.0, max(0.0, fraction + lean + rng.uniform(-0.1, 0.1)))
        valid = g.valid_widths()
        widths[g.id] = valid[0] if share == 0.0 else _nearest(valid, g.min_width + share * (g.full_width - g.min_width))
    return net.with_widths(widths)


def _worst_fitted(points: Sequence[tuple[float, float, float]], fractions: Sequence[float],
                  cal: Calibration) -> tuple[int, int] | None:
    """The neighbours in width whose errors under `cal`, weighted by the width between them,
    are largest, as indices into `points`; None where every network is fitted within
    CALIBRATED or no pair can be split further."""
    errors = [abs(cal.error(*p)) for p in points]
    if max(errors) <= CALIBRATED:
        return None
    order = sorted(range(len(points)), key=lambda k: fractions[k])
    best, score = None, 0.0
    for a, b in itertools.pairwise(order):
        gap = fractions[b] - fractions[a]
        if gap < 0.02 or max(errors[a], errors[b]) <= CALIBRATED:
            continue  # too close in width for a network between them, or fitted already
        if (errors[a] + errors[b]) * gap > score:
            best, score = (a, b), (errors[a] + errors[b]) * gap
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
