"""The NetAdapt paper's findings, regenerated at CPU scale (see README.md beside this file).

    python benchmarks/paper/paper.py [all | PART ...] [--out runs/paper] [--workers 2] [--quick]

Parts: fig4 (lookup table against measurement), table1 (direct metric against MACs), fig8
(short-term fine-tuning), fig9 (long-term fine-tuning), table2 (reduction schedule), headline
(Fig. 5-7: NetAdapt against width multipliers over the latency range), fig10 (adapted widths),
headline-v2 (the headline on MobileNetV2).
Each prints the paper's finding beside what is measured here and saves PART.json, PART.md and
PART.png under --out; `all` also writes paper.md. Everything is cached under --out: a rerun,
after an interruption at any point, redoes only what is missing (the measurements are taken
again, side by side). Proposals and fine-tuning run on a process pool of --workers.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from paperbench import QUICK, Bench, Scale, fastest_as_accurate, say, spread, standard_error

from netopt.ir import macs
from netopt.lut.fidelity import fidelity
from netopt.report.tables import markdown_table
from netopt.runs.files import write_atomic, write_json

V2_RANGE_BUDGET = "40%"
DEFAULT = "latency-50"
"""The default run: latency budget 50% of the start as measured, the default schedule."""


@contextmanager
def _figure(path: Path, size: tuple[float, float] = (5, 3.6), columns: int = 1) -> Iterator[Any]:
    """Axes to draw on (a tuple of `columns` of them if more than one), saved to `path` at the end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, columns, figsize=size, dpi=120)
    try:
        yield axes
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def _acc(value: float, n: int) -> str:
    return f"{value:.4f} ± {standard_error(value, n):.4f}"


def _percent(amount: str, factor: float) -> str:
    return f"{float(amount.rstrip('%')) * factor:g}%"


def _save(bench: Bench, part: str, figures: dict[str, Any], text: str) -> str:
    write_json(bench.out / f"{part}.json", figures)
    write_atomic(bench.out / f"{part}.md", (text + "\n").encode())
    return text


# --- Fig. 4 -------------------------------------------------------------------------------------


def fig4(bench: Bench) -> str:
    """The lookup table's estimates of random shrunken networks against their end-to-end medians."""
    traced, table = bench.latency.traced, bench.table
    if table.calibration(traced.network) is None:
        table.calibrate(traced)
    report = fidelity(table, traced, variants=bench.scale.variants)
    report.plot(bench.out / "fig4.png", title="Fig. 4: lookup table against measured latency")
    cal, naive = report.agreement("calibrated"), report.agreement("naive")
    text = "\n".join([
        "## Fig. 4: lookup table against measured latency",
        "",
        "Paper: the lookup table's estimates lie close to the measured latency of the adapted networks "
        "(the identity line), so the search can run on estimates.",
        "",
        report.table(),
        "",
        f"Here: {cal.within10:.0%} of {len(report.measured)} random variants within ±10% calibrated "
        f"(naive layer sum {naive.within10:.0%}), Spearman {cal.spearman:.3f}.",
    ])
    figures = {"measured": report.measured, "calibrated": report.calibrated, "naive": report.naive,
               "calibrated_within10": cal.within10, "naive_within10": naive.within10, "spearman": cal.spearman,
               "holds": cal.spearman >= 0.95 and cal.within10 >= naive.within10}
    return _save(bench, "fig4", figures, text)


# --- Table 1 ------------------------------------------------------------------------------------


