"""NetAdaptV2 against NetAdapt (ProgressiveBarrier) on the comparison problem, side by side in one run.

    python benchmarks/bench_netadaptv2.py [--budgets 70% 50% 35%]
        [--part all|comparison|residual|residual-cnn|torchvision] [--quick] [--out runs/bench-v2]
        [--beyond-budgets 50%] [--supernet N] [--cnn-width 16] [--cnn-blocks 2] [--tv-width 0.5]

The problem is `examples/compare.toml`'s: the zoo's MobileNetV1 (width 0.5, 32 px) pretrained on
the bundled digits, latency from a calibrated ONNX Runtime lookup table (one thread), the
schedule 6% / 0.96, 40 short-term and 300 long-term steps. At each budget, in one process:

- ProgressiveBarrier (the paper's NetAdapt);
- NetAdaptV2 with its defaults (300 super-network steps, 16 samples an iteration, multi-layer);
- the paper's ablations, each under the same super-network (same seed and steps: it trains
  bit-identically): single-layer coordinate descent (`layers=1`), and no sandwich rule.

Printed: test accuracy (with the test split's standard error), measured latency of the final
network (interleaved rounds, lowest median), total search time and NetAdaptV2's three parts
(super-network training, sample evaluation, final training), training steps. The goal, from
the paper (5.8x less search time on ImageNet): NetAdaptV2 within 0.5 points of
ProgressiveBarrier's test accuracy in at most 1/6 of its total search time.

MobileNetV1 has no residual branch, so channel-level bypass is ablated on a second problem
(`--part residual`): the zoo's MobileNetV2 (width 0.5, 32 px) trained here on the digits
(1,000 SGD steps, lr 0.05, cosine), latency from its own calibrated lookup table, at 50% and
35%; NetAdaptV2 multi-layer without and with bypass, and single-layer with bypass, under the
same super-network steps. Printed: test accuracy, measured latency, search time, branches removed.

Beyond the zoo (`--part residual-cnn`, `--part torchvision`): ProgressiveBarrier (40 short-term
steps) against NetAdaptV2 (its default super-network steps unless `--supernet`), both with 300
long-term steps, at `--beyond-budgets`, on a plain residual CNN written here (three stages of
`--cnn-blocks` basic blocks, `--cnn-width` channels first) and on torchvision's own MobileNetV2
(`--tv-width`, one input channel), each trained here on the digits at 32 px (1,000 SGD steps,
lr 0.05, cosine; cached). Latency from one calibrated ONNX Runtime table (one thread), warmed
before either strategy runs (every width of the residual CNN's groups; 4 widths a group of
MobileNetV2's), each strategy then on a frozen copy, so that neither pays for the other's units.
Printed per strategy: test accuracy, latency measured side by side (share of the start), total
time, its parts (PB: fine-tuning / final training; V2: super-network / samples / final
training), measurement with the new units it measured, other time; and PB / V2: the accuracy
gap and the ratio of total times against the goal (within 1.5 points, at least 3x).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

import netopt
from netopt.compare import with_budget
from netopt.measure import OnnxRuntimeCPU
from netopt.objectives.base import Evaluation
from netopt.report import markdown_table
from netopt.testing.peers import import_torchvision
from netopt.zoo.pretrained import cache_root, pretrained_mnist

STRATEGIES = ("ProgressiveBarrier", "NetAdaptV2")
"""The two strategies the residual CNN and torchvision parts put side by side."""


def build(lut_path: Path) -> netopt.Problem:
    model, data = pretrained_mnist(width=0.5, size=32)
    return latency_problem(model, data, lut_path, netopt.Accuracy(data, netopt.Trainer(lr=0.01)))


def latency_problem(model: nn.Module, data: netopt.data.Splits, lut_path: Path,
                    objective: netopt.Objective) -> netopt.Problem:
    """`model` under a 50% latency budget from a calibrated ONNX Runtime table (one thread), schedule 6% / 0.96."""
    traced = netopt.trace(model.eval(), data.train_x[:1])
    lut = netopt.LookupTable.open(lut_path, OnnxRuntimeCPU(threads=1))
    if lut.calibration(traced.network) is None:
        lut.calibrate(traced)
    constraint = netopt.LatencyConstraint("50%", lut, netopt.ReductionSchedule("6%", decay=0.96))
    return netopt.Problem(traced, [constraint], objective)


def measured(problem: netopt.Problem, results: dict[str, netopt.strategies.Result], rounds: int = 5) -> dict[str,
                                                                                                            float]:
    """Each final network's latency, measured in interleaved rounds; the lowest median kept."""
    table = problem.constraints[0].estimator  # the lookup table measures whole networks on its backend
    x = problem.traced.example_input()
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, result in results.items():
            ms = table.measure_module(result.final.module, x).median  # type: ignore[attr-defined]
            best[name] = min(best.get(name, math.inf), ms)
    return best


