"""Lookup-table fidelity on networks netopt has not seen: the real timm and torchvision models.

    python benchmarks/bench_lut.py [--models ...] [--sizes 128 224] [--threads 1 4]
                                   [--variants 30] [--calibration 16] [--rounds 3] [--out benchmarks/out]

For every model, input size and ONNX Runtime thread count: a fresh lookup table, calibrated by
`LookupTable.calibrate` (which chooses its own networks, at most --calibration), then
--variants random variants (drawn with another seed, never used to calibrate) measured end to
end in --rounds interleaved rounds (the order shuffled each round; each variant's lowest round
median kept, as `measure_networks` does). A reference network (every group at half width) is
measured in every round too: how much its figure moves between rounds is the measurement's own
repeatability, to tell estimation error from measurement noise.

Goal (issue 14): at least 98% of all estimates within ±10% of the measured median, every
architecture at least 95%, Spearman >= 0.98; the naive layer sum beside it.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import netopt
from netopt.lut import Agreement, FidelityReport, LookupTable, random_variants
from netopt.measure import NoisyMeasurementWarning, OnnxRuntimeCPU
from netopt.measure.base import steady
from netopt.report.tables import markdown_table
from netopt.testing.peers import Arch, build

MODELS = {
    "MobileNetV1": Arch("timm", "mobilenetv1_100", "MobileNetV1"),
    "MobileNetV2": Arch("torchvision", "mobilenet_v2", "MobileNetV2"),
    "MobileNetV3": Arch("timm", "mobilenetv3_large_100", "MobileNetV3"),
    "EfficientNet-B0": Arch("timm", "efficientnet_b0", "EfficientNet"),
    "ResNet-18": Arch("torchvision", "resnet18", "ResNet"),
}


def run_one(name: str, size: int, threads: int, args: argparse.Namespace, folder: Path) -> dict[str, object]:
    started = time.perf_counter()
    traced = netopt.trace(build(MODELS[name]), torch.randn(1, 3, size, size))
    lut = LookupTable.open(folder / f"{name}-{size}-{threads}.sqlite", OnnxRuntimeCPU(threads=threads))
    cal = lut.calibrate(traced, max_networks=args.calibration, seed=0)
    calibration_s = time.perf_counter() - started
    variants = random_variants(traced.network, args.variants, seed=1000)
    reference = traced.network.scaled(0.5)
    lut.ensure([*variants, reference], progress="measuring layers")
    modules = [traced.materialize(n) for n in (*variants, reference)]
    x = traced.example_input()
    rounds: list[list[float]] = [[] for _ in modules]
    rng = random.Random(0)
    for _ in range(args.rounds):
        order = list(range(len(modules)))
        rng.shuffle(order)
        for i in order:
            rounds[i].append(steady(lambda m=modules[i]: lut.backend.measure(m, x)).median)
    measured = np.array([min(r) for r in rounds[:-1]])
    report = FidelityReport(tuple(measured), tuple(lut.estimate(n) for n in variants),
                            tuple(lut.naive_sum(n) for n in variants), lut.unit)
    ref = rounds[-1]
    spread = [max(r) / min(r) - 1 for r in rounds[:-1]]
    png = report.plot(args.out / f"fidelity_{name}_{size}px_{threads}t.png",
                      title=f"{name} {size} px, ORT CPU {threads} thread{'s' * (threads > 1)}")
    return {"name": name, "size": size, "threads": threads, "report": report, "cal": cal,
            "calibration_s": calibration_s, "seconds": time.perf_counter() - started, "png": png,
            "reference_spread": max(ref) / min(ref) - 1, "variant_spread": statistics.median(spread),
            "errors": (np.array(report.calibrated) - measured) / measured}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sizes", nargs="*", type=int, default=[128, 224])
    parser.add_argument("--threads", nargs="*", type=int, default=[1, 4])
    parser.add_argument("--variants", type=int, default=30, help="random variants per model, size and thread count")
    parser.add_argument("--calibration", type=int, default=16, help="whole networks calibration measures at most")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds over the variants")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore", NoisyMeasurementWarning)
    torch.set_num_threads(1)
    print(f"# lookup-table fidelity on {', '.join(args.models)}; {args.variants} variants each, {args.rounds} "
          f"rounds\n{OnnxRuntimeCPU(threads=1).fingerprint.describe()}\n", flush=True)
    rows, results = [], []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            for size in args.sizes:
                for threads in args.threads:
                    r = run_one(name, size, threads, args, Path(folder))
                    results.append(r)
                    naive, cal = r["report"].agreement("naive"), r["report"].agreement()  # type: ignore[attr-defined]
                    row = [name, size, threads, len(r["cal"].points), f"{naive.within10:.0%}",  # type: ignore
                           f"{cal.within10:.0%}", f"{cal.rmspe:.1%}", f"{cal.spearman:.3f}",
                           f"{r['reference_spread']:.1%}", f"{r['variant_spread']:.1%}", f"{r['seconds']:.0f}"]
                    rows.append(row)
                    print(markdown_table(HEADER, [row]).splitlines()[-1], flush=True)
    print("\n" + markdown_table(HEADER, rows))
    errors = np.concatenate([r["errors"] for r in results])  # type: ignore[misc]
    by_arch = {n: float(np.mean(np.abs(np.concatenate([r["errors"] for r in results if r["name"] == n])) <= 0.10))
               for n in args.models}
    spearman = min(Agreement.of(np.array(r["report"].calibrated), np.array(r["report"].measured)).spearman  # type: ignore
                   for r in results)
    overall = float(np.mean(np.abs(errors) <= 0.10))
    met = overall >= 0.98 and min(by_arch.values()) >= 0.95 and spearman >= 0.98
    print(f"\nall estimates within ±10%: {overall:.1%} ({len(errors)}); by architecture: "
          + ", ".join(f"{n} {v:.0%}" for n, v in by_arch.items()) + f"; lowest Spearman {spearman:.3f}")
    print(f"goal (>= 98% overall, >= 95% each, Spearman >= 0.98): {'MET' if met else 'NOT MET'}")


HEADER = ["model", "px", "threads", "calibration networks", "naive within ±10%", "calibrated within ±10%", "RMSPE",
          "Spearman", "reference spread", "variant spread (median)", "s"]


if __name__ == "__main__":
    main()