def table1(bench: Bench) -> str:
    """NetAdapt guided by MACs against NetAdapt guided by latency, at the same measured latency."""
    n = bench.test_examples
    by_latency = bench.adapt(DEFAULT)
    by_macs = bench.adapt("macs", resource="macs", budget=bench.scale.macs_budget)
    members = {f"MAC-guided it. {c.iteration}": c for c in by_macs.family[1:]}
    latency = bench.measure({"start": by_latency.family[0].network, "latency-guided": by_latency.final.network,
                             **{name: c.network for name, c in members.items()}})
    target = latency["latency-guided"]  # the same rounds: the MAC family's latencies against it, side by side
    names = list(members)
    first = next((k for k, name in enumerate(names) if latency[name] <= target), None)
    if first is None:
        raise SystemExit(f"no network of the MAC-guided run measured within the latency-guided one's {target:.4g} ms; "
                         f"lower macs_budget (now {bench.scale.macs_budget})")
    compared = {"latency-guided": by_latency.final.network}
    modules = {"latency-guided": by_latency.family[-1].module}
    for name in names[max(first - 1, 0):first + 1]:  # the MAC-guided networks on either side of that latency
        compared[name], modules[name] = members[name].network, members[name].module
    tuned = bench.long_term({f"table1-{name}": module for name, module in modules.items()})
    acc = {name: tuned[f"table1-{name}"]["test"] for name in compared}
    start = latency["start"]
    rows = [["start", f"{macs(by_latency.family[0].network) / 1e6:.2f}", f"{start:.4g}", "100%", "-"]]
    rows += [[name, f"{macs(net) / 1e6:.2f}", f"{latency[name]:.4g}", f"{latency[name] / start:.0%}",
              _acc(acc[name], n)] for name, net in compared.items()]
    match = names[first]
    fewer_macs = macs(members[match].network) < macs(by_latency.final.network)
    gap = acc["latency-guided"] - acc[match]
    noise = math.hypot(standard_error(acc["latency-guided"], n), standard_error(acc[match], n))
    holds = fewer_macs and gap > noise
    text = "\n".join([
        "## Table 1 / Sec. 4: direct metrics against a proxy",
        "",
        "Paper: NetAdapt guided by MACs reaches the latency target with fewer MACs than NetAdapt guided by "
        "measured latency, and gives a slower or less accurate network: MACs are a poor proxy for latency.",
        "",
        f"Here: both runs use the schedule {bench.scale.initial}/{bench.scale.decay}; the latency-guided run has a "
        f"budget of {bench.scale.budget} of the start's measured latency; the MAC-guided one runs down to "
        f"{bench.scale.macs_budget} of the MACs. Every member of the MAC-guided run is measured side by side with "
        "the latency-guided final (3 interleaved rounds); the first that measures as fast or faster is what a MAC "
        "budget set to reach that latency returns, and it is compared, with the member before it (slower). All "
        f"long-term fine-tuned {bench.scale.long_term_steps} steps; test accuracy ± its standard error "
        f"({n} test digits).",
        "",
        markdown_table(["network", "MACs (M)", "measured latency (ms)", "of the start", "test accuracy"], rows),
        "",
        f"Finding {'holds' if holds else 'does not hold'} here: at the latency-guided network's latency, the "
        f"MAC-guided network ({match}) has {'fewer' if fewer_macs else 'more'} MACs "
        f"({macs(members[match].network) / 1e6:.2f}M against {macs(by_latency.final.network) / 1e6:.2f}M) and "
        f"test accuracy {acc[match]:.4f} against {acc['latency-guided']:.4f} ({-gap:+.4f}; one standard error of "
        f"the difference: {noise:.4f}).",
    ])
    figures = {"latency_ms": latency, "test": acc, "match": match, "gap": gap, "noise": noise,
               "macs": {name: macs(net) for name, net in compared.items()}, "holds": holds}
    with _figure(bench.out / "table1.png") as ax:
        for name, net in compared.items():
            ax.errorbar([latency[name] / start], [acc[name]], yerr=[standard_error(acc[name], n)], fmt="o" if
                        name == "latency-guided" else "s", capsize=3, label=f"{name} ({macs(net) / 1e6:.2f}M MACs)")
        ax.set(xlabel="measured latency (share of the start)", ylabel="test accuracy",
               title="Table 1: latency-guided against MAC-guided")
        ax.legend(fontsize=8)
    return _save(bench, "table1", figures, text)


# --- Fig. 8 -------------------------------------------------------------------------------------


