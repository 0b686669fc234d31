"""Proposals on more than one worker: measured at 2 workers here, modelled up to 512.

    python benchmarks/bench_scale.py [--repeats 3] [--steps 40] [--quick]

Measured, side by side in one run (medians of `--repeats`): ProgressiveBarrier on the zoo's
MobileNetV1 (width 0.5, 32 px) pretrained on the bundled digits, a MACs budget of 60% (schedule
10%), `--steps` short-term fine-tuning steps a proposal, no long-term fine-tuning, with
1 worker (in this process), a process pool of 2, and a Dask LocalCluster of 2 worker processes
(1 thread each) with netopt's quiet Dask settings (`netopt.cluster.QUIET`) and with Dask's
defaults, each cluster started for its own runs only. Every run must give the same history
(checked). Printed: wall time, speed-up and efficiency = speed-up / workers. Goal: efficiency
>= 0.85 at 2 workers.

Modelled, from the costs measured here: the wall time of the NetAdapt paper's MobileNetV1
setting (K = 14 proposals an iteration, one per layer; 10,000 short-term steps a proposal;
30 iterations) on 1, 8, 64 and 512 workers. Per iteration: ceil(K / W) rounds of one proposal's
time (the iteration barrier: the next iteration needs this one's winner), plus the serial part
of an iteration measured here (choosing, re-tracing, scattering the new weights), plus the
scheduler's per-task cost measured here for each of the K tasks. Proposals beyond K workers
have nothing to run on: that is where NetAdapt's scaling stops.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch

import netopt
from netopt.cluster import DaskExecutor
from netopt.report import markdown_table
from netopt.zoo.pretrained import pretrained_mnist


def problem() -> netopt.Problem:
    model, data = pretrained_mnist(width=0.5, size=32)
    traced = netopt.trace(model, data.train_x[:1])
    constraint = netopt.MACsConstraint("60%", schedule=netopt.ReductionSchedule("10%"))
    return netopt.Problem(traced, [constraint], netopt.Accuracy(data, netopt.Trainer(lr=0.01)))


def run(executor: Any, steps: int) -> tuple[float, netopt.strategies.Result]:
    started = time.perf_counter()
    result = netopt.ProgressiveBarrier(short_term_steps=steps, long_term_steps=0, progress=False,
                                       executor=executor).run(problem())
    return time.perf_counter() - started, result


def task_overhead(executor: DaskExecutor, tasks: int = 200) -> float:
    """Seconds per task of submitting and collecting a no-op on the cluster (the scheduler's share)."""
    started = time.perf_counter()
    futures = [executor.submit(abs, -k) for k in range(tasks)]
    for f in futures:
        f.result()
    return (time.perf_counter() - started) / tasks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--quick", action="store_true", help="one repeat, 10 steps: a smoke run")
    args = p.parse_args()
    repeats, steps = (1, 10) if args.quick else (args.repeats, args.steps)
    torch.set_num_threads(1)
    problem()  # the pretrained weights cached before anything is timed
    clusters = {"LocalCluster of 2": True, "LocalCluster of 2, Dask's defaults": False}  # name: quiet
    seconds: dict[str, list[float]] = {"1 worker": [], "process pool of 2": [], **{name: [] for name in clusters}}
    evaluating: dict[str, list[float]] = {name: [] for name in seconds}
    reference = None
    with ProcessPoolExecutor(2) as pool:
        run(pool, 1)  # workers started and warm: a pool is started once per search, not per proposal
        for _ in range(repeats):
            for name in seconds:
                # a cluster runs only for its own rows: idle workers' monitors would load the others'
                cluster = DaskExecutor.local(2, quiet=clusters[name]) if name in clusters else None
                try:
                    if cluster:
                        run(cluster, 1)  # started and warm, as the pool is
                    wall, result = run(cluster or (pool if name == "process pool of 2" else None), steps)
                finally:
                    if cluster:
                        cluster.shutdown()
                history = [h.to_dict() for h in result.history]
                if reference is None:
                    reference = history
                    serial = result
                assert history == reference, f"{name} gave another history"
                seconds[name].append(wall)
                evaluating[name].append(result.timings["proposal_evaluation"])
                print(f"-- {name}: {wall:.1f} s, of which {evaluating[name][-1]:.1f} s evaluating proposals",
                      flush=True)
    cluster = DaskExecutor.local(2)
    print(f"Dask dashboard (the cluster the per-task cost is measured on): {cluster.dashboard}", flush=True)
    try:
        per_task = statistics.median(task_overhead(cluster) for _ in range(3))
    finally:
        cluster.shutdown()
    base = statistics.median(seconds["1 worker"])
    base_eval = statistics.median(evaluating["1 worker"])
    rows = []
    for name, times in seconds.items():
        workers = 1 if name == "1 worker" else 2
        wall, ev = statistics.median(times), statistics.median(evaluating[name])
        rows.append([name, str(workers), f"{wall:.1f}", f"{base / wall / workers:.2f}", f"{ev:.1f}",
                     f"{base_eval / ev:.2f}x", f"{base_eval / ev / workers:.2f}",
                     "met" if workers == 1 or base_eval / ev / workers >= 0.85 else "not met"])
    iterations = len(serial.family) - 1
    proposals = len(serial.history)
    t_proposal = serial.timings["training_and_evaluation"] / proposals
    t_serial = (base - serial.timings["training_and_evaluation"]) / iterations
    print(f"\nmachine: 2 cores; one torch thread a worker; {iterations} iterations, {proposals} proposals of {steps} "
          f"steps ({t_proposal:.2f} s each, {t_proposal / steps * 1000:.1f} ms a step); serial part of an iteration "
          f"{t_serial:.2f} s; Dask's cost per task {per_task * 1000:.2f} ms\n")
    print(markdown_table(["proposals evaluated on", "workers", "whole run s", "whole-run efficiency",
                          "proposal evaluation s", "speed-up", "efficiency", "goal >= 0.85"], rows))
    print("\n(proposal evaluation: the wall time the engine waits on a batch of proposals; the whole run adds "
          "each iteration's serial part, which no worker count shortens)")

    k, paper_steps, paper_iterations = 14, 10_000, 30
    t_paper = t_proposal / steps * paper_steps
    model = []
    one = paper_iterations * (k * t_paper + t_serial)
    for w in (1, 8, 64, 512):
        rounds = math.ceil(k / w)
        wall = paper_iterations * (rounds * t_paper + t_serial + (k * per_task if w > 1 else 0.0))
        model.append([str(w), f"{wall / 3600:.1f}", f"{one / wall:.1f}x", f"{one / wall / w:.2f}", str(rounds),
                      f"{min(w, k)} of {w}"])
    print(f"\nModel: the paper's MobileNetV1 setting ({k} proposals an iteration, {paper_steps:,} steps each, "
          f"{paper_iterations} iterations) at this machine's {t_proposal / steps * 1000:.1f} ms a step\n")
    print(markdown_table(["workers", "wall h", "speed-up", "efficiency", "rounds an iteration", "busy workers"],
                         model))
    print(f"\nBeyond {k} workers an iteration has no more proposals to give: NetAdapt's speed-up stops at {k}x "
          "(the iteration barrier); more workers only pay for NetAdaptV2's samples, or for several budgets at once.")


if __name__ == "__main__":
    main()
