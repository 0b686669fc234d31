"""`Calibration`: the lookup table's fit of whole-network cost on its layer sum and weights.

A layer sum is biased (fused kernels, per-call costs, weights fetched anew by a whole network),
so a table estimates a network through a fit on whole networks of its structure, measured end
to end. This module is the fit alone; which networks are measured is `netopt.lut.calibrator`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import lsq_linear
from scipy.stats import f as f_distribution

from netopt.errors import LookupTableError
from netopt.ir import Network
from netopt.ir.costs import params

__all__ = ["Calibration", "stored_calibration", "weights"]


@dataclass(frozen=True)
class Calibration:
    """The whole-network cost as a rising plane in the layer sum and the weights, fitted on
    whole networks.

    cost = intercept + slope * layer sum + per_weight * weights (millions of parameters), least
    squares in relative error (every network counts alike, small or big), slope and per_weight
    kept positive so that a smaller network is never estimated dearer; below the smallest
    calibration network, the intercept shrinks with the layer sum. The intercept takes what the
    whole network pays once or per layer beyond its units measured alone (positive: fixed costs
    weigh most in small networks; negative: big variants spill out of cache).

    The weights, because a unit is timed warm, its weights in cache, while a whole network among
    other work fetches its weights anew each call. They are priced only where they vary apart
    from the layer sum (`_apart`) and fit the networks better than the line by more than chance
    (`_significant`); else the fit is the line alone. A plane, not a curve through every network:
    networks measured side by side still scatter around any smooth curve, and an interpolating
    fit follows the scatter (docs/decisions.md).

    A calibration of an older netopt holds (layer sum, measured) points only: it is the line.

    >>> cal = Calibration.fit([(1.0, 1.0), (2.0, 1.6), (3.0, 2.2), (4.0, 2.8)])
    >>> [round(v, 6) for v in cal.line], round(cal.apply(5.0), 6)
    ([0.4, 0.6], 3.4)
    """

    points: tuple[tuple[float, ...], ...]  # (layer sum, measured end to end, weights in M), by layer sum

    @classmethod
    def fit(cls, points: Sequence[Sequence[float]]) -> Calibration:
        ordered = tuple(sorted(tuple(float(v) for v in p) for p in points if p[0] > 0))
        if not ordered:
            raise LookupTableError("calibration needs at least one network with a positive layer sum")
        if len({len(p) for p in ordered}) > 1 or len(ordered[0]) not in (2, 3):
            raise LookupTableError(f"calibration points are (layer sum, measured, weights), got {ordered[0]!r} and "
                                   "others of another length; refit it with lut.calibrate(traced)")
        return cls(ordered)

    def with_points(self, points: Sequence[Sequence[float]]) -> Calibration:
        """This calibration and more networks; a new point at a layer sum already held replaces it.
        Added to a calibration of an older netopt (no weights), the new points lose theirs."""
        width = len(self.points[0])
        new = {float(p[0]): tuple(float(v) for v in p[:width]) for p in points}
        return Calibration.fit([*(p for p in self.points if p[0] not in new), *new.values()])

    @property
    def weighted(self) -> bool:
        """Whether the weights enter the fit (they vary apart from the layer sum)."""
        return self.plane[2] > 0.0

    @property
    def line(self) -> tuple[float, float]:
        """(intercept, slope) of the fitted cost (the weights' share aside)."""
        return self.plane[:2]

    @property
    def plane(self) -> tuple[float, float, float]:
        """(intercept, slope, per_weight) of the fitted cost."""
        cached = self.__dict__.get("_fit")
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        x = np.array([p[0] for p in self.points])
        y = np.array([p[1] for p in self.points])
        w = np.array([p[2] for p in self.points]) if len(self.points[0]) == 3 else np.zeros_like(x)
        if len(set(x.tolist())) < 2:  # one layer sum: its ratio
            fit = (0.0, float(np.mean(y / x)), 0.0)
        else:
            line = _fitted(x, y, None)
            fit = _fitted(x, y, w) if _apart(x, w) else line
            if fit[2] > 0.0 and not _significant(x, y, w, fit, line):
                fit = line  # the weights' share fitted the scatter, not the networks
        object.__setattr__(self, "_fit", fit)  # frozen value, derived once
        return fit

    @property
    def knots(self) -> tuple[np.ndarray, np.ndarray]:
        """The layer sums of the calibration networks and the fitted ratio cost / layer sum there."""
        x = np.array([p[0] for p in self.points])
        return x, np.array([self.apply(p[0], p[2] if len(p) == 3 else None) for p in self.points]) / x

    def apply(self, layer_sum: float, weights: float | None = None) -> float:
        """The estimated cost of a network of `layer_sum` with `weights` millions of parameters
        (needed where the weights enter the fit)."""
        intercept, slope, per_weight = self.plane
        if per_weight > 0.0 and weights is None:
            raise LookupTableError("this calibration prices the weights: pass the network's weights (millions of "
                                   "parameters) with its layer sum")
        fixed = intercept if layer_sum >= self.points[0][0] else intercept * layer_sum / self.points[0][0]
        return float(fixed + slope * layer_sum + per_weight * (weights or 0.0))

    def error(self, layer_sum: float, measured: float, weights: float | None = None) -> float:
        """(estimate - measured) / measured for a network of `layer_sum` and `weights` measured at `measured`."""
        return self.apply(layer_sum, weights) / measured - 1.0


def weights(net: Network) -> float:
    """`net`'s weights in millions of parameters: what a whole network fetches anew on each
    call beyond its units timed warm (`Calibration`)."""
    return params(net) / 1e6


def _fitted(x: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> tuple[float, float, float]:
    """(intercept, slope, per_weight) least squares in relative error, slope and per_weight
    positive; without weights `w`, the line; through nothing it was fitted on, the ratio."""
    floor = 1e-3 * float(y.mean() / x.mean())
    columns = [1 / y, x / y] + ([w / y] if w is not None else [])
    found = lsq_linear(np.stack(columns, axis=1), np.ones_like(y),
                       bounds=([-np.inf, floor, 0.0][:len(columns)], [np.inf] * len(columns)))
    fit = (float(found.x[0]), float(found.x[1]), float(found.x[2]) if w is not None else 0.0)
    if np.any(fit[0] + fit[1] * x + fit[2] * (w if w is not None else 0.0) <= 0):
        fit = (0.0, float(np.exp(np.mean(np.log(y / x)))), 0.0)
    return fit


def _significant(x: np.ndarray, y: np.ndarray, w: np.ndarray, plane: tuple[float, float, float],
                 line: tuple[float, float, float]) -> bool:
    """Whether `plane` fits the networks better than the line by more than chance: the nested
    models' F-test on relative errors, at 1%. It keeps chance out, not networks unlike the
    calibration's: those a strategy measures join the calibration (`recalibrate`)."""
    def squares(fit: tuple[float, float, float]) -> float:
        return float(np.sum(((fit[0] + fit[1] * x + fit[2] * w) / y - 1) ** 2))

    worse, found, free = squares(line), squares(plane), len(x) - 3
    if free < 1 or worse <= found:
        return False
    return found <= 0.0 or float(f_distribution.sf((worse - found) / (found / free), 1, free)) < 0.01


def _apart(x: np.ndarray, w: np.ndarray) -> bool:
    """Whether weights `w` vary apart from layer sums `x`: at least 4 networks, and a line in `x`
    leaves more than 2% of the weights' spread unexplained (else their share cannot be told)."""
    if len(x) < 4 or np.ptp(w) <= 0:
        return False
    design = np.stack([np.ones_like(x), x], axis=1)
    residual = w - design @ np.linalg.lstsq(design, w, rcond=None)[0]
    return float(np.sum(residual**2) / np.sum((w - w.mean()) ** 2)) > 0.02


def stored_calibration(points: Sequence[Sequence[float]]) -> Calibration | None:
    """A table's calibration, read back; None for one of an older netopt (no weights in its points),
    so that binding a constraint fits it again (its networks are kept in the table)."""
    if not points or any(len(p) != 3 for p in points):
        return None
    return Calibration.fit(points)