def fig8(bench: Bench) -> str:
    """Adaptation without short-term fine-tuning against the default: accuracy along the iterations."""
    n = bench.test_examples
    runs = {f"{bench.scale.short_term_steps} steps (default)": bench.adapt(DEFAULT),
            "0 steps": bench.adapt("latency-50-no-short-term", short_term_steps=0)}
    with _figure(bench.out / "fig8.png") as ax:
        for label, result in runs.items():
            ax.plot([c.iteration for c in result.family], [c.accuracy for c in result.family], "o-", ms=3, label=label)
        ax.set(xlabel="iteration", ylabel="holdout accuracy", title="Fig. 8: short-term fine-tuning")
        ax.legend(fontsize=8)
    tuned = bench.long_term({"fig8-default": runs[next(iter(runs))].family[-1].module,
                             "fig8-none": runs["0 steps"].family[-1].module})
    rows = []
    for (label, result), key in zip(runs.items(), ("fig8-default", "fig8-none"), strict=True):
        accs = [c.accuracy for c in result.family]
        rows.append([label, str(len(result.family) - 1), f"{accs[0]:.4f}", f"{min(accs):.4f}", f"{accs[-1]:.4f}",
                     _acc(tuned[key]["test"], n)])
    default, none = (runs[k].family for k in runs)
    drop_default, drop_none = default[0].accuracy - default[-1].accuracy, none[0].accuracy - none[-1].accuracy
    holds = drop_none > 2 * max(drop_default, 0.01)
    text = "\n".join([
        "## Fig. 8: short-term fine-tuning",
        "",
        "Paper: without short-term fine-tuning of each proposal, the accuracy of the adapted networks "
        "collapses as the iterations go on; short-term fine-tuning keeps it close to the start's.",
        "",
        markdown_table(["short-term steps a proposal", "iterations", "holdout at the start", "lowest holdout",
                        "final holdout", f"final test after {bench.scale.long_term_steps} long-term steps"], rows),
        "",
        f"Finding {'holds' if holds else 'does not hold'} here: holdout accuracy fell {drop_none:.3f} along the "
        f"iterations without short-term fine-tuning against {drop_default:.3f} with it.",
    ])
    figures = {label: [(c.iteration, c.accuracy) for c in r.family] for label, r in runs.items()}
    figures |= {"long_term": tuned, "holds": holds}
    return _save(bench, "fig8", figures, text)


# --- Fig. 9 -------------------------------------------------------------------------------------


def fig9(bench: Bench) -> str:
    """Long-term fine-tuning of the default run's final network, against the steps spent on it."""
    n = bench.test_examples
    final = bench.adapt(DEFAULT).family[-1].module
    names = {f"fig9-final-{k}": k for k in bench.scale.long_term_curve}
    tuned = bench.long_term(dict.fromkeys(names, final), each=names)
    curve = {k: tuned[name] for name, k in names.items()}
    steps = list(curve)
    tests = [curve[s]["test"] for s in steps]
    with _figure(bench.out / "fig9.png") as ax:
        ax.errorbar(steps, tests, yerr=[standard_error(t, n) for t in tests], fmt="o-", ms=3, capsize=3)
        ax.set(xlabel="long-term fine-tuning steps", ylabel="test accuracy", title="Fig. 9: long-term fine-tuning")
    base = curve[steps[0]]["test"]
    rows = [[str(s), f"{curve[s]['holdout']:.4f}", _acc(curve[s]["test"], n), f"{curve[s]['test'] - base:+.4f}"]
            for s in steps]
    gain = curve[steps[-1]]["test"] - base
    holds = gain > 2 * standard_error(base, n)
    text = "\n".join([
        "## Fig. 9: long-term fine-tuning",
        "",
        "Paper: long-term fine-tuning of the adapted network raises its accuracy further; the search "
        "itself only needs short-term fine-tuning.",
        "",
        markdown_table(["long-term steps", "holdout", "test accuracy", "gain over none"], rows),
        "",
        f"Finding {'holds' if holds else 'does not hold'} here: {gain:+.4f} test accuracy after "
        f"{steps[-1]} steps (two standard errors: {2 * standard_error(base, n):.4f}).",
    ])
    return _save(bench, "fig9", {"curve": curve, "holds": holds}, text)


# --- Table 2 ------------------------------------------------------------------------------------


