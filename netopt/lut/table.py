"""`LookupTable`: layer-wise costs measured once per platform, summed and calibrated.

Calibration, in two steps (figures in benchmarks/bench_lut.py and the README):
1. Units, not ops: a conv is measured together with the BatchNorm and activation that the
   runtime fuses into it, so the sum sees the runtime's fusions.
2. Per-call overhead: every stand-alone measurement pays the runtime's fixed cost of one call
   (session run, input binding), which the whole network pays once. It is measured on the
   cheapest model there is and taken off each unit: layer_sum = overhead + sum(unit - overhead).
3. A correction fitted on a few whole-network measurements of the network being searched
   (`calibrate`): the ratio measured / layer_sum as a non-decreasing function of the layer sum
   (isotonic regression, interpolated), stored per structure. See `Calibration`.
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
from netopt.measure.base import Backend, Fingerprint, Measurement, NoisyMeasurementWarning, steady

if TYPE_CHECKING:
    import torch
    from torch import nn

    from netopt.bridge import Traced

__all__ = ["LookupTable", "structure_key", "random_variants"]

OVERHEAD = "overhead"


def structure_key(net: Network) -> str:
    """Identifies a network's structure (not its widths): calibrations are kept per structure."""
    return hashlib.sha256(net.at_full_width().to_json().encode()).hexdigest()[:24]


class LookupTable:
    """Costs of network units on one backend, filled lazily or prebuilt, kept in SQLite."""

    def __init__(self, store: Store | PostgresStore, backend: Backend, wait_timeout: float = 600.0) -> None:
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
        self.measurements = 0  # how many measurements this instance took (0 on a warm table)
        self.measure_seconds = 0.0  # wall time spent measuring (the rest of an estimate is bookkeeping)
        # Entries never change once written, so what was read once is kept: searches estimate
        # thousands of networks that share almost all of their units.
        self._mins: dict[str, float] = {}
        self._signatures: dict[Unit, str] = {}
        self._calibrations: dict[tuple[object, ...], Calibration | None] = {}

    @classmethod
    def open(cls, path: str | Path, backend: Backend) -> LookupTable:
        """Open (or create) the table at `path` for `backend`'s platform: an SQLite file (one
        machine), or a PostgreSQL URL ("postgresql://user:password@host:5432/db", the postgres
        extra) that many search machines share."""
        if is_postgres_url(path):
            return cls(PostgresStore(str(path), backend.fingerprint), backend)
        return cls(Store(path, backend.fingerprint), backend)

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

    def calibration(self, net: Network) -> Calibration | None:
        """The calibration of `net`'s structure, if one was fitted."""
        key = (net.nodes, net.input_shape, net.outputs, net.step)
        if key not in self._calibrations:
            self._calibrations[key] = self.store.calibration(structure_key(net))
        return self._calibrations[key]

    def estimate(self, net: Network) -> float:
        """Calibrated cost of `net` in `unit` (Estimator protocol)."""
        raw = self.layer_sum(net)
        cal = self.calibration(net)
        return raw if cal is None else cal.apply(raw)

    def measure_module(self, module: nn.Module, example_input: torch.Tensor) -> Measurement:
        """One end-to-end measurement of `module` on this table's backend (MeasuringEstimator)."""
        return self.backend.measure(module, example_input)

    def measure_networks(self, traced: Traced, nets: Sequence[Network], passes: int = 2) -> list[Measurement]:
        """End-to-end measurements of `nets`, materialized from `traced`.

        Every network is measured in `passes` rounds over the whole list (again at once if a
        round is noisy), and the round with the lowest median kept: load from other tenants
        only ever slows a run down, and rounds apart in time rarely both meet it.
        """
        modules = [traced.materialize(net) for net in nets]
        x = traced.example_input()
        best: list[Measurement | None] = [None] * len(nets)
        rounds = [(p, i) for p in range(passes) for i in range(len(nets))]
        for _, i in tqdm(rounds, desc="measuring networks", disable=None, leave=False):
            m = steady(functools.partial(self.backend.measure, modules[i], x))
            current = best[i]
            if current is None or m.median < current.median:
                best[i] = m
        return [m for m in best if m is not None]

    def calibrate(self, traced: Traced, variants: int = 8, seed: int = 0) -> Calibration:
        """Fit the correction on end-to-end measurements of `traced`, its smallest network (every
        group at its minimum: the ratio curve is flat beyond its end points, and searches under
        tight budgets go that low) and `variants - 1` random variants in between."""
        floor = traced.network.with_widths({g.id: g.min_width for g in traced.network.groups})
        nets = [traced.network, floor, *random_variants(traced.network, variants - 1, seed)]
        self.ensure(nets, progress="measuring layers for calibration")
        measured = self.measure_networks(traced, nets)
        cal = Calibration.fit([(self.layer_sum(net), m.median) for net, m in zip(nets, measured, strict=True)])
        self.store.put_calibration(structure_key(traced.network), cal)
        self._calibrations.clear()
        return cal


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
