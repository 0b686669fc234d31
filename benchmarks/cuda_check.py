"""Fine-tuning on CUDA, measuring on the target: a small adaptation where a GPU exists.

    python benchmarks/cuda_check.py [--steps 40] [--amp]

Where torch sees no CUDA device it says so in one line and exits 0: there is nothing to check
(CI has no GPU; the suite covers the CPU path and the device plumbing). Where it sees one:

1. fine-tuning throughput of the zoo's MobileNetV1 on the bundled digits, the same steps on the
   CPU and on CUDA (with and without mixed precision), side by side;
2. ProgressiveBarrier under a joint latency (ONNX Runtime CPU lookup table) and energy budget,
   with `Trainer(device="cuda")`: every proposal fine-tuned on the GPU, every measurement on the
   CPU backend; the script checks that the GPU was used, that the final network came back to
   the CPU, and that it meets both budgets as estimated and its end-to-end latency was measured.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def throughput(trainer: object, module: torch.nn.Module, data: object, steps: int, repeats: int = 3) -> float:
    """Median optimizer steps a second over `repeats` runs of `steps` (after one warm-up run)."""
    times = []
    for k in range(repeats + 1):
        m = copy.deepcopy(module)
        started = time.perf_counter()
        trainer.train(m, data.train_x, data.train_y, steps, seed=k)  # type: ignore[attr-defined]
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if k:
            times.append(time.perf_counter() - started)
    return steps / statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40, help="short-term steps a proposal (default 40)")
    p.add_argument("--amp", action="store_true", help="mixed precision in the adaptation too")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print(f"no CUDA device here (torch {torch.__version__}, built with CUDA {torch.version.cuda}): nothing to "
              "check; run this where a GPU is")
        return 0

    import netopt
    from netopt.measure import EnergyModel, OnnxRuntimeCPU
    from netopt.zoo.pretrained import pretrained_mnist

    print(f"CUDA: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    torch.set_num_threads(1)
    model, data = pretrained_mnist(width=0.5, size=32)
    print("\nfine-tuning throughput, MobileNetV1 0.5 at 32 px, batch 64 (median of 3):")
    rows = [(name, throughput(netopt.Trainer(device=device, amp=amp), model, data, 100))
            for name, device, amp in (("cpu, 1 thread", "cpu", False), ("cuda", "cuda", False),
                                      ("cuda + amp", "cuda", True))]
    for name, rate in rows:
        print(f"  {name:14s} {rate:8.1f} steps/s  ({rate / rows[0][1]:.1f}x the CPU)")

    traced = netopt.trace(model, data.train_x[:1])
    with tempfile.TemporaryDirectory() as folder:
        lut = netopt.LookupTable.open(Path(folder) / "lut.sqlite", OnnxRuntimeCPU(threads=1))
        lut.calibrate(traced)
        problem = netopt.Problem(traced, [
            netopt.LatencyConstraint("70%", lut, netopt.ReductionSchedule("8%")),
            netopt.EnergyConstraint("70%", EnergyModel(), netopt.ReductionSchedule("8%")),
        ], netopt.Accuracy(data, netopt.Trainer(device="cuda", amp=args.amp)))
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        result = netopt.ProgressiveBarrier(short_term_steps=args.steps, long_term_steps=5 * args.steps).run(
            problem, run_dir=Path(folder) / "run")
        seconds = time.perf_counter() - started
    final = result.final
    checks = {
        "the GPU trained (peak CUDA memory > 0)": torch.cuda.max_memory_allocated() > 0,
        "the final network is back on the CPU": all(q.device.type == "cpu" for q in final.module.parameters()),
        "both budgets met (estimated)": all(b.met(final.resources[b.resource]) for b in problem.bind()),
        "end-to-end latency measured on ONNX Runtime CPU": "latency" in final.measured,
    }
    print(f"\nadaptation on CUDA: {len(result.family) - 1} iterations, {seconds:.0f} s; holdout "
          f"{result.family[0].accuracy:.3f} -> {final.accuracy:.3f}, test {final.test_accuracy:.3f}; latency "
          f"{final.resources['latency']:.4g} ms estimated, "
          f"{final.measured.get('latency', float('nan')):.4g} ms measured")
    for what, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