def table2(bench: Bench) -> str:
    """The resource reduction schedule: initial reduction and decay varied, at the default budget."""
    n, s = bench.test_examples, bench.scale
    variants = {DEFAULT: (s.initial, s.decay), "schedule-no-decay": (s.initial, 1.0),
                "schedule-larger-initial": (_percent(s.initial, 1.5), s.decay)}
    results = {name: bench.adapt(name, initial=initial, decay=decay) for name, (initial, decay) in variants.items()}
    latency = bench.measure({"start": results[DEFAULT].family[0].network,
                             **{name: r.final.network for name, r in results.items()}})
    tuned = bench.long_term({f"table2-{name}": r.family[-1].module for name, r in results.items()})
    rows, figures = [], {}
    for name, result in results.items():
        initial, decay = variants[name]
        wall, resumed = bench.wall(name)
        test = tuned[f"table2-{name}"]["test"]
        rows.append([initial, f"{decay:g}", str(len(result.family) - 1), str(len(result.history)),
                     f"{result.training_steps:,}", f"{wall:.0f}{' (resumed)' if resumed else ''}",
                     f"{latency[name] / latency['start']:.0%}", _acc(test, n)])
        figures[name] = {"initial": initial, "decay": decay, "iterations": len(result.family) - 1,
                         "proposals": len(result.history), "training_steps": result.training_steps, "wall_s": wall,
                         "latency_share": latency[name] / latency["start"], "test": test}
    default = figures[DEFAULT]
    coarser = [figures[k] for k in ("schedule-no-decay", "schedule-larger-initial")]
    fewer = all(c["iterations"] <= default["iterations"] for c in coarser)
    costlier = all(c["test"] <= default["test"] + standard_error(default["test"], n) for c in coarser)
    figures["holds"] = fewer and costlier
    text = "\n".join([
        "## Table 2: the resource reduction schedule",
        "",
        "Paper: the schedule trades accuracy for search time: a larger initial reduction, or no decay, "
        "reaches the budget in fewer iterations and less search time, at some cost in accuracy; the "
        "paper's default is 0.5 ms first, decaying 0.96 an iteration (its 0.75 ms row is scaled here to 1.5x "
        f"the default share, {_percent(s.initial, 1.5)}).",
        "",
        markdown_table(["initial reduction (of the start)", "decay", "iterations", "proposals", "training steps",
                        "search wall s", "measured latency", "test accuracy"], rows),
        "",
        f"Finding {'holds' if figures['holds'] else 'does not hold'} here: the coarser schedules took "
        f"{', '.join(str(c['iterations']) for c in coarser)} iterations against {default['iterations']}, with test "
        f"accuracy {', '.join(format(c['test'], '.4f') for c in coarser)} against {default['test']:.4f}.",
    ])
    with _figure(bench.out / "table2.png", (7, 3.2), columns=2) as (left, right):
        labels = [f"{figures[k]['initial']}/{figures[k]['decay']:g}" for k in results]
        left.bar(labels, [figures[k]["wall_s"] for k in results])
        left.set(ylabel="search wall time (s)", title="search time")
        tests = [figures[k]["test"] for k in results]
        right.errorbar(labels, tests, yerr=[standard_error(t, n) for t in tests], fmt="o", capsize=3)
        right.set(ylabel="test accuracy", title="accuracy")
        left.figure.suptitle("Table 2: initial reduction / decay")
    return _save(bench, "table2", figures, text)


# --- Fig. 5-7: the headline ----------------------------------------------------------------------


