"""GeometricProgram: every group's width from a geometric program on the estimators' costs.

Each budgeted resource is fitted, from a few dozen calls of its estimator, as a posynomial in
the kept fractions x_g = width_g / full_width_g of the channel groups:

    cost(x) ~ c0 + sum_g a_g x_g + sum_{(g,h) in P} b_gh x_g x_h,     every coefficient >= 0

by nonnegative least squares on relative errors. P holds the pairs of groups that meet in a
layer (one feeds it, the other is its output: a conv's MACs and weights scale with
x_in * x_out), so MACs and parameters are fitted exactly and the number of terms grows with
the layers, not with the square of the groups. Estimators are only called, never read, so
latency tables, energy models, memory and user constraints are all fitted alike. Then

    maximize prod_g x_g^w_g   subject to   cost_j(x) <= budget_j,   min_g <= x_g <= 1

(w_g: each group's share of the filters' L2 magnitude, or equal shares) is a geometric
program, solved by cvxpy in its log-log convex form (DGP). The solution is rounded to each
group's grid (down, and to the nearest width) and the real estimators have the last word:
while a budget is broken, the group that saves the most resource per importance lost shrinks
by one step; then, while one can, the group that gains the most importance per resource spent
grows by one step (taking up the slack the fit and the rounding leave). Where a fit is more
than 1% off the estimate at the solution, the program is solved again with each budget scaled
by fit / estimate there (at most CALIBRATIONS programs); the widths of highest importance win.
Every probe is recorded. The one network found is fine-tuned and returned, as UniformWidth's
is: choosing the widths takes well under a second to a few seconds, and no training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.optimize import nnls

from netopt.constraints import Bound
from netopt.errors import InfeasibleError
from netopt.ir import Network
from netopt.strategies.base import Problem, Result
from netopt.strategies.search import Trials, WidthSearch
from netopt.strategies.settings import GeometricSettings

if TYPE_CHECKING:
    import cvxpy as cp

__all__ = ["GeometricProgram", "GeometricReport", "Posynomial", "Fit", "fit_posynomial", "layer_pairs",
           "importance_weights", "importance", "round_to_grid"]

SCALES = (0.25, 0.5, 0.75)  # uniform width multipliers added to the fit's samples
CALIBRATIONS = 3  # geometric programs at most: the first, then with budgets rescaled by the fit's error
CALIBRATED = 0.01  # a fit within 1% of the estimate at the solution needs no rescaling
Term = tuple[int, ...]  # indices of the groups whose fractions multiply: () is the constant


@dataclass(frozen=True)
class Posynomial:
    """sum_k c_k prod_{g in term_k} x_g, with every c_k > 0, times `scale` (the start's cost)."""

    terms: tuple[Term, ...]
    coefficients: tuple[float, ...]
    scale: float

    def __call__(self, x: np.ndarray) -> float:
        """The fitted cost at fractions `x`, in the estimator's unit."""
        return self.scale * float((_features(self.terms, x[None, :]) @ np.asarray(self.coefficients))[0])

    @property
    def constant(self) -> bool:
        return all(not t for t in self.terms)

    def expression(self, x: cp.Variable) -> cp.Expression:
        """The same posynomial over a cvxpy variable, in units of `scale` (DGP-compatible)."""
        parts = []
        for term, c in zip(self.terms, self.coefficients, strict=True):
            monomial: Any = c
            for g in term:
                monomial = monomial * x[g]
            parts.append(monomial)
        return sum(parts[1:], parts[0])


@dataclass(frozen=True)
class Fit:
    """One resource's fitted posynomial and how well it reproduces the estimator on its samples."""

    resource: str
    posynomial: Posynomial
    max_error: float  # the largest |fit - estimate| / estimate over the samples
    mean_error: float
    samples: int


@dataclass
class GeometricReport:
    """What one run of GeometricProgram did: fits, the program's solution, repair and growth."""

    fits: dict[str, Fit] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)  # w_g, by group id
    fit_seconds: float = 0.0
    solve_seconds: float = 0.0
    rounds: int = 0  # geometric programs solved (the first, then recalibrated ones)
    # the first program: the solver's status (or why it started from the smallest network), its
    # x_g, those rounded down, and the fits and the estimators there
    status: str = "not solved"
    fractions: dict[str, float] = field(default_factory=dict)
    rounded: dict[str, int] = field(default_factory=dict)
    predicted: dict[str, float] = field(default_factory=dict)
    estimated: dict[str, float] = field(default_factory=dict)
    start: str = ""  # which program and rounding the chosen widths came from
    shrinks: int = 0
    grows: int = 0
    probes: int = 0
    total_seconds: float = 0.0


