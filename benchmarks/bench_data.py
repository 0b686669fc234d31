"""A user's own data and loop, against netopt's in-memory path: what they cost.

    python benchmarks/bench_data.py [--repeats 5] [--steps 100] [--quick]

1. Fine-tuning throughput of the zoo's MobileNetV1 (width 0.5, 32 px, batch 64) on the bundled
   digits: `Accuracy(splits)` (tensors in memory) against `Accuracy.from_loaders` (a DataLoader
   over a map-style Dataset, one example at a time and collated, as a user's would be), the
   same steps, interleaved runs, medians. Goal: the loader path at least 0.9x the in-memory one.
2. The framework share of an adaptation through `FunctionObjective` (a user's own DataLoader
   loop and metric): the share of wall time that is netopt's own work, not training, scoring
   or measuring. Goal: at most 2%, as with the built-in objective (printed beside it).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import netopt
from netopt.constraints import EnergyConstraint, MACsConstraint, ReductionSchedule
from netopt.measure import EnergyModel
from netopt.zoo.pretrained import pretrained_mnist


class Digits(Dataset):  # type: ignore[type-arg]
    """A map-style Dataset as users write them: one (image, label) an index."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


class Loop:
    """A user's own fine-tuning loop and metric (top-level, so that it pickles)."""

    def __init__(self, data: netopt.data.Splits) -> None:
        self.data = data

    def fine_tune(self, model: nn.Module, steps: int, seed: int, phase: str) -> int:
        loader = DataLoader(Digits(self.data.train_x, self.data.train_y), batch_size=64, shuffle=True,
                            drop_last=True, generator=torch.Generator().manual_seed(seed))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=4e-5)
        model.train()
        done = 0
        while done < steps:
            for x, y in loader:
                optimizer.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
                done += 1
                if done == steps:
                    break
        return done

    def score(self, model: nn.Module) -> float:
        with torch.no_grad():
            return float((model(self.data.holdout_x).argmax(1) == self.data.holdout_y).float().mean())


def throughput(model: nn.Module, data: netopt.data.Splits, steps: int, repeats: int) -> list[list[str]]:
    objectives = {
        "in memory (Splits)": netopt.Accuracy(data),
        "DataLoader (map-style Dataset)": netopt.Accuracy.from_loaders(
            DataLoader(Digits(data.train_x, data.train_y), batch_size=64, shuffle=True, drop_last=True),
            DataLoader(Digits(data.holdout_x, data.holdout_y), batch_size=512)),
    }
    times: dict[str, list[float]] = {name: [] for name in objectives}
    for k in range(repeats + 1):  # interleaved; the first round warms up
        for name, objective in objectives.items():
            module = copy.deepcopy(model)
            started = time.perf_counter()
            objective._fit(module, steps, seed=k, phase="short")  # training alone, no scoring
            if k:
                times[name].append(time.perf_counter() - started)
    base = statistics.median(times["in memory (Splits)"])
    return [[name, f"{steps / statistics.median(t):.1f}", f"{base / statistics.median(t):.2f}x",
             f"{(max(t) - min(t)) / statistics.median(t):.0%}"] for name, t in times.items()]


def share(model: nn.Module, data: netopt.data.Splits, short: int, long: int) -> list[list[str]]:
    traced = netopt.trace(model, data.train_x[:1])
    loop = Loop(data)
    rows = []
    for name, objective in (("Accuracy (built in)", netopt.Accuracy(data)),
                            ("FunctionObjective (own loop)", netopt.FunctionObjective(loop.fine_tune, loop.score))):
        problem = netopt.Problem(traced, [MACsConstraint("60%", schedule=ReductionSchedule("8%")),
                                          EnergyConstraint("70%", EnergyModel(), ReductionSchedule("8%"))], objective)
        result = netopt.ProgressiveBarrier(short_term_steps=short, long_term_steps=long).run(problem)
        t = result.timings
        rows.append([name, str(len(result.history)), f"{t['total']:.1f}", f"{t['training_and_evaluation']:.1f}",
                     f"{t['framework']:.2f}", f"{result.framework_share:.2%}"])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--short", type=int, default=60)
    p.add_argument("--long", type=int, default=300)
    p.add_argument("--quick", action="store_true", help="2 repeats of 30 steps; short 10, long 20")
    args = p.parse_args()
    if args.quick:
        args.repeats, args.steps, args.short, args.long = 2, 30, 10, 20
    torch.set_num_threads(1)
    model, data = pretrained_mnist(width=0.5, size=32)
    print(f"machine: {torch.get_num_threads()} torch thread, torch {torch.__version__}")
    print(f"\n1. fine-tuning throughput, MobileNetV1 0.5 at 32 px, batch 64, {args.steps} steps, median of "
          f"{args.repeats} interleaved runs")
    print(netopt.report.markdown_table(["data", "steps/s", "vs in memory", "spread (max-min)/median"],
                                       throughput(model, data, args.steps, args.repeats)))
    print(f"\n2. framework share of ProgressiveBarrier (MACs 60% + energy 70%, short {args.short}, long {args.long})")
    print(netopt.report.markdown_table(["objective", "proposals", "total s", "training + scoring s", "netopt s",
                                        "framework share"], share(model, data, args.short, args.long)))


if __name__ == "__main__":
    main()