def residual(lut_path: Path, steps: int) -> netopt.Problem:
    """The zoo's MobileNetV2 trained on the digits, under a calibrated latency table of its own."""
    data = netopt.data.mnist(size=32, holdout_per_class=20, test_fraction=0.2)
    torch.manual_seed(0)
    model = netopt.zoo.MobileNetV2(0.5, num_classes=10, in_channels=1)
    netopt.Trainer(lr=0.05, batch_size=64, device="cpu").train(model, data.train_x, data.train_y, steps, 0,
                                                               schedule="cosine")  # lr 0.1 diverges here
    return latency_problem(model, data, lut_path, netopt.Accuracy(data, netopt.Trainer(lr=0.01)))


def bypass_ablation(out: Path, long: int, supernet: int, budgets: list[str], pretrain: int) -> None:
    problem = residual(out / "lut-v2.sqlite", pretrain)
    test_n = len(problem.objective.data.test_y)  # type: ignore[attr-defined]
    start = problem.objective.test(problem.traced.module)
    makers: dict[str, dict[str, Any]] = {
        "V2 multi-layer": {},
        "V2 multi-layer + bypass": {"bypass": True},
        "V2 single-layer + bypass": {"bypass": True, "layers": 1},
    }
    rows = []
    for budget in budgets:
        at = with_budget(problem, budget)
        results, seconds = {}, {}
        for name, extra in makers.items():
            started = time.perf_counter()
            results[name] = netopt.NetAdaptV2(supernet_steps=supernet, long_term_steps=long, progress=False,
                                              **extra).run(at, run_dir=out / "residual" / budget.rstrip("%")
                                                           / name.replace(" ", "-").replace("+", "and"))
            seconds[name] = time.perf_counter() - started
            print(f"-- residual {budget}: {name} done in {seconds[name]:.0f} s", flush=True)
        ms = measured(at, results)
        for name, r in results.items():
            acc = r.final.test_accuracy or float("nan")
            rows.append([budget, name, f"{acc:.4f} ± {math.sqrt(acc * (1 - acc) / test_n):.4f}", f"{ms[name]:.4g}",
                         f"{seconds[name]:.0f}", str(len(r.final.network.bypassed)), str(len(r.family) - 1)])
    blocks = len({b.add for b in problem.traced.network.bypassable.values()})
    print(f"\nMobileNetV2 0.5 on the digits: start test accuracy {start:.4f}; {blocks} residual blocks can be "
          f"bypassed; super-network {supernet}, long {long} steps\n")
    print(markdown_table(["budget", "strategy", "test accuracy", "latency measured (ms)", "search s",
                          "branches removed", "iterations"], rows))


# --- beyond the zoo: a plain residual CNN and torchvision's MobileNetV2 ---------------------------


class Block(nn.Module):
    """A basic residual block: two 3x3 convolutions, a projection shortcut where the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                                  nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut: nn.Module = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


class ResidualCNN(nn.Module):
    """A plain residual CNN, not the zoo's: a stem, three stages of `blocks` blocks at `width`,
    2 `width` and 4 `width` channels (stride 2 between stages), average pool, a linear classifier."""

    def __init__(self, width: int = 16, blocks: int = 2, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, c = [], width
        for stage in range(3):
            for k in range(blocks):
                layers.append(Block(c, width * 2 ** stage, 2 if stage and not k else 1))
                c = width * 2 ** stage
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))


def torchvision_mobilenet_v2(width: float) -> nn.Module:
    """torchvision's own MobileNetV2 (width multiplier `width`, 10 classes), its first convolution
    taking the digits' one channel."""
    tv = import_torchvision()
    model = tv.models.mobilenet_v2(width_mult=width, num_classes=10)
    first = model.features[0][0]
    model.features[0][0] = nn.Conv2d(1, first.out_channels, 3, 2, 1, bias=False)
    return model