class GeometricProgram(WidthSearch):
    """Widths from a geometric program on posynomial fits of every budgeted resource, rounded
    and repaired on the real estimators; then that one network is fine-tuned (see the module).

    `samples` random width assignments (at least one per posynomial term) feed each fit;
    `importance` weighs the groups ("magnitude": share of filter L2 norm; "uniform"); `solver`
    names a cvxpy solver (None: cvxpy's choice). `last_fit` reports the latest run.

    >>> import netopt
    >>> from netopt.testing.contract import small_network
    >>> from netopt.testing.problems import joint_problem
    >>> problem = joint_problem(small_network(), macs="60%", memory="90%")
    >>> result = netopt.GeometricProgram(short_term_steps=1, long_term_steps=1, progress=False).run(problem)
    >>> result.over_budget
    {}
    """

    name = "GeometricProgram"
    Settings = GeometricSettings
    settings: GeometricSettings
    repairs = 3

    def __init__(self, *, executor: Executor | None = None, progress: bool | None = None, **settings: Any) -> None:
        super().__init__(executor=executor, progress=progress, **settings)
        self.last_fit: GeometricReport | None = None

    def search(self, trials: Trials) -> Result:
        started = time.perf_counter()
        report = self.last_fit = GeometricReport()
        net = trials.network
        if net.groups:
            report.weights = dict(zip((g.id for g in net.groups), importance_weights(trials.problem, self.importance),
                                      strict=True))
            widths = self.choose(trials, report)
        else:
            widths = {}
        trials.score([widths])
        for _ in range(self.repairs):  # measured over a budget: solve again on the recalibrated estimates
            if trials.verify(trials.scored[-1]):
                break
            again = self.choose(trials, report) if net.groups else widths
            if any(c.network.widths == net.with_widths(again).widths for c in trials.scored):
                break
            trials.score([again])
        report.total_seconds = time.perf_counter() - started
        return trials.result(self.name, self.long_term_steps)

    def choose(self, trials: Trials, report: GeometricReport) -> dict[str, int]:
        """Fit; then, up to CALIBRATIONS times: solve, round each way, repair and grow on the
        estimators, and rescale the budgets the program sees by the fit's error where it landed.
        The widths with the highest importance win."""
        net, weights = trials.network, report.weights
        fitting = time.perf_counter()
        report.fits = fit_all(trials.bounds, net, self.samples, self.seed)
        report.fit_seconds = time.perf_counter() - fitting
        first, tried, rounds = len(trials.history), set[tuple[tuple[str, int], ...]](), report.rounds
        budgets: dict[str, float] | None = {b.resource: b.budget for b in trials.bounds}
        best: dict[str, int] = {}
        while budgets is not None and report.rounds - rounds < CALIBRATIONS:  # each choice its own rounds
            x = self._solve(net, budgets, report)
            for nearest in (False, True):
                start = round_to_grid(net, x, nearest=nearest)
                if _frozen(start) in tried:
                    continue
                tried.add(_frozen(start))
                trials.note(start, trials.resources(start))
                widths = self.grow(trials, self.repair(trials, start, weights, report), weights, report)
                if not best or importance(weights, widths) > importance(weights, best) + 1e-12:
                    best, report.start = widths, f"round {report.rounds}, {'nearest' if nearest else 'down'}"
            budgets = self._calibrated(trials, x, report)
        report.probes = len(trials.history) - first
        return best

    def _solve(self, net: Network, budgets: dict[str, float], report: GeometricReport) -> np.ndarray:
        """One geometric program on the fits, timed; the first one's solution goes in the report."""
        solving = time.perf_counter()
        x, status = solve(net, report.fits, budgets, np.array(list(report.weights.values())), self.solver)
        report.solve_seconds += time.perf_counter() - solving
        report.rounds += 1
        if report.rounds == 1:
            report.status, report.fractions = status, dict(zip(report.weights, map(float, x), strict=True))
        return x

    def _calibrated(self, trials: Trials, x: np.ndarray, report: GeometricReport) -> dict[str, float] | None:
        """Budgets for the next program, each scaled by fit / estimate at the solution rounded
        down; None where every fit is within CALIBRATED there (nothing to correct)."""
        rounded = round_to_grid(trials.network, x, nearest=False)
        fractions = np.array([rounded[g.id] / g.full_width for g in trials.network.groups])
        predicted = {r: f.posynomial(fractions) for r, f in report.fits.items()}
        estimated = trials.resources(rounded)
        if report.rounds == 1:
            report.rounded, report.predicted, report.estimated = rounded, predicted, estimated
        ratios = {r: predicted[r] / estimated[r] if estimated[r] > 0 else 1.0 for r in estimated}
        if all(abs(q - 1.0) <= CALIBRATED for q in ratios.values()):
            return None
        return {b.resource: b.budget * ratios[b.resource] for b in trials.bounds}

    def repair(self, trials: Trials, widths: dict[str, int], weights: dict[str, float],
               report: GeometricReport) -> dict[str, int]:
        """Shrink one group a step at a time, most resource saved per importance lost first,
        until the estimators say every budget is met."""
        resources = trials.resources(widths)
        while not trials.feasible(resources):
            violated = [b for b in trials.bounds if resources[b.resource] > trials.engine.budgets.aim(b)]
            best, best_ratio = None, 0.0
            for gid, probe in _moves(trials.network, widths, -1):
                found = trials.resources(probe)
                trials.note(probe, found)
                saved = sum(max(resources[b.resource] - found[b.resource], 0.0) / b.budget for b in violated)
                ratio = saved / (_gain(weights[gid], widths[gid], probe[gid]) + 1e-12)
                if ratio > best_ratio:
                    best, best_ratio = (probe, found), ratio
            if best is None:  # no single step helps: shrink every group one step (ends at the smallest)
                best = _shrink_all(trials, widths)
            widths, resources = best
            report.shrinks += 1
        return widths

    def grow(self, trials: Trials, widths: dict[str, int], weights: dict[str, float],
             report: GeometricReport) -> dict[str, int]:
        """Grow one group a step at a time, most importance gained per resource spent first,
        while every budget stays met. A group that once breaks a budget is not tried again:
        the analytic estimators are monotone in the widths, and for a noisy one (a latency
        table) this only forgoes some growth."""
        resources = trials.resources(widths)
        blocked: set[str] = set()
        while True:
            best, best_ratio = None, -1.0
            for gid, probe in _moves(trials.network, widths, +1):
                if gid in blocked:
                    continue
                found = trials.resources(probe)
                trials.note(probe, found)
                if not trials.feasible(found):
                    blocked.add(gid)
                    continue
                spent = sum(max(found[b.resource] - resources[b.resource], 0.0) / b.budget for b in trials.bounds)
                ratio = _gain(weights[gid], widths[gid], probe[gid]) / (spent + 1e-12)
                if ratio > best_ratio:
                    best, best_ratio = (probe, found), ratio
            if best is None:
                return widths
            widths, resources = best
            report.grows += 1


