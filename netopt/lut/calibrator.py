"""The calibration of a lookup table, by structure: which whole networks it measures, the fit
(`Calibration`) kept in the table, and the estimate it corrects.

`calibrate` chooses its own networks, more where the fit is worst, within a stated number of
measurements; a strategy whose networks miss a budget when measured adds what it measured
(`recalibrate`); a resumed run estimates with the calibration it started with (`pin`). A
structure never calibrated is not estimated: its layer sum alone is biased.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tqdm import tqdm

from netopt.errors import LookupTableError
from netopt.ir import Network
from netopt.lut.calibration import Calibration, traffic, weights
from netopt.lut.networks import NetworkMeasurements
from netopt.lut.unitcosts import UnitCosts
from netopt.lut.variants import TILT, at_fraction

if TYPE_CHECKING:
    from netopt.bridge import Traced

__all__ = ["CALIBRATED", "CALIBRATION_NETWORKS", "Calibrator", "first_networks", "worst_fitted"]

CALIBRATION_NETWORKS = 16
"""Whole networks `calibrate` measures at most (each side by side with the full network)."""
CALIBRATED = 0.03
"""Calibration networks the fit misses by less than this need no network beside them."""
FIRST = ((0.5, 0.0), (0.25, TILT), (0.25, -TILT), (0.75, 0.0))
"""The (global width fraction, tilt) of the variants every calibration measures first."""


class Calibrator:
    """Calibrations of the structures `networks` measures, fitted on whole networks and kept
    in the table's store; `costs` gives their layer sums."""

    def __init__(self, costs: UnitCosts, networks: NetworkMeasurements,
                 calibration_networks: int = CALIBRATION_NETWORKS) -> None:
        self.costs, self.networks, self.store = costs, networks, networks.store
        self.calibration_networks = calibration_networks  # what `calibrate` measures at most, unless told
        self._calibrations: dict[str, Calibration | None] = {}  # by structure; a pinned one is never re-read

    def calibration(self, net: Network) -> Calibration | None:
        """The calibration of `net`'s structure, if one was fitted (or pinned)."""
        key = self.networks.structure(net)
        if key not in self._calibrations:
            self._calibrations[key] = self.store.calibration(key)
        return self._calibrations[key]

    def pin(self, net: Network, points: Sequence[Sequence[float]]) -> None:
        """Estimate `net`'s structure with the calibration of `points` in this process."""
        self._calibrations[self.networks.structure(net)] = Calibration.fit(points)

    def estimate(self, net: Network) -> float:
        """The calibrated cost of `net`; a structure never calibrated is refused."""
        raw = self.costs.layer_sum(net)
        cal = self.calibration(net)
        if cal is None:
            raise LookupTableError(
                f"the lookup table holds no calibration for this network's structure ({self.networks.structure(net)}), "
                "and its layer sum alone is biased (fused layers, per-call costs); call lut.calibrate(traced) once (it "
                "is kept in the table; binding a constraint does it), or read lut.layer_sum(net) for the uncorrected "
                "sum")
        return cal.apply(raw, weights(net) if cal.weighted else None,  # a search estimates thousands
                         traffic(net) if cal.trafficked else None)

    def calibrate(self, traced: Traced, max_networks: int | None = None, seed: int = 0) -> Calibration:
        """Fit the calibration of `traced`'s structure on networks this chooses: `first_networks`,
        then, while fewer than `max_networks` are measured, one half way (in width) between the
        neighbours it fits worst (`worst_fitted`), tilted one way and then the other, until every
        network is fitted within `CALIBRATED`. Networks are kept in the table as they are
        measured, so an interrupted calibration resumes where it stopped; the fit is written once."""
        max_networks = self.calibration_networks if max_networks is None else max_networks
        if max_networks < 2:
            raise LookupTableError(f"calibrate(max_networks={max_networks}) needs at least 2 networks (the full "
                                   "and the smallest), and fits better with more; the default is "
                                   f"{CALIBRATION_NETWORKS}")
        placed = first_networks(traced.network, seed)[:max_networks]
        bar = tqdm(total=max_networks, desc="calibrating", unit="network", disable=None, leave=False)
        points = self._points(traced, [n for _, n in placed])
        bar.update(len(points))
        fractions = [f for f, _ in placed]
        while len(points) < max_networks:
            split = worst_fitted(points, fractions, Calibration.fit(points))
            if split is None:
                break
            f = (fractions[split[0]] + fractions[split[1]]) / 2
            tilt = TILT if len(points) % 2 else -TILT  # deep layers wider, then shallow ones: weights apart
            (point,) = self._points(traced, [at_fraction(traced.network, f, seed + len(points), tilt)])
            points.append(point)
            fractions.append(f)
            bar.update()
        bar.close()
        return self._keep(traced.network, Calibration.fit(points))

    def recalibrate(self, traced: Traced, nets: Sequence[Network],
                    figures: Sequence[float | None] | None = None) -> Calibration:
        """Add end-to-end measurements of `nets` (`figures`, one per network, where given; else
        the table's, measured now where it holds none) to the calibration of their structure."""
        before = self.calibration(traced.network)
        figures = [None] * len(nets) if figures is None else list(figures)
        if len(figures) != len(nets):
            raise LookupTableError(f"recalibrate got {len(figures)} figures for {len(nets)} networks; give one per "
                                   "network (None: the table measures it)")
        todo = [n for n, f in zip(nets, figures, strict=True) if f is None]
        taken = iter(m.median for m in self.networks.measured(traced, todo)) if todo else iter(())
        new = [(self.costs.layer_sum(n), next(taken) if f is None else f, weights(n), traffic(n))
               for n, f in zip(nets, figures, strict=True)]
        return self._keep(traced.network, before.with_points(new) if before is not None else Calibration.fit(new))

    def _keep(self, net: Network, cal: Calibration) -> Calibration:
        """`cal` as the calibration of `net`'s structure, in the table and in this process."""
        key = self.networks.structure(net)
        self.store.put_calibration(key, cal)
        self._calibrations[key] = cal
        return cal

    def _points(self, traced: Traced, nets: Sequence[Network]) -> list[tuple[float, float, float, float]]:
        self.costs.ensure(nets, progress="measuring layers for calibration")
        return [(self.costs.layer_sum(n), m.median, weights(n), traffic(n))
                for n, m in zip(nets, self.networks.measured(traced, nets), strict=True)]


def first_networks(net: Network, seed: int) -> list[tuple[float, Network]]:
    """The networks every calibration measures first, with their global width fractions: the
    full network, the smallest (searches under tight budgets go that low) and `FIRST`'s four
    between, each group jittered; the two at 1/4 tilted by depth, one each way, so that networks
    of a like layer sum differ in their weights, which the fit prices apart. Networks with
    residual branches removed are not among them: a line through both fits neither, and their
    estimates stay a little high (safe) until a strategy's measured networks join (`recalibrate`)."""
    placed = [(1.0, net), (0.0, at_fraction(net, 0.0, seed))]
    return placed + [(f, at_fraction(net, f, seed + k, tilt)) for k, (f, tilt) in enumerate(FIRST, 1)]


def worst_fitted(points: Sequence[tuple[float, ...]], fractions: Sequence[float],
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
