"""Several strategies on one problem, judged alike: `netopt compare` and its Python API.

Every strategy gets the same starting network, the same constraints (the same lookup table
among them), the same objective and the same fine-tuning budget: with `search_steps="match"`
ProgressiveBarrier runs first at each budget, and every strategy that searches by fine-tuning
candidates may spend as many short-term training steps as it did. Every result is long-term
fine-tuned the same way. The finals of one budget are then measured end to end side by side
(interleaved, lowest-median round kept), so latency ratios are not skewed by load that came
and went between strategies.

    out/
      latency-50pct/ProgressiveBarrier/   that strategy's run directory (resumable)
      latency-50pct/ProgressiveBarrier/row.json
      comparison.json, comparison.md, frontier.png

Each finished strategy's row is written atomically, so `resume=True` (`--resume`) skips what
is done and resumes what is not. row.json and comparison.json carry `format_version`; a row
written before the key existed is version 1, and a newer one is refused.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from netopt.constraints.amount import parse_amount
from netopt.errors import InfeasibleError, first_line
from netopt.ir import Network, macs, params
from netopt.ir.versions import VERSION_KEY, version_of
from netopt.measure.base import MeasuringEstimator
from netopt.measure.energy import EnergyModel
from netopt.measure.memory import MemoryModel
from netopt.report.tables import markdown_table
from netopt.runs.files import write_atomic, write_json
from netopt.strategies import Problem, Result, Strategy

__all__ = ["Row", "Comparison", "compare", "hypervolume", "with_budget", "FORMAT_VERSION"]

FORMAT_VERSION = 1
"""Version of row.json and comparison.json."""

MakeStrategy = Callable[[int | None], Strategy]
"""Builds a strategy given the search budget in training steps (None: no budget to match)."""


@dataclass
class Row:
    """One strategy's outcome at one budget."""

    budget: str
    strategy: str
    error: str = ""
    test_accuracy: float = float("nan")
    holdout_accuracy: float = float("nan")
    estimated: dict[str, float] = field(default_factory=dict)
    measured: dict[str, float] = field(default_factory=dict)
    macs: int = 0
    params: int = 0
    memory: float = 0.0
    energy: float = float("nan")  # EnergyModel's estimate (E_MAC), whether or not energy is constrained
    search_seconds: float = 0.0
    search_steps: int = 0
    training_steps: int = 0
    widths: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, budget: str, result: Result, seconds: float, long_term_steps: int) -> Row:
        f = result.final
        test = float("nan") if f.test_accuracy is None else f.test_accuracy
        return cls(budget, result.strategy, "", test, f.accuracy,
                   dict(f.resources), {}, macs(f.network), params(f.network), MemoryModel().estimate(f.network),
                   EnergyModel().estimate(f.network), seconds, result.training_steps - long_term_steps,
                   result.training_steps, dict(f.network.widths))


def with_budget(problem: Problem, budget: str | float) -> Problem:
    """The same problem with the first constraint's budget replaced (same estimator, schedule)."""
    first, *rest = problem.constraints
    changed = copy.copy(first)
    changed.budget = parse_amount(budget, first.unit, f"{first.resource} budget")
    return Problem(problem.traced, [changed, *rest], problem.objective)


