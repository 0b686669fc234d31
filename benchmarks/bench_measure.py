"""Is one latency measurement repeatable? Five tries of the same model, side by side per backend.

    python benchmarks/bench_measure.py [--tries 5]

Goal (issue 3): repeated measurements of one model agree within 5% over 5 tries on this
machine. Reports the spread (max/min - 1) of the median and of the minimum across tries.
"""

from __future__ import annotations

import argparse
import warnings

import torch

from netopt.measure import Backend, NoisyMeasurementWarning, OnnxRuntimeCPU, TorchEager
from netopt.zoo import MobileNetV1, MobileNetV2


def spread(values: list[float]) -> float:
    return max(values) / min(values) - 1


def tries(backend: Backend, model: torch.nn.Module, x: torch.Tensor, n: int) -> tuple[list[float], list[float], int]:
    results = [backend.measure(model, x) for _ in range(n)]
    return [r.median for r in results], [r.min for r in results], sum(len(r.samples) for r in results) // n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter("ignore", NoisyMeasurementWarning)
    torch.set_num_threads(1)
    models = {"MobileNetV1-0.5 (128)": (MobileNetV1(0.5, 128), 128), "MobileNetV2-1.0 (128)": (MobileNetV2(), 128)}
    backends: dict[str, Backend] = {"ORT CPU, 1 thread": OnnxRuntimeCPU(threads=1),
                                    "torch eager, 1 thread": TorchEager(threads=1)}
    print(f"# repeatability over {args.tries} tries (goal: spread of the median <= 5%)\n")
    print("| model | backend | runs/try | medians (ms) | spread of median | spread of min | goal |")
    print("|---|---|---|---|---|---|---|")
    for mname, (model, size) in models.items():
        x = torch.randn(1, 3, size, size)
        for bname, backend in backends.items():
            medians, mins, runs = tries(backend, model.eval(), x, args.tries)
            ok = "met" if spread(medians) <= 0.05 else "NOT met"
            shown = ", ".join(f"{m:.3f}" for m in medians)
            print(f"| {mname} | {bname} | {runs} | {shown} | {spread(medians):.1%} | {spread(mins):.1%} | {ok} |",
                  flush=True)


if __name__ == "__main__":
    main()
