"""`Calibration`: the lookup table's fit of whole-network cost on its layer sum, weights and traffic.

A layer sum is biased (fused kernels, per-call costs, weights fetched anew by a whole network,
layouts converted at the edges of a unit timed alone), so a table estimates a network through a
fit on whole networks of its structure, measured end to end. This module is the fit alone;
which networks are measured is `netopt.lut.calibrator`'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import lsq_linear
from scipy.stats import f as f_distribution

from netopt.errors import LookupTableError
from netopt.ir import Network
from netopt.ir.costs import params
from netopt.lut.units import units

__all__ = ["Calibration", "stored_calibration", "weights", "traffic"]

LEVEL = 0.05
"""The F-test's level for a term beyond the line: the convention (docs/decisions.md says why not 1%)."""

Coefficients = tuple[float, float, float, float]
"""(intercept, slope, per_weight, per_traffic) of a fitted cost."""

@dataclass(frozen=True)
class Calibration:
    """The whole-network cost as a rising plane in the layer sum, the weights and the traffic,
    fitted on whole networks.

    cost = intercept + slope * layer sum + per_weight * weights + per_traffic * traffic (weights
    and traffic in millions of values), least squares in relative error (every network counts
    alike, small or big), every coefficient but the intercept kept positive so that a smaller
    network is never estimated dearer; below the smallest calibration network, the intercept
    shrinks with the layer sum. The intercept takes what the whole network pays once or per
    layer beyond its units measured alone (positive: fixed costs weigh most in small networks;
    negative: big variants spill out of cache).

    The weights, because a unit is timed warm, its weights in cache, while a whole network among
    other work fetches its weights anew each call. The traffic (the activations a network's units
    read and write), because a runtime may time a unit alone unlike it runs inside the network:
    OpenVINO converts a lone unit's input and output to and from its blocked layout, so its
    units' sum follows their edges more than their work. Each is priced only where it varies
    apart from what the fit holds already (`_apart`) and fits the networks better by more than
    chance (`_significant`), the better one first; else the fit is the line alone. A plane, not a
    curve through every network: networks measured side by side still scatter around any smooth
    curve, and an interpolating fit follows the scatter (docs/decisions.md).

    A calibration of an older netopt holds (layer sum, measured) or (layer sum, measured,
    weights) points: it is fitted on what they hold.

    >>> cal = Calibration.fit([(1.0, 1.0), (2.0, 1.6), (3.0, 2.2), (4.0, 2.8)])
    >>> [round(v, 6) for v in cal.line], round(cal.apply(5.0), 6)
    ([0.4, 0.6], 3.4)
    """

    points: tuple[tuple[float, ...], ...]  # (layer sum, measured, weights in M, traffic in M), by layer sum

    @classmethod
    def fit(cls, points: Sequence[Sequence[float]]) -> Calibration:
        ordered = tuple(sorted(tuple(float(v) for v in p) for p in points if p[0] > 0))
        if not ordered:
            raise LookupTableError("calibration needs at least one network with a positive layer sum")
        if len({len(p) for p in ordered}) > 1 or len(ordered[0]) not in (2, 3, 4):
            raise LookupTableError(f"calibration points are (layer sum, measured, weights, traffic), got "
                                   f"{ordered[0]!r} and others of another length; refit it with lut.calibrate(traced)")
        return cls(ordered)

    def with_points(self, points: Sequence[Sequence[float]]) -> Calibration:
        """This calibration and more networks; a new point at a layer sum already held replaces it.
        Added to a calibration of an older netopt, the new points lose what its points lack."""
        width = len(self.points[0])
        new = {float(p[0]): tuple(float(v) for v in p[:width]) for p in points}
        return Calibration.fit([*(p for p in self.points if p[0] not in new), *new.values()])

    @property
    def weighted(self) -> bool:
        """Whether the weights enter the fit (they vary apart from the layer sum)."""
        return self.coefficients[2] > 0.0

    @property
    def trafficked(self) -> bool:
        """Whether the traffic enters the fit."""
        return self.coefficients[3] > 0.0

    @property
    def line(self) -> tuple[float, float]:
        """(intercept, slope) of the fitted cost (the weights' and the traffic's shares aside)."""
        return self.coefficients[:2]

    @property
    def plane(self) -> tuple[float, float, float]:
        """(intercept, slope, per_weight) of the fitted cost (the traffic's share aside)."""
        return self.coefficients[:3]

    @property
    def coefficients(self) -> Coefficients:
        """(intercept, slope, per_weight, per_traffic) of the fitted cost."""
        cached = self.__dict__.get("_fit")
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        x = np.array([p[0] for p in self.points])
        y = np.array([p[1] for p in self.points])
        extras = {k: np.array([p[k] for p in self.points]) for k in (2, 3) if len(self.points[0]) > k}
        if len(set(x.tolist())) < 2:  # one layer sum: its ratio
            fit: Coefficients = (0.0, float(np.mean(y / x)), 0.0, 0.0)
        else:
            fit = _selected(x, y, extras)
        object.__setattr__(self, "_fit", fit)  # frozen value, derived once
        return fit

    @property
    def knots(self) -> tuple[np.ndarray, np.ndarray]:
        """The layer sums of the calibration networks and the fitted ratio cost / layer sum there."""
        x = np.array([p[0] for p in self.points])
        return x, np.array([self.apply(*p[:1], *p[2:]) for p in self.points]) / x

    def apply(self, layer_sum: float, weights: float | None = None, traffic: float | None = None) -> float:
        """The estimated cost of a network of `layer_sum` with `weights` millions of parameters and
        `traffic` millions of activations (each needed where it enters the fit)."""
        intercept, slope, per_weight, per_traffic = self.coefficients
        for name, value, price in (("weights", weights, per_weight), ("traffic", traffic, per_traffic)):
            if price > 0.0 and value is None:
                raise LookupTableError(f"this calibration prices the {name}: pass the network's {name} (millions, "
                                       f"calibration.{name}(net)) with its layer sum")
        fixed = intercept if layer_sum >= self.points[0][0] else intercept * layer_sum / self.points[0][0]
        return float(fixed + slope * layer_sum + per_weight * (weights or 0.0) + per_traffic * (traffic or 0.0))

    def error(self, layer_sum: float, measured: float, weights: float | None = None,
              traffic: float | None = None) -> float:
        """(estimate - measured) / measured for a network of `layer_sum`, `weights` and `traffic`
        measured at `measured`."""
        return self.apply(layer_sum, weights, traffic) / measured - 1.0


