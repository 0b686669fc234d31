"""`LookupTable`: layer-wise costs measured once per platform, summed and calibrated.

The table is the public face of three parts, each in its own module:
- unit costs (`netopt.lut.unitcosts`): each unit, a head op with the BatchNorm and activation
  the runtime fuses into it, measured once beside a fixed yardstick unit, the backend's
  per-call overhead taken off, and summed (the layer sum);
- whole networks (`netopt.lut.networks`): end-to-end measurements, side by side with the full
  network, kept beside the units so that a budget, a calibration and a check of a final network
  read the same figure in every process and after a resume;
- calibration (`netopt.lut.calibrator`, the fit in `netopt.lut.calibration`): the whole-network
  cost as a rising plane in the layer sum, the weights and the traffic, fitted per structure on networks it
  chooses, and grown by what strategies measure. A structure without a calibration is never
  estimated: `estimate` raises, naming `calibrate`.

A traced model's opaque blocks (`Traced.opaque`) are priced as units of their own, measured
with their modules: the table is given them when opened (`opaque=`) or calibrated.

Entries live in a `netopt.lut.stores.Store`: an SQLite file, or a PostgreSQL database shared
by many machines. A table opened `frozen` writes nothing back (`netopt.lut.frozen`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from netopt._process import is_postgres_url
from netopt.errors import LookupTableError
from netopt.ir import Network
from netopt.lut.calibration import Calibration, traffic, weights
from netopt.lut.calibrator import CALIBRATION_NETWORKS, Calibrator
from netopt.lut.frozen import FrozenStore
from netopt.lut.networks import NetworkMeasurements, network_signature, structure_key
from netopt.lut.pgstore import PostgresStore
from netopt.lut.probe import unmeasurable_ops
from netopt.lut.store import SqliteStore
from netopt.lut.stores import Store
from netopt.lut.unitcosts import Meter, UnitCosts
from netopt.lut.units import Unit
from netopt.lut.variants import at_fraction, random_variants
from netopt.measure.base import Backend, Fingerprint, Measurement

if TYPE_CHECKING:
    import torch
    from torch import nn

    from netopt.bridge import Traced

__all__ = ["LookupTable", "structure_key", "random_variants", "CALIBRATION_NETWORKS",
           "network_signature"]  # the last: its old import path

_at_fraction = at_fraction  # its old import path (tests/test_measured_budgets.py)


class LookupTable:
    """Costs of network units on one backend, filled lazily or prebuilt, kept in a store, and
    the calibrated estimate of whole networks they add up to (the Estimator protocol).

    >>> import tempfile, torch, netopt
    >>> from netopt.measure import MeasureSettings, TorchEager
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
    ...                             torch.nn.Linear(8 * 6 * 6, 4)).eval()
    >>> traced = netopt.trace(model, torch.randn(1, 3, 8, 8))
    >>> backend = TorchEager(settings=MeasureSettings(warmup=1, runs=5, min_seconds=0.0))
    >>> lut = LookupTable.open(Path(tempfile.mkdtemp()) / "lut.sqlite", backend)
    >>> cal = lut.calibrate(traced, max_networks=2)  # measures the units and two whole networks
    >>> lut.estimate(traced.network) > 0, lut.unit
    (True, 'ms')
    >>> lut.close()
    """

    def __init__(self, store: Store, backend: Backend, wait_timeout: float = 600.0,
                 calibration_networks: int = CALIBRATION_NETWORKS,
                 opaque: Mapping[str, nn.Module] | None = None) -> None:
        missing = unmeasurable_ops()
        if missing:
            raise LookupTableError(
                f"the lookup table cannot measure op kinds {[k.value for k in missing]}: each needs a builder in "
                "netopt/bridge/build.py FACTORIES (or a place in lut/units.FREE if it costs nothing)"
            )
        self.store = store
        self.backend = backend
        self.unit = backend.unit
        self.meter = Meter()
        self.costs = UnitCosts(store, backend, self.meter, wait_timeout)
        self.networks = NetworkMeasurements(store, backend, self.meter)
        self.calibrator = Calibrator(self.costs, self.networks, calibration_networks)
        self.costs.add_blocks(opaque or {})

    @classmethod
    def open(cls, path: str | Path, backend: Backend, calibration_networks: int = CALIBRATION_NETWORKS,
             opaque: Mapping[str, nn.Module] | None = None, frozen: bool = False) -> LookupTable:
        """Open (or create) the table at `path` for `backend`'s platform: an SQLite file (one
        machine), or a PostgreSQL URL ("postgresql://user:password@host:5432/db", the postgres
        extra) that many search machines share. `calibration_networks`: the most whole networks
        a calibration measures (binding a constraint calibrates). `opaque`: the traced model's
        opaque blocks (`traced.opaque`), which its networks' estimates need (a warm table's too).
        `frozen`: an existing table read but never written (`netopt.lut.frozen`): what a run
        measures and recalibrates stays in its process, so runs compared start alike."""
        if frozen and not is_postgres_url(path) and not Path(path).is_file():
            raise LookupTableError(f"frozen=True needs an existing lookup table, and {path} is none; open it unfrozen "
                                   "once (binding a constraint calibrates it), then frozen")
        store: Store = PostgresStore(str(path), backend.fingerprint) if is_postgres_url(path) else \
            SqliteStore(path, backend.fingerprint)
        store = FrozenStore(store) if frozen else store
        return cls(store, backend, calibration_networks=calibration_networks, opaque=opaque)

    @property
    def frozen(self) -> bool:
        """Whether what this table measures and recalibrates stays in this process (`open(frozen=True)`)."""
        return isinstance(self.store, FrozenStore)

    def close(self) -> None:
        self.store.close()

    @property
    def fingerprint(self) -> Fingerprint:
        return self.backend.fingerprint

    @property
    def measurements(self) -> int:
        """How many units this instance measured (0 on a warm table)."""
        return self.meter.measurements

    @measurements.setter
    def measurements(self, value: int) -> None:
        self.meter.measurements = value

    @property
    def measure_seconds(self) -> float:
        """Wall time spent measuring (the rest of an estimate is bookkeeping)."""
        return self.meter.seconds

    @measure_seconds.setter
    def measure_seconds(self, value: float) -> None:
        self.meter.seconds = value

    @property
    def wait_timeout(self) -> float:
        """Seconds to wait for a unit another process claimed before calling it stuck."""
        return self.costs.wait_timeout

    @wait_timeout.setter
    def wait_timeout(self, value: float) -> None:
        self.costs.wait_timeout = value

    @property
    def calibration_networks(self) -> int:
        """What `calibrate` measures at most, unless told."""
        return self.calibrator.calibration_networks

    @calibration_networks.setter
    def calibration_networks(self, value: int) -> None:
        self.calibrator.calibration_networks = value

    # --- unit costs ------------------------------------------------------------------------

    def overhead(self) -> float:
        """The backend's fixed cost of one call, in `unit`."""
        return self.costs.overhead()

    def yardstick(self) -> float | None:
        """The level every unit is expressed at (None where the backend cannot measure side by side)."""
        return self.costs.yardstick()

    def signature(self, unit: Unit) -> str:
        return self.costs.signature(unit)

    def ensure(self, nets: Iterable[Network], progress: str | None = None) -> None:
        """Measure every unit of `nets` that the table does not hold yet."""
        self.costs.ensure(nets, progress)

    def prebuild(self, net: Network, points_per_group: int = 4) -> int:
        """Measure every unit of `net` over a grid of widths (each group at `points_per_group`
        evenly spaced valid widths, all combinations per unit). Returns how many were new."""
        return self.costs.prebuild(net, points_per_group)

    def unit_costs(self, net: Network) -> list[tuple[Unit, float]]:
        """Each unit of `net` with its cost net of the per-call overhead (measuring what is missing)."""
        return self.costs.unit_costs(net)

    def layer_sum(self, net: Network) -> float:
        """Uncorrected estimate: overhead + the sum of the unit costs."""
        return self.costs.layer_sum(net)

    def naive_sum(self, net: Network) -> float:
        """The plain sum of stand-alone unit measurements, for comparison (no calibration)."""
        return self.costs.naive_sum(net)

    # --- whole networks --------------------------------------------------------------------

    def structure(self, net: Network) -> str:
        """`structure_key(net)`, remembered: estimates ask for it thousands of times."""
        return self.networks.structure(net)

    def measure_module(self, module: nn.Module, example_input: torch.Tensor) -> Measurement:
        """One end-to-end measurement of `module` on this table's backend (MeasuringEstimator)."""
        return self.networks.measure_module(module, example_input)

    def measure_networks(self, traced: Traced, nets: Sequence[Network], passes: int = 2) -> list[Measurement]:
        """End-to-end measurements of `nets`, materialized from `traced`, taken now, side by side."""
        return self.networks.measure_networks(traced, nets, passes)

    def measured(self, traced: Traced, nets: Sequence[Network]) -> list[Measurement]:
        """End-to-end measurements of `nets` as the table keeps them: each network measured once."""
        return self.networks.measured(traced, nets)

    # --- calibration -----------------------------------------------------------------------

    @staticmethod
    def weights(net: Network) -> float:
        """`net`'s weights in millions of parameters (`Calibration` prices them)."""
        return weights(net)

    @staticmethod
    def traffic(net: Network) -> float:
        """The activations `net`'s units read and write, in millions (`Calibration` prices them)."""
        return traffic(net)

    def calibration(self, net: Network) -> Calibration | None:
        """The calibration of `net`'s structure, if one was fitted (or pinned)."""
        return self.calibrator.calibration(net)

    def pin(self, net: Network, points: Sequence[Sequence[float]]) -> None:
        """Estimate `net`'s structure with the calibration of `points` (a `Calibration.points`) in
        this process, whatever the table holds: a resumed run goes on with the one it started with."""
        self.calibrator.pin(net, points)

    def estimate(self, net: Network) -> float:
        """Calibrated cost of `net` in `unit` (Estimator protocol); a structure never calibrated
        is refused rather than estimated by its biased layer sum."""
        return self.calibrator.estimate(net)

    def attach(self, traced: Traced) -> None:
        """Keep `traced`'s opaque blocks for the units they head (`ModelAware`): binding a
        constraint does this every run, so a table calibrated before still prices them."""
        self.costs.add_blocks(traced.opaque)

    def calibrate(self, traced: Traced, max_networks: int | None = None, seed: int = 0) -> Calibration:
        """Fit the correction on end-to-end measurements of `traced` at widths this chooses
        (`Calibrator.calibrate`; `max_networks` defaults to `calibration_networks`), and keep it.
        The table keeps `traced`'s opaque blocks for the units they head."""
        self.costs.add_blocks(traced.opaque)
        return self.calibrator.calibrate(traced, max_networks, seed)

    def recalibrate(self, traced: Traced, nets: Sequence[Network],
                    figures: Sequence[float | None] | None = None) -> Calibration:
        """Add end-to-end measurements of `nets` (measured now where the table holds none) to the
        calibration of their structure, and keep it: what a strategy does when a measurement
        misses a budget the estimate met. `figures`, one per network (None: the table's), are
        measurements taken already at the level the table keeps the full network."""
        self.costs.add_blocks(traced.opaque)
        return self.calibrator.recalibrate(traced, nets, figures)
