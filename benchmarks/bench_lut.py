"""Lookup-table fidelity on networks netopt has not seen: the real timm and torchvision models.

    python benchmarks/bench_lut.py [--models ...] [--sizes 128 224] [--threads 1 4]
                                   [--variants 30] [--calibration 16] [--rounds 3] [--out benchmarks/out]

For every model, input size and ONNX Runtime thread count: a fresh lookup table, calibrated by
`LookupTable.calibrate` (which chooses its own networks, at most --calibration), then
--variants random variants (drawn with another seed, never used to calibrate) measured end to
end in --rounds rounds (in a new order each), each variant and a reference network (every group
at half width) in a window of its own side by side with the full network, call by call in turn
(`LookupTable.measure_networks`), as the table measures the networks it keeps. A figure is
expressed at the level the table keeps the full network at (its ratio to the full network in
its window, times the full network's kept figure), as the table's own figures are; a variant's
median over the rounds is compared with its estimate. How far the reference's figure moves over
the rounds, as measured and side by side, is the measurement's own repeatability: it tells
estimation error from measurement noise.

Goal (issue 14): at least 98% of all estimates within ±10% of the measured median, every
architecture at least 95%, Spearman >= 0.98; the naive layer sum beside it.
"""

from __future__ import annotations

import argparse
import json
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
    full = traced.network.at_full_width()
    lut.ensure([*variants, reference], progress="measuring layers")
    kept_full = lut.measured(traced, [full])[0].median  # the level the calibration's figures are at
    raw: list[list[float]] = []  # per round: the reference, then every variant, as measured
    anchored: list[list[float]] = []  # the same at the full network's kept level (its ratio in the window)
    rng = random.Random(0)
    nets = [reference, *variants]
    for _ in range(args.rounds):
        raw.append([0.0] * len(nets))
        anchored.append([0.0] * len(nets))
        for i in rng.sample(range(len(nets)), len(nets)):  # each beside the full network, as the table measures
            full_now, now = lut.measure_networks(traced, [full, nets[i]], passes=1)
            raw[-1][i] = now.median
            anchored[-1][i] = now.median * kept_full / full_now.median
    per_net = np.array(anchored).T  # network x round
    measured = np.median(per_net[1:], axis=1)
    report = FidelityReport(tuple(measured), tuple(lut.estimate(n) for n in variants),
                            tuple(lut.naive_sum(n) for n in variants), lut.unit)
    ref_raw, ref = np.array(raw)[:, 0], per_net[0]
    spread = [float(np.max(r) / np.min(r) - 1) for r in per_net[1:]]
    triples = zip(variants, measured.tolist(), report.calibrated, strict=True)
    points = {"calibration": cal.points, "variants": [[lut.layer_sum(n), m, e] for n, m, e in triples]}
    (args.out / f"fidelity_{name}_{size}px_{threads}t.json").write_text(json.dumps(points))
    png = report.plot(args.out / f"fidelity_{name}_{size}px_{threads}t.png",
                      title=f"{name} {size} px, ORT CPU {threads} thread{'s' * (threads > 1)}")
    return {"name": name, "size": size, "threads": threads, "report": report, "cal": cal,
            "calibration_s": calibration_s, "seconds": time.perf_counter() - started, "png": png,
            "reference_spread": float(ref.max() / ref.min() - 1),
            "raw_spread": float(ref_raw.max() / ref_raw.min() - 1),
            "variant_spread": statistics.median(spread),
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
    parser.add_argument("--tables", type=Path, default=None,
                        help="keep the lookup tables in this folder (default: a temporary one)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore", NoisyMeasurementWarning)
    torch.set_num_threads(1)
    print(f"# lookup-table fidelity on {', '.join(args.models)}; {args.variants} variants each, "
          f"{args.rounds} rounds", flush=True)
    for threads in args.threads:  # spinning=False: more threads than cores
        print(OnnxRuntimeCPU(threads=threads).fingerprint.describe(), flush=True)
    print(flush=True)
    rows, results = [], []
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.tables or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for name in args.models:
            for size in args.sizes:
                for threads in args.threads:
                    r = run_one(name, size, threads, args, folder)
                    results.append(r)
                    naive, cal = r["report"].agreement("naive"), r["report"].agreement()  # type: ignore[attr-defined]
                    row = [name, size, threads, len(r["cal"].points), f"{naive.within10:.0%}",  # type: ignore
                           f"{cal.within10:.0%}", f"{cal.rmspe:.1%}", f"{cal.spearman:.3f}",
                           f"{r['raw_spread']:.1%}", f"{r['reference_spread']:.1%}", f"{r['variant_spread']:.1%}",
                           f"{r['seconds']:.0f}"]
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
          "Spearman", "reference spread, as measured", "reference spread, side by side", "variant spread (median)", "s"]


if __name__ == "__main__":
    main()