# --- fitting -------------------------------------------------------------------------------------


def layer_pairs(net: Network) -> list[Term]:
    """The posynomial's terms: the constant, every group alone, and each pair (g, h) of groups
    where g feeds a layer whose output is h (a layer that keeps its input's groups, such as a
    depthwise conv, a BN or an add, costs in proportion to x_g alone and adds no pair)."""
    index = {g.id: i for i, g in enumerate(net.groups)}

    def groups(name: str) -> set[int]:
        return {index[s.group] for s in net.layout(name) if s.group in index}

    pairs: set[Term] = set()
    for node in net.nodes:
        outs = groups(node.name)
        ins = set().union(*(groups(i) for i in node.inputs))
        if outs != ins:
            pairs.update((min(a, b), max(a, b)) for a in ins for b in outs)
    return [(), *((i,) for i in range(len(index))), *sorted(pairs)]


def fit_posynomial(resource: str, costs: np.ndarray, scale: float, x: np.ndarray, terms: Sequence[Term]) -> Fit:
    """Nonnegative least squares of `costs` (one per row of fractions `x`) on `terms`, weighted
    so that relative errors count (costs are divided by `scale`, the start's cost)."""
    y = costs / scale
    weight = 1.0 / np.maximum(y, 1e-9 * max(float(y.max()), 1e-30))
    a = _features(terms, x)
    coefficients, _ = nnls(a * weight[:, None], y * weight, maxiter=50 * a.shape[1])
    kept = [k for k, c in enumerate(coefficients) if c > 1e-12] or [0]
    posynomial = Posynomial(tuple(terms[k] for k in kept), tuple(max(float(coefficients[k]), 1e-12) for k in kept),
                            scale)
    errors = np.abs(a @ coefficients - y) * weight
    return Fit(resource, posynomial, float(errors.max()), float(errors.mean()), len(y))