def pretrained(make: Callable[[], nn.Module], data: netopt.data.Splits, steps: int, lr: float, tag: str) -> nn.Module:
    """`make()` trained on the digits' training split (`steps` SGD steps, batch 64, cosine), cached by `tag`."""
    path = cache_root() / "bench-netadaptv2" / f"{tag}-{steps}-lr{lr}-torch{torch.__version__}.pt"
    torch.manual_seed(0)
    model = make()
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    started = time.perf_counter()
    netopt.Trainer(lr=lr, batch_size=64, device="cpu").train(model, data.train_x, data.train_y, steps, 0,
                                                             schedule="cosine")
    print(f"-- {tag}: pretrained {steps} steps in {time.perf_counter() - started:.0f} s", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


class Stopwatch(netopt.Accuracy):
    """Accuracy that adds up the seconds of its short-term and long-term calls: ProgressiveBarrier's
    fine-tuning and final training, NetAdaptV2's samples and super-network plus final training."""

    def __init__(self, data: netopt.data.Splits, trainer: netopt.Trainer) -> None:
        super().__init__(data, trainer)
        self.seconds = {"short": 0.0, "long": 0.0}

    def short_term(self, module: nn.Module, steps: int, seed: int) -> Evaluation:
        return self._timed("short", super().short_term, module, steps, seed)

    def long_term(self, module: nn.Module, steps: int, seed: int) -> Evaluation:
        return self._timed("long", super().long_term, module, steps, seed)

    def _timed(self, part: str, train: Callable[[nn.Module, int, int], Evaluation], module: nn.Module, steps: int,
               seed: int) -> Evaluation:
        started = time.perf_counter()
        try:
            return train(module, steps, seed)
        finally:
            self.seconds[part] += time.perf_counter() - started


class Metered(netopt.LookupTable):
    """A lookup table that adds up the seconds of the estimates that measured new units."""

    unit_seconds = 0.0

    def estimate(self, net: netopt.ir.Network) -> float:
        before, started = self.measurements, time.perf_counter()
        value = super().estimate(net)
        if self.measurements > before:
            self.unit_seconds += time.perf_counter() - started
        return value


def frozen_copy(problem: netopt.Problem, lut_path: Path) -> netopt.Problem:
    """The problem on its table opened frozen: each strategy starts from the same calibrated table and
    pays its own unit measurements and recalibrations, none of which the other sees."""
    first, *rest = problem.constraints
    changed = copy.copy(first)
    changed.estimator = Metered.open(lut_path, OnnxRuntimeCPU(threads=1), frozen=True)
    data = problem.objective.data  # type: ignore[attr-defined]
    objective = Stopwatch(data, problem.objective.trainer)  # type: ignore[attr-defined]
    return netopt.Problem(problem.traced, [changed, *rest], objective)


def beyond_zoo(label: str, problem: netopt.Problem, lut_path: Path, out: Path, budgets: list[str],
               steps: tuple[int, int], supernet: int | None, points: int | None = None,
               strategies: Sequence[str] = STRATEGIES) -> list[list[str]]:
    """ProgressiveBarrier and NetAdaptV2 (those of `strategies`) side by side on `problem` at each
    budget, on one lookup table warmed at `points` widths a group (None: all); the table's rows."""
    short, long = steps
    makers = {"ProgressiveBarrier": lambda: netopt.ProgressiveBarrier(short_term_steps=short, long_term_steps=long,
                                                                     progress=False),
              "NetAdaptV2": lambda: netopt.NetAdaptV2(supernet_steps=supernet, long_term_steps=long, progress=False)}
    makers = {name: make for name, make in makers.items() if name in strategies}
    test_n = len(problem.objective.data.test_y)  # type: ignore[attr-defined]
    warm(label, problem, 2 if short < 10 else points)  # a smoke run warms the table's corners only
    print(f"-- {label}: {len(problem.traced.network.groups)} channel groups, start test accuracy "
          f"{problem.objective.test(problem.traced.module):.4f}", flush=True)
    rows = []
    for budget in budgets:
        results, seconds, split = {}, {}, {}
        for name, make in makers.items():
            at = frozen_copy(with_budget(problem, budget), lut_path)
            started = time.perf_counter()
            results[name] = make().run(at, run_dir=out / label / budget.rstrip("%") / name)
            seconds[name] = time.perf_counter() - started
            table = at.constraints[0].estimator
            split[name] = {**at.objective.seconds, "units": table.measurements, "units_s": table.unit_seconds}  # type: ignore
            print(f"-- {label} {budget}: {name} done in {seconds[name]:.0f} s", flush=True)
        ms = measured(problem, {**results, "start": _start(problem)})  # type: ignore[dict-item]
        rows += [_row(label, budget, name, r, ms[name] / ms["start"], seconds[name], split[name], test_n)
                 for name, r in results.items()]
        if len(results) == len(STRATEGIES):
            rows.append(_goal(label, budget, results, seconds, split))
    return rows


def warm(label: str, problem: netopt.Problem, points: int | None) -> None:
    """Measure every unit of the network at every width its groups allow, before either strategy
    runs: the lookup table is the platform's, built once (as in both papers), and neither
    strategy's time then depends on which of them met a unit first."""
    started = time.perf_counter()
    table = problem.constraints[0].estimator
    net = problem.traced.network
    new = table.prebuild(net, points or max(len(g.valid_widths()) for g in net.groups))  # type: ignore[attr-defined]
    print(f"-- {label}: lookup table warmed, {new} units measured in {time.perf_counter() - started:.0f} s", flush=True)


def _start(problem: netopt.Problem) -> SimpleNamespace:
    """The starting network in a result's shape, for `measured`: measured side by side with the finals."""
    return SimpleNamespace(final=SimpleNamespace(module=problem.traced.module))


def _row(label: str, budget: str, name: str, r: netopt.strategies.Result, share: float, seconds: float,
         split: dict[str, float], test_n: int) -> list[str]:
    t, acc = r.timings, r.final.test_accuracy or float("nan")
    if "supernet_training" in t:
        parts = f"{t['supernet_training']:.0f} / {t['sample_evaluation']:.0f} / {t['final_training']:.0f}"
    else:
        parts = f"{split['short']:.0f} / - / {split['long']:.0f}"
    measurement = f"{t['measurement']:.0f} ({split['units']:.0f} in {split['units_s']:.0f} s)"
    return [label, budget, name, f"{acc:.4f} ± {math.sqrt(acc * (1 - acc) / test_n):.4f}", f"{share:.0%}",
            f"{seconds:.0f}", parts, measurement, f"{t['framework']:.0f}", str(r.training_steps),
            str(len(r.family) - 1)]


def _goal(label: str, budget: str, results: dict[str, netopt.strategies.Result], seconds: dict[str, float],
          split: dict[str, dict[str, float]]) -> list[str]:
    """PB / V2: the accuracy gap, the ratio of total times (and without the units each measured:
    the papers' accounting, where the table is built before the search) against the goal."""
    pb, v2 = results["ProgressiveBarrier"], results["NetAdaptV2"]
    gap = (pb.final.test_accuracy or 0) - (v2.final.test_accuracy or 0)
    ratio = seconds["ProgressiveBarrier"] / seconds["NetAdaptV2"]
    searched = {name: seconds[name] - split[name]["units_s"] for name in seconds}
    warm = searched["ProgressiveBarrier"] / searched["NetAdaptV2"]
    met = "met" if gap <= 0.015 and ratio >= 3 else "not met"
    return [label, budget, "PB / V2", f"{gap * 100:+.2f} points", "", f"{ratio:.1f}x", met,
            f"{warm:.1f}x without new units", "", "", ""]


BEYOND_HEADER = ["network", "budget", "strategy", "test accuracy", "latency measured (% of start)", "search s",
                 "PB: fine-tuning / - / final s; V2: supernet / samples / final s", "measurement s (new units)",
                 "other s",
                 "training steps", "iterations"]


def residual_cnn(out: Path, budgets: list[str], steps: tuple[int, int], supernet: int | None, pretrain: int,
                 width: int, blocks: int, strategies: Sequence[str] = STRATEGIES) -> list[list[str]]:
    data = netopt.data.mnist(size=32, holdout_per_class=20, test_fraction=0.2)
    tag = f"residual-cnn-{width}" + (f"x{blocks}" if blocks != 2 else "")
    model = pretrained(lambda: ResidualCNN(width, blocks), data, pretrain, 0.05, tag)
    lut = out / f"lut-{tag}.sqlite"
    problem = latency_problem(model, data, lut, Stopwatch(data, netopt.Trainer(lr=0.01)))
    return beyond_zoo(f"residual CNN {width}, {blocks} blocks a stage", problem, lut, out, budgets, steps, supernet,
                      strategies=strategies)


def torchvision_part(out: Path, budgets: list[str], steps: tuple[int, int], supernet: int | None, pretrain: int,
                     width: float, strategies: Sequence[str] = STRATEGIES) -> list[list[str]]:
    data = netopt.data.mnist(size=32, holdout_per_class=20, test_fraction=0.2)
    model = pretrained(lambda: torchvision_mobilenet_v2(width), data, pretrain, 0.05, f"tv-mobilenet_v2-{width}")
    problem = latency_problem(model, data, out / "lut-tv.sqlite", Stopwatch(data, netopt.Trainer(lr=0.01)))
    return beyond_zoo(f"torchvision MobileNetV2 {width}", problem, out / "lut-tv.sqlite", out, budgets, steps,
                      supernet, points=4, strategies=strategies)  # all its widths would be ~10,000 units


PARTS = ("all", "comparison", "residual", "residual-cnn", "torchvision")


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budgets", nargs="+", default=["70%", "50%", "35%"])
    p.add_argument("--part", choices=PARTS, default="all",
                   help="the comparison with ProgressiveBarrier on the zoo's MobileNetV1, the bypass ablation on "
                        "MobileNetV2, ProgressiveBarrier against NetAdaptV2 on a residual CNN or on torchvision's "
                        "MobileNetV2, or all four")
    p.add_argument("--out", type=Path, default=None, help="run directories (default: a temporary folder)")
    p.add_argument("--quick", action="store_true", help="one budget (70%%), small steps: a smoke run")
    p.add_argument("--supernet", type=int, default=None,
                   help="NetAdaptV2's super-network steps beyond the zoo (default: its own default)")
    p.add_argument("--cnn-width", type=int, default=16, help="the residual CNN's first stage's channels")
    p.add_argument("--cnn-blocks", type=int, default=2, help="the residual CNN's blocks a stage")
    p.add_argument("--tv-width", type=float, default=0.5, help="torchvision MobileNetV2's width multiplier")
    p.add_argument("--beyond-budgets", nargs="+", default=["50%"],
                   help="budgets of the residual CNN and torchvision parts")
    p.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES),
                   help="which of the two the residual CNN and torchvision parts run (one alone: a setting of it "
                        "tried again without the other's hour; no goal row)")
    return p.parse_args()


