"""Proposals on more than one worker: measured at 2 workers here, modelled up to 512.

    python benchmarks/bench_scale.py [--repeats 3] [--steps 40] [--quick] [--only pool netopt local workers]

Measured, side by side in one run (medians of `--repeats`): ProgressiveBarrier on the zoo's
MobileNetV1 (width 0.5, 32 px) pretrained on the bundled digits, a MACs budget of 60% (schedule
10%), `--steps` short-term fine-tuning steps a proposal, no long-term fine-tuning, with
1 worker (in this process), a process pool of 2, and three Dask clusters of 2 worker processes
(1 thread each), each started for its own runs only: netopt's own (`DaskExecutor.local`, quiet
settings, no MALLOC_TRIM_THRESHOLD_), a user's `Client(LocalCluster(n_workers=2,
threads_per_worker=1))` with all of Dask's defaults, and a `Client` of a scheduler and two
`dask worker` processes (nannies, Dask's defaults) the bench starts; the strategy is handed the
Client as a user would (netopt wraps it and fits its workers). Every run must give the same
history (checked). Printed: wall time, whole-run speed-up (goal >= 1.6 at 2 workers, each way),
the proposals' speed-up and efficiency = speed-up / workers, and the serial share of the run
(all but the proposals: measurements, lookup-table units, the long fine-tune, choosing), with
the whole-run speed-up it allows on up to 64 workers (each iteration's proposals in rounds of W).

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
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

import netopt
from netopt.cluster import TRIM, DaskExecutor
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


SERIAL, POOL = "1 worker", "process pool of 2"


@contextmanager
def netopt_local() -> Iterator[Any]:
    """netopt's own cluster: quiet Dask settings, workers started without MALLOC_TRIM_THRESHOLD_."""
    executor = DaskExecutor.local(2)
    try:
        yield executor
    finally:
        executor.shutdown()


@contextmanager
def own_environment() -> Iterator[None]:
    """This process's environment as it was: a LocalCluster's nannies leave TRIM in it, where every
    process started afterwards (the next cluster's workers) would inherit it."""
    before = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(before)


@contextmanager
def user_local() -> Iterator[Any]:
    """A user's cluster as Dask's documentation starts one: a LocalCluster with all of Dask's defaults."""
    import distributed

    with own_environment(), distributed.LocalCluster(n_workers=2, threads_per_worker=1) as cluster, \
            distributed.Client(cluster) as client:
        yield client


@contextmanager
def dask_workers() -> Iterator[Any]:
    """A scheduler and two `dask worker` processes (nannies, Dask's defaults), as on machines of a cluster."""
    import distributed

    env = {k: v for k, v in os.environ.items() if k != TRIM}  # the nannies' own default, not this process's
    with tempfile.TemporaryDirectory() as tmp:
        file = str(Path(tmp) / "scheduler.json")
        started = [_start(["dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address",
                           "127.0.0.1:0", "--scheduler-file", file], env)]
        try:
            _wait_for(Path(file))
            started += [_start(["dask_worker", "--scheduler-file", file, "--nthreads", "1", "--host", "127.0.0.1"],
                               env) for _ in range(2)]
            with distributed.Client(scheduler_file=file, timeout=60) as client:
                client.wait_for_workers(2, timeout=120)
                yield client
        finally:
            for process in reversed(started):
                process.terminate()
                process.wait(60)


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`dask scheduler` / `dask worker` (their modules, with this Python), output discarded."""
    return subprocess.Popen([sys.executable, "-m", f"distributed.cli.{args[0]}", *args[1:]], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no Dask scheduler wrote {path} within {timeout:.0f} s")
        time.sleep(0.2)


CLUSTERS: dict[str, Callable[[], Any]] = {
    "DaskExecutor.local(2)": netopt_local,
    "Client(LocalCluster(2)), Dask's defaults": user_local,
    "Client of dask scheduler + 2 dask worker": dask_workers,
}
"""Each way's cluster, started for its own runs only: idle workers' monitors would load the others'."""
WAYS = dict(zip(("pool", "netopt", "local", "workers"), (POOL, *CLUSTERS), strict=True))
"""`--only`'s names for the ways beside the serial run."""


