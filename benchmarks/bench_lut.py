"""Lookup-table fidelity on the zoo's MobileNetV1 and MobileNetV2 (128 px, ONNX Runtime, 1 thread).

    python benchmarks/bench_lut.py [--variants 30] [--calibration 6] [--out benchmarks/out]

Goal (issue 3): >= 95% of calibrated estimates within ±10% of the end-to-end median and
Spearman >= 0.95, with the naive layer-sum figures beside them. Each model gets a fresh
lookup table; calibration variants and fidelity variants are drawn with different seeds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

import netopt
from netopt.lut import LookupTable, fidelity
from netopt.measure import NoisyMeasurementWarning, OnnxRuntimeCPU
from netopt.zoo import MobileNetV1, MobileNetV2

MODELS = {
    "MobileNetV1-0.5": lambda: MobileNetV1(0.5, 128, num_classes=1000),
    "MobileNetV2-1.0": lambda: MobileNetV2(1.0, num_classes=1000),
}


def run_model(name: str, args: argparse.Namespace, folder: Path) -> str:
    traced = netopt.trace(MODELS[name]().eval(), torch.randn(1, 3, 128, 128))
    lut = LookupTable.open(folder / f"{name}.sqlite", OnnxRuntimeCPU(threads=1))
    start = time.perf_counter()
    cal = lut.calibrate(traced, variants=args.calibration, seed=0)
    report = fidelity(lut, traced, variants=args.variants, seed=1)
    png = report.plot(args.out / f"fidelity_{name}.png", title=f"{name}, ORT CPU 1 thread")
    took = time.perf_counter() - start
    a = report.agreement()
    verdict = "MET" if a.within10 >= 0.95 and a.spearman >= 0.95 else "NOT MET"
    ratios = ", ".join(f"{r:.2f}" for r in cal.knots[1])
    return (f"### {name}\ncalibration on {len(cal.points)} networks: measured / layer sum = {ratios}\n"
            f"{lut.measurements} layer measurements, {took:.0f} s; plot {png}\n\n"
            f"{report.table()}\n\ngoal (>= 95% within ±10%, Spearman >= 0.95): {verdict}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", type=int, default=30, help="random variants per model for the report")
    parser.add_argument("--calibration", type=int, default=8, help="whole networks measured to calibrate")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore", NoisyMeasurementWarning)
    torch.set_num_threads(1)
    print(f"# lookup-table fidelity: {OnnxRuntimeCPU(threads=1).fingerprint.describe()}\n")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            print(run_model(name, args, Path(folder)), flush=True)


if __name__ == "__main__":
    main()