def main() -> None:
    args = arguments()
    torch.set_num_threads(1)
    short, long, supernet = (40, 300, 300) if not args.quick else (4, 20, 30)
    budgets = args.budgets if not args.quick else ["70%"]
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-v2-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.part in ("all", "residual-cnn", "torchvision"):
        beyond(args, out, (short, long))
    if args.part in ("all", "residual"):
        bypass_ablation(out, long, supernet, ["50%", "35%"] if not args.quick else ["50%"],
                        1000 if not args.quick else 100)
    if args.part in ("all", "comparison"):
        comparison(out, budgets, short, long, supernet)


def beyond(args: argparse.Namespace, out: Path, steps: tuple[int, int]) -> None:
    """The residual CNN and torchvision parts: ProgressiveBarrier against NetAdaptV2 and the goal."""
    budgets = ["70%"] if args.quick else args.beyond_budgets
    supernet = args.supernet if not args.quick else 30
    pretrain = 1000 if not args.quick else 100
    rows = []
    if args.part in ("all", "residual-cnn"):
        rows += residual_cnn(out, budgets, steps, supernet, pretrain, args.cnn_width, args.cnn_blocks, args.strategies)
    if args.part in ("all", "torchvision"):
        rows += torchvision_part(out, budgets, steps, supernet, pretrain, args.tv_width, args.strategies)
    print(f"\nbeyond the zoo: {torch.get_num_threads()} torch thread; short {steps[0]}, long {steps[1]} steps; "
          f"super-network {'default' if supernet is None else supernet} steps\n")
    print(markdown_table(BEYOND_HEADER, rows))
    print("\nGoal: NetAdaptV2 within 1.5 points of ProgressiveBarrier's test accuracy in <= 1/3 of its time")


