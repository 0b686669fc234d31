"""Does a side-by-side ratio hold still? Rounds of one network against the start, in one process and across processes.

    python benchmarks/bench_levels.py [--processes 5] [--rounds 6] [--long 30]

`make demo`'s network (the zoo's MobileNetV1 0.5 at 32 px, its pretrained weights cached by
`make demo`) and a network NetAdapt reaches from it (six groups cut, about half its latency),
measured side by side on ONNX Runtime (one thread) as a budget's figure is: each round
materializes both, times them call by call in turn, and gives the network's ratio to the start.
Printed: the rounds of `--processes` processes of `--rounds` rounds each, and one process of
`--long` rounds in a row, each round's ratio and each process's median.

What it tells: whether the rounds of one process sample the spread a run a minute later (another
process) will see. Where the ratio moves between levels for stretches of rounds (the machine's,
not the process's), consecutive rounds agree while runs do not, and a decision by measurement
(`netopt.strategies.decisive`) that looks decisive in one run goes the other way in another (issue
32's five-run check). Run it pinned to one core with nothing else on the machine:
`taskset -c 1 python benchmarks/bench_levels.py`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CUT = {"features.8.0": 64, "features.12.0": 128, "features.16.0": 96, "features.20.0": 120, "features.24.0": 56,
       "features.26.0": 168}
"""The widths ProgressiveBarrier had reached on make demo's problem at iteration 8 (12-06)."""


def rounds(n: int) -> list[float]:
    """`n` side-by-side rounds of the cut network against the start: its ratio in each."""
    import netopt
    from netopt.measure import OnnxRuntimeCPU
    from netopt.zoo.pretrained import pretrained_mnist

    model, data = pretrained_mnist(width=0.5, size=32)
    traced = netopt.trace(model, data.train_x[:1])
    start = traced.network
    cut = start.with_widths({g: w for g, w in CUT.items() if g in {group.id for group in start.groups}})
    backend, x = OnnxRuntimeCPU(threads=1), traced.example_input()
    ratios = []
    for k in range(n):
        full, now = backend.measure_together([(traced.materialize(start), x), (traced.materialize(cut), x)], seed=k)
        ratios.append(now.median / full.median)
    return ratios


def in_process(n: int) -> list[float]:
    """`rounds(n)` in a fresh Python process."""
    out = subprocess.run([sys.executable, __file__, "--child", str(n)], check=True, capture_output=True, text=True)
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", type=int, default=5, help="processes of --rounds rounds each (default 5)")
    p.add_argument("--rounds", type=int, default=6, help="rounds a process (default 6)")
    p.add_argument("--long", type=int, default=30, help="rounds in a row in one more process (default 30)")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(rounds(args.child)))
        return
    print("| process | rounds' ratios (network / start), in order | median |\n|---|---|---|")
    medians = []
    for k in range(args.processes):
        found = in_process(args.rounds)
        medians.append(statistics.median(found))
        print(f"| {k} | {' '.join(f'{r:.3f}' for r in found)} | {medians[-1]:.3f} |", flush=True)
    if args.long:
        found = in_process(args.long)
        print(f"| {args.long} in a row | {' '.join(f'{r:.3f}' for r in found)} | {statistics.median(found):.3f} |")
    if len(medians) > 1:
        spread = (max(medians) - min(medians)) / statistics.median(medians)
        print(f"\nThe processes' medians span {spread:.1%} of their median.")


if __name__ == "__main__":
    main()
