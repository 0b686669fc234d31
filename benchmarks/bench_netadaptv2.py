"""NetAdaptV2 against NetAdapt (ProgressiveBarrier) on the comparison problem, side by side in one run.

    python benchmarks/bench_netadaptv2.py [--budgets 70% 50% 35%] [--part all|comparison|residual]
                                          [--quick] [--out runs/bench-v2]

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
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

import netopt
from netopt.compare import with_budget
from netopt.measure import OnnxRuntimeCPU
from netopt.report import markdown_table
from netopt.zoo.pretrained import pretrained_mnist


def build(lut_path: Path) -> netopt.Problem:
    model, data = pretrained_mnist(width=0.5, size=32)
    traced = netopt.trace(model, data.train_x[:1])
    lut = netopt.LookupTable.open(lut_path, OnnxRuntimeCPU(threads=1))
    if lut.calibration(traced.network) is None:
        lut.calibrate(traced)
    constraint = netopt.LatencyConstraint("50%", lut, netopt.ReductionSchedule("6%", decay=0.96))
    return netopt.Problem(traced, [constraint], netopt.Accuracy(data, netopt.Trainer(lr=0.01)))


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
    traced = netopt.trace(model.eval(), data.train_x[:1])
    lut = netopt.LookupTable.open(lut_path, OnnxRuntimeCPU(threads=1))
    if lut.calibration(traced.network) is None:
        lut.calibrate(traced)
    constraint = netopt.LatencyConstraint("50%", lut, netopt.ReductionSchedule("6%", decay=0.96))
    return netopt.Problem(traced, [constraint], netopt.Accuracy(data, netopt.Trainer(lr=0.01)))


def bypass_ablation(out: Path, long: int, supernet: int, budgets: list[str], pretrain: int) -> None:
    problem = residual(out / "lut-v2.sqlite", pretrain)
    test_n = len(problem.objective.data.test_y)  # type: ignore[attr-defined]
    start = problem.objective.test(problem.traced.module)
    makers = {
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budgets", nargs="+", default=["70%", "50%", "35%"])
    p.add_argument("--part", choices=("all", "comparison", "residual"), default="all",
                   help="the comparison with ProgressiveBarrier, the bypass ablation on MobileNetV2, or both")
    p.add_argument("--out", type=Path, default=None, help="run directories (default: a temporary folder)")
    p.add_argument("--quick", action="store_true", help="one budget (70%), small steps: a smoke run")
    args = p.parse_args()
    torch.set_num_threads(1)
    short, long, supernet = (40, 300, 300) if not args.quick else (4, 20, 30)
    budgets = args.budgets if not args.quick else ["70%"]
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-v2-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.part in ("all", "residual"):
        bypass_ablation(out, long, supernet, ["50%", "35%"] if not args.quick else ["50%"],
                        1000 if not args.quick else 100)
    if args.part == "residual":
        return
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