def one_run(name: str, pool: ProcessPoolExecutor, steps: int) -> tuple[float, netopt.strategies.Result]:
    """One whole run the way `name` says; a cluster started and warm first, as the pool is."""
    if name not in CLUSTERS:
        return run(pool if name == POOL else None, steps)
    with CLUSTERS[name]() as executor:
        run(executor, 1)
        return run(executor, steps)


def serial_share(serial: netopt.strategies.Result, workers: tuple[int, ...] = (1, 2, 4, 8, 16, 64)) -> list[list[str]]:
    """The whole-run speed-up W workers allow: the serial part stays, each iteration's proposals go in rounds of W."""
    total, evaluating = serial.timings["total"], serial.timings["proposal_evaluation"]
    per_iteration = Counter(p.iteration for p in serial.history).values()
    t_proposal, rest = evaluating / len(serial.history), total - evaluating
    rows = []
    for w in workers:
        wall = rest + t_proposal * sum(math.ceil(k / w) for k in per_iteration)
        rows.append([str(w), f"{wall:.1f}", f"{total / wall:.2f}x", f"{total / wall / w:.2f}"])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--quick", action="store_true", help="one repeat, 10 steps: a smoke run")
    p.add_argument("--only", nargs="+", choices=list(WAYS), default=list(WAYS),
                   help="the ways to measure beside the serial run: " + "; ".join(f"{k}: {v}" for k, v in WAYS.items()))
    args = p.parse_args()
    repeats, steps = (1, 10) if args.quick else (args.repeats, args.steps)
    torch.set_num_threads(1)
    problem()  # the pretrained weights cached before anything is timed
    seconds: dict[str, list[float]] = {name: [] for name in (SERIAL, *(WAYS[k] for k in args.only))}
    evaluating: dict[str, list[float]] = {name: [] for name in seconds}
    reference = None
    with ProcessPoolExecutor(2) as pool:
        run(pool, 1)  # workers started and warm: a pool is started once per search, not per proposal
        for _ in range(repeats):
            for name in seconds:
                wall, result = one_run(name, pool, steps)
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
    base = statistics.median(seconds[SERIAL])
    base_eval = statistics.median(evaluating[SERIAL])
    rows = []
    for name, times in seconds.items():
        workers = 1 if name == SERIAL else 2
        wall, ev = statistics.median(times), statistics.median(evaluating[name])
        rows.append([name, str(workers), f"{wall:.1f}", f"{base / wall:.2f}x",
                     "" if workers == 1 else ("met" if base / wall >= 1.6 else "not met"), f"{ev:.1f}",
                     f"{base_eval / ev:.2f}x", f"{base_eval / ev / workers:.2f}"])
    iterations = len(serial.family) - 1
    proposals = len(serial.history)
    t_proposal = serial.timings["training_and_evaluation"] / proposals
    t_serial = (base - serial.timings["training_and_evaluation"]) / iterations
    print(f"\nmachine: 2 cores; one torch thread a worker; {iterations} iterations, {proposals} proposals of {steps} "
          f"steps ({t_proposal:.2f} s each, {t_proposal / steps * 1000:.1f} ms a step); serial part of an iteration "
          f"{t_serial:.2f} s; Dask's cost per task {per_task * 1000:.2f} ms\n")
    print(markdown_table(["proposals evaluated on", "workers", "whole run s", "whole-run speed-up", "goal >= 1.6",
                          "proposal evaluation s", "speed-up", "efficiency"], rows))
    print("\n(proposal evaluation: the wall time the engine waits on a batch of proposals; the whole run adds "
          "each iteration's serial part, which no worker count shortens)")
    share = 1 - serial.timings["proposal_evaluation"] / serial.timings["total"]
    print(f"\nSerial share of the serial run: {share:.1%} (measurements "
          f"{serial.timings['measurement'] / serial.timings['total']:.1%}, the rest choosing, tracing, lookup-table "
          "units, the long fine-tune); the whole-run speed-up it allows, each iteration's proposals in rounds:\n")
    print(markdown_table(["workers", "whole run s", "speed-up", "efficiency"], serial_share(serial)))

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