def headline(bench: Bench, model: str = "MobileNetV1") -> str:
    """NetAdapt's trade-off curve (one long run's members, long-term fine-tuned) against the uniform
    width multipliers, both measured side by side; the 1.7x claim read both ways."""
    n, s = bench.test_examples, bench.scale
    result = bench.adapt("latency-range", budget=s.range_budget)
    members = spread(result.family, "latency", s.curve_points)
    start = result.family[0].network
    multiplied = {f"x{f:g}": start.scaled(f) for f in s.multipliers}
    nets = {**{f"NetAdapt it. {c.iteration}": c.network for c in members}, **multiplied}
    latency = bench.measure(nets)
    # A multiplier network gets as many fine-tuning steps as the NetAdapt network that had the most along its
    # path (its iterations' short-term steps and the long-term ones): the comparison gives NetAdapt no extra training.
    matched = s.long_term_steps + s.short_term_steps * members[-1].iteration
    tuned = bench.long_term({f"headline-it{c.iteration}": c.module for c in members})
    tuned |= bench.long_term({f"headline-{k}": bench.start_module(net) for k, net in multiplied.items()}, matched)
    ours = {f"NetAdapt it. {c.iteration}": (latency[f"NetAdapt it. {c.iteration}"],
                                            tuned[f"headline-it{c.iteration}"]["test"]) for c in members}
    theirs = {k: (latency[k], tuned[f"headline-{k}"]["test"]) for k in multiplied}
    # speed-up = the multiplier's latency / NetAdapt's, in either reading
    forward = {k: (m, theirs[m][0] / ours[k][0]) if m else None for k, m in fastest_as_accurate(ours, theirs).items()}
    backward = {k: (m, theirs[k][0] / ours[m][0]) if m else None for k, m in fastest_as_accurate(theirs, ours).items()}
    with _figure(bench.out / "headline.png") as ax:
        for label, points, style in (("NetAdapt", ours, "o-"), ("width multiplier", theirs, "s--")):
            pts = sorted(points.values())
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, ms=4, label=label)
        ax.set(xlabel="measured latency (ms)", ylabel="test accuracy",
               title=f"Fig. 5-7: {model}, NetAdapt and multipliers")
        ax.legend(fontsize=8)

    def rows(points: dict[str, tuple[float, float]], match: dict[str, tuple[str, float] | None],
             other: dict[str, tuple[float, float]]) -> list[list[str]]:
        out = []
        for name, (lat, acc) in points.items():
            found = match[name]
            out.append([name, f"{lat:.4g}", _acc(acc, n)] + (
                [found[0], f"{other[found[0]][0]:.4g}", f"{other[found[0]][1]:.4f}", f"{found[1]:.2f}x"]
                if found else ["none as accurate", "-", "-", "-"]))
        return out

    best_forward = max((m[1] for m in forward.values() if m), default=None)
    best_backward = max((m[1] for m in backward.values() if m), default=None)
    top = max(acc for _, acc in theirs.values())
    if best_forward is None and all(acc > top for _, acc in ours.values()):
        first = (f"every NetAdapt network is more accurate than every multiplier network (the best, {top:.4f}), the "
                 "full width one included, so the first reading finds no pair: NetAdapt is ahead at any latency")
    else:
        first = f"{best_forward:.2f}x read the first way" if best_forward else "no pair read the first way"
    verdict = (f"Largest NetAdapt speed-up: {first}; {best_backward:.2f}x the paper's way (paper: 1.7x)."
               if best_backward else f"Largest NetAdapt speed-up: {first}; no pair the paper's way.")
    text = "\n".join([
        f"## Fig. 5-7: NetAdapt against width multipliers over the latency range ({model})",
        "",
        "Paper: NetAdapt's networks are up to 1.7x faster than MobileNet width multipliers at equal or higher "
        "accuracy (mobile CPU and GPU, ImageNet).",
        "",
        f"Here: the zoo's {model} (width 0.5, 32 px, the digits); the members of one run down to "
        f"{s.range_budget} of the start's measured latency (each is what that run's budget at its latency would "
        f"have returned), long-term fine-tuned {s.long_term_steps} steps; and the multipliers {list(s.multipliers)} "
        f"materialized from the pretrained network and fine-tuned {matched} steps, as many as the NetAdapt network "
        "with the most had along its path (short-term steps of its iterations and long-term ones); all measured side "
        "by side.",
        "",
        "Each NetAdapt network against the fastest multiplier at least as accurate (speed-up = its latency / "
        "NetAdapt's):",
        "",
        markdown_table(["NetAdapt network", "latency (ms)", "test accuracy", "fastest multiplier as accurate",
                        "its latency", "its test acc.", "NetAdapt speed-up"], rows(ours, forward, theirs)),
        "",
        "The paper's reading: each multiplier against the fastest NetAdapt network at least as accurate "
        "(speed-up = the multiplier's latency / NetAdapt's):",
        "",
        markdown_table(["multiplier", "latency (ms)", "test accuracy", "fastest NetAdapt as accurate", "its latency",
                        "its test acc.", "NetAdapt speed-up"], rows(theirs, backward, ours)),
        "",
        verdict,
    ])
    figures = {"netadapt": ours, "multipliers": theirs, "multiplier_steps": matched, "forward": forward,
               "backward": backward,
               "best_forward": best_forward, "best_backward": best_backward,
               "holds": bool(best_backward and best_backward > 1.0)}
    return _save(bench, "headline", figures, text)


# --- Fig. 10 ------------------------------------------------------------------------------------