def comparison(out: Path, budgets: list[str], short: int, long: int, supernet: int) -> None:
    problem = build(out / "lut.sqlite")
    test_n = len(problem.objective.data.test_y)  # type: ignore[attr-defined]
    makers = {
        "ProgressiveBarrier": lambda: netopt.ProgressiveBarrier(short_term_steps=short, long_term_steps=long,
                                                                progress=False),
        "NetAdaptV2": lambda: netopt.NetAdaptV2(supernet_steps=supernet, long_term_steps=long, progress=False),
        "V2 single-layer": lambda: netopt.NetAdaptV2(supernet_steps=supernet, long_term_steps=long, layers=1,
                                                     progress=False),
        "V2 no sandwich": lambda: netopt.NetAdaptV2(supernet_steps=supernet, long_term_steps=long, sandwich=False,
                                                    progress=False),
    }
    rows, goals = [], []
    for budget in budgets:
        at = with_budget(problem, budget)
        results, seconds = {}, {}
        for name, make in makers.items():
            started = time.perf_counter()
            results[name] = make().run(at, run_dir=out / budget.rstrip("%") / name.replace(" ", "-"))
            seconds[name] = time.perf_counter() - started
            print(f"-- {budget}: {name} done in {seconds[name]:.0f} s", flush=True)
        ms = measured(at, results)
        for name, r in results.items():
            t, acc = r.timings, r.final.test_accuracy or float("nan")
            parts = (f"{t['supernet_training']:.0f} / {t['sample_evaluation']:.0f} / {t['final_training']:.0f}"
                     if "supernet_training" in t else "-")
            rows.append([budget, name, f"{acc:.4f} ± {math.sqrt(acc * (1 - acc) / test_n):.4f}",
                         f"{ms[name]:.4g}", f"{seconds[name]:.0f}", parts, str(r.training_steps),
                         str(len(r.family) - 1)])
        pb, v2 = results["ProgressiveBarrier"], results["NetAdaptV2"]
        gap = (pb.final.test_accuracy or 0) - (v2.final.test_accuracy or 0)
        ratio = seconds["ProgressiveBarrier"] / seconds["NetAdaptV2"]
        goals.append([budget, f"{gap * 100:+.2f}", f"{ratio:.1f}x",
                      "met" if gap <= 0.005 and ratio >= 6 else "not met"])
    print(f"\nmachine: {torch.get_num_threads()} torch thread; test split {test_n} digits; short {short}, long "
          f"{long}, super-network {supernet} steps\n")
    print(markdown_table(["budget", "strategy", "test accuracy", "latency measured (ms)", "search s",
                          "V2 parts: supernet / samples / final s", "training steps", "iterations"], rows))
    print("\nGoal: NetAdaptV2 within 0.5 points of ProgressiveBarrier's test accuracy in <= 1/6 of its time")
    print(markdown_table(["budget", "PB - V2 accuracy (points)", "PB time / V2 time", "goal"], goals))
    print(f"\nmedian speed-up over budgets: {statistics.median(float(g[2][:-1]) for g in goals):.1f}x")


if __name__ == "__main__":
    main()