def fit_all(bounds: Sequence[Bound], net: Network, samples: int, seed: int) -> dict[str, Fit]:
    """Fit every bound's estimator on the same width assignments (see `fit_samples`)."""
    terms = layer_pairs(net)
    assignments = fit_samples(net, max(samples, len(terms)), seed)
    groups = net.groups
    x = np.array([[w[g.id] / g.full_width for g in groups] for w in assignments])
    nets = [net.with_widths(w) for w in assignments]
    fits = {}
    for bound in bounds:
        costs = np.array([bound.estimate(n) for n in nets])
        scale = bound.initial if bound.initial > 0 else max(float(costs.max()), 1.0)
        fits[bound.resource] = fit_posynomial(bound.resource, costs, scale, x, terms)
    return fits


def fit_samples(net: Network, count: int, seed: int) -> list[dict[str, int]]:
    """The full and the smallest network, each group alone at its minimum, a few uniform width
    multipliers, and `count` random assignments on the groups' grids (seeded)."""
    groups = net.groups
    full = {g.id: g.full_width for g in groups}
    out = [full, {g.id: g.min_width for g in groups}]
    out += [{**full, g.id: g.min_width} for g in groups]
    out += [net.scaled(s).widths for s in SCALES]
    rng = np.random.default_rng(seed)
    out += [{g.id: int(rng.choice(g.valid_widths())) for g in groups} for _ in range(count)]
    return out


def _features(terms: Sequence[Term], x: np.ndarray) -> np.ndarray:
    """One column per term: the product of the fractions it names (1 for the constant)."""
    return np.stack([np.prod(x[:, list(t)], axis=1) if t else np.ones(len(x)) for t in terms], axis=1)


# --- importance and the program ------------------------------------------------------------------


def importance_weights(problem: Problem, kind: str) -> np.ndarray:
    """w_g, summing to 1: each group's share of its producers' filter L2 norms ("magnitude",
    the sum over its channels of what ChooseWhichFilters ranks them by), or equal ("uniform")."""
    groups = problem.traced.network.groups
    if kind == "uniform":
        return np.full(len(groups), 1.0 / len(groups))
    from netopt.bridge.materialize import group_weights
    from netopt.bridge.select import L2Magnitude

    norms = np.array([float(L2Magnitude().scores(group_weights(problem.traced, g.id)).sum()) for g in groups])
    norms = np.maximum(np.nan_to_num(norms), 1e-6 * max(float(norms.max()), 1e-30))
    return norms / norms.sum()  # type: ignore[no-any-return]