def weights(net: Network) -> float:
    """`net`'s weights in millions of parameters: what a whole network fetches anew on each
    call beyond its units timed warm (`Calibration`)."""
    return params(net) / 1e6


def traffic(net: Network) -> float:
    """The activations `net`'s units read and write, in millions of values: where a runtime times
    a unit alone unlike it runs in the network, their edges weigh in its cost (`Calibration`)."""
    return sum(math.prod(s) for u in units(net) for s in (*u.input_shapes, u.output_shape)) / 1e6


def _selected(x: np.ndarray, y: np.ndarray, extras: dict[int, np.ndarray]) -> Coefficients:
    """The line, and each of `extras` (point column -> values) that varies apart from what the
    fit holds and improves it by more than chance, the best first."""
    chosen: list[int] = []
    fit = _fitted(x, y, extras, chosen)
    while True:
        tried = [(k, _fitted(x, y, extras, [*chosen, k])) for k in sorted(extras)
                 if k not in chosen and _apart(_design(x, extras, chosen), extras[k])]
        better = [(k, f) for k, f in tried if f[k] > 0.0 and _significant(x, y, extras, f, fit, len(chosen) + 3)]
        if not better:
            return fit
        k, fit = min(better, key=lambda kf: _squares(x, y, extras, kf[1]))
        chosen.append(k)


def _design(x: np.ndarray, extras: dict[int, np.ndarray], chosen: Sequence[int]) -> np.ndarray:
    return np.stack([np.ones_like(x), x, *(extras[k] for k in chosen)], axis=1)


def _predicted(x: np.ndarray, extras: dict[int, np.ndarray], fit: Coefficients) -> np.ndarray:
    return fit[0] + fit[1] * x + sum((fit[k] * v for k, v in extras.items()), np.zeros_like(x))


def _squares(x: np.ndarray, y: np.ndarray, extras: dict[int, np.ndarray], fit: Coefficients) -> float:
    return float(np.sum((_predicted(x, extras, fit) / y - 1) ** 2))


def _fitted(x: np.ndarray, y: np.ndarray, extras: dict[int, np.ndarray], chosen: Sequence[int]) -> Coefficients:
    """(intercept, slope, per_weight, per_traffic) least squares in relative error on the line and
    the `chosen` extras, every coefficient but the intercept positive; through nothing it was
    fitted on, the ratio."""
    floor = 1e-3 * float(y.mean() / x.mean())
    design = _design(x, extras, chosen) / y[:, None]
    found = lsq_linear(design, np.ones_like(y), bounds=([-np.inf, floor] + [0.0] * len(chosen),
                                                       [np.inf] * (2 + len(chosen))))
    fit = [float(found.x[0]), float(found.x[1]), 0.0, 0.0]
    for k, value in zip(chosen, found.x[2:], strict=True):
        fit[k] = float(value)
    if np.any(_predicted(x, extras, (fit[0], fit[1], fit[2], fit[3])) <= 0):
        return (0.0, float(np.exp(np.mean(np.log(y / x)))), 0.0, 0.0)
    return (fit[0], fit[1], fit[2], fit[3])


def _significant(x: np.ndarray, y: np.ndarray, extras: dict[int, np.ndarray], bigger: Coefficients,
                 smaller: Coefficients, terms: int) -> bool:
    """Whether `bigger` (of `terms` coefficients) fits the networks better than the nested
    `smaller` by more than chance: the nested models' F-test on relative errors, at `LEVEL`. It
    keeps chance out, not networks unlike the calibration's: those a strategy measures join the
    calibration (`recalibrate`)."""
    worse, found, free = _squares(x, y, extras, smaller), _squares(x, y, extras, bigger), len(x) - terms
    if free < 1 or worse <= found:
        return False
    return found <= 0.0 or float(f_distribution.sf((worse - found) / (found / free), 1, free)) < LEVEL


def _apart(design: np.ndarray, w: np.ndarray) -> bool:
    """Whether `w` varies apart from the columns of `design`: at least 4 networks, and a fit on
    them leaves more than 2% of `w`'s spread unexplained (else its share cannot be told)."""
    if len(w) < 4 or np.ptp(w) <= 0:
        return False
    residual = w - design @ np.linalg.lstsq(design, w, rcond=None)[0]
    return float(np.sum(residual**2) / np.sum((w - w.mean()) ** 2)) > 0.02


def stored_calibration(points: Sequence[Sequence[float]]) -> Calibration | None:
    """A table's calibration, read back; None for one of an older netopt without weights in its
    points, so that binding a constraint fits it again (its networks are kept in the table). One
    without traffic estimates as it did; `lut.calibrate(traced)` refits it with the traffic."""
    if not points or any(len(p) not in (3, 4) for p in points):
        return None
    return Calibration.fit(points)
