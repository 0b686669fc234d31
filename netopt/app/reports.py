"""What the main job prints: the family measured side by side, and a table per iteration."""

from __future__ import annotations

from netopt.measure.base import MeasuringEstimator
from netopt.report.tables import markdown_table
from netopt.strategies import Problem, Result

__all__ = ["measure_family", "summary"]


def measure_family(problem: Problem, result: Result) -> None:
    """Every family member's end-to-end measurement on each lookup table's backend (those the
    table does not hold yet measured now, side by side), so the summary shows each iteration's
    measured figure beside its estimate, and the final's as the budget was checked."""
    for c in problem.constraints:
        if not isinstance(c.estimator, MeasuringEstimator):
            continue
        measured = c.estimator.measured(problem.traced, [m.network for m in result.family])
        for member, m in zip(result.family, measured, strict=True):
            member.measured[c.resource] = m.median


def _budget(result: Result, resource: str) -> str:
    if resource not in result.budgets:
        return ""
    basis = {"measured": "checked as measured", "estimated": "checked as estimated"}.get(result.basis.get(resource, ""),
                                                                                         "")
    share = ""
    if resource in result.starts and resource in result.final.measured:
        share = f", {result.final.measured[resource] / result.starts[resource]:.1%} of the start measured side by side"
    return f"; budget {result.budgets[resource]:.4g}{', ' + basis if basis else ''}{share}"


def summary(result: Result) -> str:
    """A table per iteration (chosen group, each resource, holdout score) and the final figures."""
    resources = list(result.family[0].resources)
    measured = [r for r in resources if r in result.family[0].measured]
    chosen = {p.iteration + 1: p.group for p in result.history if p.chosen}
    header = ["iteration", "chosen group -> width", *(f"{r} (est.)" for r in resources),
              *(f"{r} (measured)" for r in measured), "holdout score"]
    rows = []
    for c in result.family:
        group = chosen.get(c.iteration)
        change = "-" if not group else ", ".join(f"{g} -> {c.network.widths[g]}" for g in group.split("+"))
        rows.append([c.iteration, change, *(f"{c.resources[r]:.4g}" for r in resources),
                     *(f"{c.measured[r]:.4g}" for r in measured), f"{c.accuracy:.4g}"])
    lines = [markdown_table(header, rows)]
    f = result.final
    figures = ", ".join(f"{r} measured {v:.4g} (estimated {f.resources[r]:.4g}{_budget(result, r)})"
                        for r, v in f.measured.items())
    test = "-" if f.test_accuracy is None else f"{f.test_accuracy:.4g}"
    lines.append(f"\nfinal network: holdout {f.accuracy:.4g}, test {test}; {figures}")
    lines.append(f"{len(result.history)} proposals, {result.training_steps} training steps")
    if result.landing is not None and result.landing.shares:
        lines.append(result.landing.describe())
    if result.over_budget:
        lines.append("over budget (a soft reward's targets): " + ", ".join(f"{r} {v:.2f}x its budget"
                                                                         for r, v in result.over_budget.items()))
    t = result.timings
    if t:
        lines.append(f"this session's wall time {t['total']:.0f} s: training and evaluation "
                     f"{t['training_and_evaluation']:.0f} s, measurement {t['measurement']:.0f} s, "
                     f"netopt's own work {t['framework']:.1f} s ({result.framework_share:.1%})")
        if "supernet_training" in t:
            lines.append(f"NetAdaptV2's search: super-network training {t['supernet_training']:.0f} s, sample "
                         f"evaluation {t['sample_evaluation']:.0f} s, final training {t['final_training']:.0f} s")
    return "\n".join(lines)