def hypervolume(points: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by (cost, accuracy) points, cost minimized and accuracy maximized, up to
    `reference` (a cost no better than any point's, an accuracy no better either)."""
    ref_cost, ref_acc = reference
    kept = sorted((c, a) for c, a in points if c < ref_cost and a > ref_acc)
    area, best = 0.0, ref_acc
    for k, (cost, acc) in enumerate(kept):  # sweep by cost: each point adds the strip it improves
        best = max(best, acc)
        nxt = kept[k + 1][0] if k + 1 < len(kept) else ref_cost
        area += (nxt - cost) * (best - ref_acc)
    return area


@dataclass
class Comparison:
    """All rows, and the starting network's figures to read them against."""

    resource: str
    unit: str
    start: dict[str, float]
    rows: list[Row]

    def budgets(self) -> list[str]:
        return list(dict.fromkeys(r.budget for r in self.rows))

    def cost(self, row: Row) -> float:
        """The compared resource: measured end to end where a backend measures it, else estimated."""
        return row.measured.get(self.resource, row.estimated.get(self.resource, float("nan")))

    @property
    def start_cost(self) -> float:
        return self.start.get(f"measured_{self.resource}", self.start[self.resource])

    def relative(self, row: Row) -> float:
        """The row's cost over the start's, both measured in the same side-by-side rounds."""
        return self.cost(row) / row.measured.get(f"start_{self.resource}", self.start_cost)

    def hypervolumes(self) -> dict[str, float]:
        """Per strategy, the hypervolume of its finals (cost relative to the start, test
        accuracy) against reference (1.0, 0.0): the start's cost, no accuracy."""
        out: dict[str, float] = {}
        for strategy in dict.fromkeys(r.strategy for r in self.rows):
            points = [(self.relative(r), r.test_accuracy) for r in self.rows
                      if r.strategy == strategy and not r.error]
            out[strategy] = hypervolume(points, (1.0, 0.0))
        return out

    def table(self, budget: str) -> str:
        others = [k for k in self.rows[0].estimated if k != self.resource] if self.rows else []
        header = ["strategy", "test acc.", f"{self.resource} measured ({self.unit})", "speed-up",
                  f"{self.resource} est.", *(f"{k} est." for k in others), "energy model (E_MAC)", "memory (KiB)",
                  "MMACs", "search (s)", "search steps", "training steps"]
        rows: list[list[object]] = []
        for r in (r for r in self.rows if r.budget == budget):
            if r.error:
                rows.append([r.strategy, f"failed: {r.error}"])
                continue
            measured = r.measured.get(self.resource)
            rows.append([r.strategy, f"{r.test_accuracy:.4f}", f"{measured:.4g}" if measured is not None else "-",
                         f"{1 / self.relative(r):.2f}x", f"{r.estimated[self.resource]:.4g}",
                         *(f"{r.estimated[k]:.4g}" for k in others), f"{r.energy:.4g}", f"{r.memory / 1024:.1f}",
                         f"{r.macs / 1e6:.2f}", f"{r.search_seconds:.1f}", r.search_steps, r.training_steps])
        return f"{self.resource} budget {budget}\n\n" + markdown_table(header, rows)

    def report(self) -> str:
        start = self.start.get(f"measured_{self.resource}")
        head = (f"start: {self.resource} {self.start[self.resource]:.4g} {self.unit} estimated"
                + (f", {start:.4g} measured" if start is not None else ""))
        hv = " | ".join(f"{s} {v:.4f}" for s, v in self.hypervolumes().items())
        return "\n\n".join([head, *[self.table(b) for b in self.budgets()],
                            f"hypervolume ({self.resource} / start, test accuracy; reference (1, 0)): {hv}"])

    def plot(self, path: str | Path) -> Path:
        from netopt.report.plots import _pyplot

        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
        for strategy in dict.fromkeys(r.strategy for r in self.rows):
            rows = sorted((r for r in self.rows if r.strategy == strategy and not r.error), key=self.cost)
            ax.plot([self.cost(r) for r in rows], [r.test_accuracy for r in rows], "o-", ms=4, label=strategy)
        ax.set(xlabel=f"{self.resource} ({self.unit})", ylabel="test accuracy",
               title=f"accuracy vs {self.resource}, each strategy's finals")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return Path(path)

    def to_dict(self) -> dict[str, Any]:
        return {"resource": self.resource, "unit": self.unit, "start": self.start,
                "rows": [asdict(r) for r in self.rows], "hypervolumes": self.hypervolumes()}


def _label(resource: str, budget: str | float) -> str:
    text = str(budget).strip().replace("%", "pct")
    return f"{resource}-{re.sub(r'[^A-Za-z0-9.]+', '_', text)}"


def compare(problem: Problem, budgets: Sequence[str | float], strategies: Mapping[str, MakeStrategy],
            out_dir: str | Path, *, long_term_steps: int, search_steps: int | str = "match",
            resume: bool = False, progress: Callable[[str], None] | None = None) -> Comparison:
    """Run every strategy at every budget of the problem's first constraint; see the module docstring.

    `strategies` maps a name to a maker taking the search budget in training steps. With
    `search_steps="match"` and "ProgressiveBarrier" among them, it runs first at each budget
    and the others are given the steps it used; with an int, every one gets that many.
    """
    out = Path(out_dir)
    say = progress or (lambda _: None)
    first = problem.constraints[0]
    order = sorted(strategies, key=lambda n: n != "ProgressiveBarrier")
    rows: list[Row] = []
    for budget in budgets:
        label = _label(first.resource, budget)
        at_budget = with_budget(problem, budget)
        steps: int | None = search_steps if isinstance(search_steps, int) else None
        for name in order:
            folder = out / label / name
            row = _load_row(folder) if resume else None
            if row is not None and row.energy != row.energy and not row.error:  # a row saved before energy was kept
                row.energy = EnergyModel().estimate(problem.traced.network.with_widths(row.widths))
            if row is None:
                say(f"{label}: {name}")
                row = _run_one(name, strategies[name](steps), at_budget, str(budget), folder, resume, long_term_steps)
                write_json(folder / "row.json", asdict(row), FORMAT_VERSION)
                say(f"{label}: {name} " + (f"failed: {row.error}" if row.error else
                                           f"done in {row.search_seconds:.0f} s: holdout {row.holdout_accuracy:.4g}, "
                                           f"test {row.test_accuracy:.4g}, " + ", ".join(
                                               f"{r} {v:.4g} (est.)" for r, v in row.estimated.items())
                                           + f", {row.training_steps} training steps"))
            if name == "ProgressiveBarrier" and search_steps == "match" and not row.error:
                steps = row.search_steps
            rows.append(row)
        _measure_side_by_side(problem, [r for r in rows if r.budget == str(budget)])
    comparison = Comparison(first.resource, first.unit, _start_figures(problem, rows), rows)
    write_json(out / "comparison.json", comparison.to_dict(), FORMAT_VERSION)
    write_atomic(out / "comparison.md", (comparison.report() + "\n").encode())
    comparison.plot(out / "frontier.png")
    return comparison


def _run_one(name: str, strategy: Strategy, problem: Problem, label: str, folder: Path, resume: bool,
             long_term_steps: int) -> Row:
    started = time.perf_counter()
    try:
        result = strategy.run(problem, run_dir=folder, resume=resume and (folder / "config.json").is_file())
    except InfeasibleError as exc:
        return Row(label, name, error=first_line(exc))
    row = Row.of(label, result, time.perf_counter() - started, long_term_steps)
    row.strategy = name  # the comparison's name ("OptunaTPE"), not only the class's
    return row


def _load_row(folder: Path) -> Row | None:
    """A finished strategy's row (None: not finished); one of a newer format is refused."""
    path = folder / "row.json"
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    version_of(doc, FORMAT_VERSION, str(path), f"upgrade netopt, or delete {folder} to run that strategy again")
    return Row(**{k: v for k, v in doc.items() if k != VERSION_KEY})


def _measure_side_by_side(problem: Problem, rows: list[Row]) -> None:
    """Measure the finals of one budget (and the start, for speed-ups) side by side, call by call in turn."""
    table = problem.constraints[0].estimator
    done = [r for r in rows if not r.error]
    if not isinstance(table, MeasuringEstimator) or not done:
        return
    start = problem.traced.network
    nets = [start, *(start.with_widths(r.widths) for r in done)]
    measured = table.measure_networks(problem.traced, nets)
    resource = problem.constraints[0].resource
    for row, m in zip(done, measured[1:], strict=True):
        row.measured[resource] = m.median
        row.measured[f"start_{resource}"] = measured[0].median


def _start_figures(problem: Problem, rows: list[Row]) -> dict[str, float]:
    start: Network = problem.traced.network
    figures = {c.resource: c.estimate(start) for c in problem.constraints}
    resource = problem.constraints[0].resource
    seen = [r.measured[f"start_{resource}"] for r in rows if f"start_{resource}" in r.measured]
    if seen:
        figures[f"measured_{resource}"] = sorted(seen)[len(seen) // 2]
    return figures