def solve(net: Network, fits: dict[str, Fit], budgets: dict[str, float], weights: np.ndarray,
          solver: str | None) -> tuple[np.ndarray, str]:
    """The geometric program's fractions and the solver's status; where it fails or finds the
    fits infeasible, the smallest network's fractions (repair and growth take it from there)."""
    import cvxpy as cp

    lo = np.array([g.min_width / g.full_width for g in net.groups])
    x = cp.Variable(len(lo), pos=True)
    importance: Any = 1.0
    for g, w in enumerate(weights):
        importance = importance * x[g] ** float(w)
    constraints = [x <= np.ones(len(lo)), x >= lo]
    constraints += [fit.posynomial.expression(x) <= budgets[r] / fit.posynomial.scale
                    for r, fit in fits.items() if not fit.posynomial.constant]
    program = cp.Problem(cp.Maximize(importance), constraints)
    try:
        program.solve(gp=True, solver=solver)
    except (cp.SolverError, cp.DGPError, ValueError, ArithmeticError) as exc:
        return lo, f"solver failed ({type(exc).__name__}: {str(exc).strip()[:120]}); started from the smallest"
    if program.status not in ("optimal", "optimal_inaccurate") or x.value is None:
        return lo, f"{program.status}; started from the smallest"
    return np.clip(np.asarray(x.value, dtype=float), lo, 1.0), str(program.status)


def round_to_grid(net: Network, x: np.ndarray, *, nearest: bool) -> dict[str, int]:
    """Each group at the largest width of its grid not above x_g * full width, or at the nearest
    one with `nearest` (never below its minimum)."""
    out = {}
    for g, xg in zip(net.groups, x, strict=True):
        target = float(xg) * g.full_width
        below = max(w for w in g.valid_widths() if w <= max(g.min_width, target + 1e-6))
        above = min((w for w in g.valid_widths() if w >= target - 1e-6), default=below)
        out[g.id] = above if nearest and above - target < target - below else below
    return out


def importance(weights: dict[str, float], widths: dict[str, int]) -> float:
    """The log of the program's objective, sum_g w_g log(width_g), up to a constant."""
    return sum(w * math.log(widths[g]) for g, w in weights.items())


def _frozen(widths: dict[str, int]) -> tuple[tuple[str, int], ...]:
    return tuple(widths.items())


def _moves(net: Network, widths: dict[str, int], direction: int) -> list[tuple[str, dict[str, int]]]:
    """Every assignment one grid step away from `widths` in `direction` (-1 shrink, +1 grow)."""
    out = []
    for g in net.groups:
        grid = g.valid_widths()
        k = grid.index(widths[g.id]) + direction
        if 0 <= k < len(grid):
            out.append((g.id, {**widths, g.id: grid[k]}))
    return out


def _gain(weight: float, a: int, b: int) -> float:
    """|w_g log(b / a)|: the importance (log of the program's objective) between widths a and b."""
    return abs(weight * math.log(b / a))


def _shrink_all(trials: Trials, widths: dict[str, int]) -> tuple[dict[str, int], dict[str, float]]:
    """Every group one step smaller (the repair's way forward when no single step saves anything)."""
    smaller = {**widths}
    for gid, probe in _moves(trials.network, widths, -1):
        smaller[gid] = probe[gid]
    if smaller == widths:
        raise InfeasibleError("GeometricProgram: the smallest network breaks a budget by the estimators; "
                              "relax the budget (check_feasible should have said so first)")
    found = trials.resources(smaller)
    trials.note(smaller, found)
    return smaller, found