def fig10(bench: Bench) -> str:
    """The default run's widths, group by group, against the width multiplier nearest in measured latency."""
    result = bench.adapt(DEFAULT)
    start, final = result.family[0].network, result.final.network
    fractions = [k / 16 for k in range(3, 17)]
    candidates = {f"x{f:g}": start.scaled(f) for f in fractions if f < 1}
    latency = bench.measure({"start": start, "NetAdapt": final, **candidates})
    nearest = min(candidates, key=lambda k: abs(latency[k] - latency["NetAdapt"]))
    multiplier = candidates[nearest]
    ids = [g.id for g in start.groups]
    kept = {g: final.widths[g] / start.widths[g] for g in ids}
    uniform = {g: multiplier.widths[g] / start.widths[g] for g in ids}
    with _figure(bench.out / "fig10.png", (max(5.0, 0.4 * len(ids)), 3.6)) as ax:
        pos = range(len(ids))
        ax.bar([p - 0.27 for p in pos], [start.widths[g] for g in ids], 0.27, label="start")
        ax.bar(list(pos), [multiplier.widths[g] for g in ids], 0.27, label=f"multiplier {nearest}")
        ax.bar([p + 0.27 for p in pos], [final.widths[g] for g in ids], 0.27, label="NetAdapt")
        ax.set_xticks(list(pos), ids, rotation=70, fontsize=7)
        ax.set(ylabel="channels", title="Fig. 10: channels per layer")
        ax.legend(fontsize=8)
    rows = [[g, str(start.widths[g]), str(multiplier.widths[g]), str(final.widths[g]), f"{kept[g]:.0%}"]
            for g in ids]
    spread_na = statistics.pstdev(kept.values())
    spread_mult = statistics.pstdev(uniform.values())
    holds = spread_na > 2 * spread_mult
    text = "\n".join([
        "## Fig. 10: the adapted widths",
        "",
        "Paper: NetAdapt's network is not a uniformly thinner one: it keeps some layers wide and cuts "
        "others far more than the width multiplier at the same latency does.",
        "",
        f"Here: the default run's final network ({latency['NetAdapt']:.4g} ms, "
        f"{latency['NetAdapt'] / latency['start']:.0%} of the start in the same rounds) against the multiplier "
        f"nearest in measured latency ({nearest}, {latency[nearest]:.4g} ms).",
        "",
        markdown_table(["group", "start", f"multiplier {nearest}", "NetAdapt", "NetAdapt kept"], rows),
        "",
        f"Finding {'holds' if holds else 'does not hold'} here: the share of channels NetAdapt kept ranges "
        f"{min(kept.values()):.0%}-{max(kept.values()):.0%} (standard deviation {spread_na:.2f}), the "
        f"multiplier's {min(uniform.values()):.0%}-{max(uniform.values()):.0%} ({spread_mult:.2f}).",
    ])
    figures = {"multiplier": nearest, "kept": kept, "uniform": uniform, "latency_ms": latency, "holds": holds}
    return _save(bench, "fig10", figures, text)


def headline_v2(bench: Bench) -> str:
    """The headline on the zoo's MobileNetV2, in its own folder (mobilenet_v2/) and lookup table,
    down to 40% (its smallest network measures about 31% of its start: 30% cannot be met)."""
    deepest = max(bench.scale.range_budget, V2_RANGE_BUDGET, key=lambda b: float(b.rstrip("%")))
    return headline(bench.on("mobilenet_v2", range_budget=deepest), "MobileNetV2")


PARTS: dict[str, Callable[[Bench], str]] = {"fig4": fig4, "table1": table1, "fig8": fig8, "fig9": fig9,
                                            "table2": table2, "headline": headline, "fig10": fig10,
                                            "headline-v2": headline_v2}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("parts", nargs="*", default=["all"], help=f"all, or some of: {' '.join(PARTS)}")
    p.add_argument("--out", type=Path, default=Path("runs/paper"), help="where everything is kept (resumable)")
    p.add_argument("--workers", type=int, default=2, help="processes for proposals and fine-tuning")
    p.add_argument("--quick", action="store_true", help="a smoke run in minutes: tiny budgets and steps")
    args = p.parse_args(argv)
    unknown = [x for x in args.parts if x != "all" and x not in PARTS]
    if unknown:
        p.error(f"unknown part {unknown[0]!r}; give all, or some of: {', '.join(PARTS)}")
    if args.workers < 1:
        p.error(f"--workers {args.workers}: give 1 or more")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    scale = QUICK if args.quick else Scale()
    out = args.out / "quick" if args.quick and args.out == Path("runs/paper") else args.out
    parts = list(PARTS) if "all" in args.parts else args.parts
    torch.set_num_threads(1)  # measurements on the table's 1 thread; workers each use one core
    bench = Bench(out, scale, workers=args.workers)
    texts, seconds = [], {}
    with bench.pool():
        for part in parts:
            started = time.perf_counter()
            say(f"{part}")
            texts.append(PARTS[part](bench))
            seconds[part] = time.perf_counter() - started
            print(texts[-1], f"\n(part {part}: {seconds[part]:.0f} s)\n", flush=True)
    if "all" in args.parts:
        head = (f"# The paper's findings at CPU scale\n\nSettings: {scale}\n\nSeconds a part (this run; cached parts "
                f"are fast): {', '.join(f'{k} {v:.0f}' for k, v in seconds.items())}\n")
        write_atomic(out / "paper.md", (head + "\n\n".join(texts) + "\n").encode())
        say(f"all parts in {sum(seconds.values()) / 60:.1f} min; {out / 'paper.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
