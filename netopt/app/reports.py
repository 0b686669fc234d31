"""What the main job prints: the family measured side by side, and a table per iteration."""

from __future__ import annotations

from netopt.measure.base import MeasuringEstimator
from netopt.strategies import Problem, Result

__all__ = ["measure_family", "summary"]


def measure_family(problem: Problem, result: Result) -> None:
    """Measure every family member end to end, side by side, on each lookup table's backend,
    so the summary shows each iteration's measured figure beside its estimate."""
    for c in problem.constraints:
        if not isinstance(c.estimator, MeasuringEstimator):
            continue
        measured = c.estimator.measure_networks(problem.traced, [m.network for m in result.family])
        for member, m in zip(result.family, measured, strict=True):
            member.measured[c.resource] = m.median


def summary(result: Result) -> str:
    """A table per iteration (chosen group, each resource, holdout accuracy) and the final figures."""
    resources = list(result.family[0].resources)
    measured = [r for r in resources if r in result.family[0].measured]
    chosen = {p.iteration + 1: p.group for p in result.history if p.chosen}
    head = ("| iteration | chosen group -> width | " + " | ".join(f"{r} (est.)" for r in resources) + " | "
            + "".join(f"{r} (measured) | " for r in measured) + "holdout acc. |")
    lines = [head, "|" + "---|" * (len(resources) + len(measured) + 3)]
    for c in result.family:
        values = " | ".join([*(f"{c.resources[r]:.4g}" for r in resources),
                             *(f"{c.measured[r]:.4g}" for r in measured)])
        group = chosen.get(c.iteration)
        change = "-" if not group else ", ".join(f"{g} -> {c.network.widths[g]}" for g in group.split("+"))
        lines.append(f"| {c.iteration} | {change} | {values} | {c.accuracy:.3f} |")
    f = result.final
    figures = ", ".join(f"{r} measured {v:.4g} (estimated {f.resources[r]:.4g})" for r, v in f.measured.items())
    lines.append(f"\nfinal network: holdout {f.accuracy:.3f}, test {f.test_accuracy:.3f}; {figures}")
    lines.append(f"{len(result.history)} proposals, {result.training_steps} training steps")
    t = result.timings
    if t:
        lines.append(f"this session's wall time {t['total']:.0f} s: training and evaluation "
                     f"{t['training_and_evaluation']:.0f} s, measurement {t['measurement']:.0f} s, "
                     f"netopt's own work {t['framework']:.1f} s ({result.framework_share:.1%})")
    return "\n".join(lines)
