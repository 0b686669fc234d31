"""Which real timm / torchvision CNNs netopt takes in, side by side with Torch-Pruning.

For every architecture of `netopt.testing.peers` (random weights, native resolution), in one run:

- netopt: `trace`, then every group halved and `materialize`d; accepted when both work and the
  full-width module equals the original (max abs diff <= 1e-4). Reported: the reason when
  refused, the share of parameters removed at half width, the share removable at all (every
  group at its minimum), trace and materialize time (median of `--repeats`).
- Torch-Pruning 1.6.1: `MetaPruner` (DepGraph), L2 magnitude, pruning ratio 0.5, the last
  layer ignored; accepted when `step()` works and the pruned model still runs to the same output
  shape. Reported: the share of parameters removed, and the time of building the pruner + step.

    python benchmarks/bench_coverage.py [--repeats 3] [--only timm:resnet18 ...]

Needs the bench extra (`pip install -c constraints.txt -e '.[bench]'`); `make bench` installs it.
"""

from __future__ import annotations

import argparse
import copy
import functools
import signal
import statistics
import sys
import time
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import netopt
from netopt.errors import first_line
from netopt.ir import params
from netopt.report.tables import markdown_table
from netopt.testing import peers

table = functools.partial(markdown_table, pad=True)  # columns aligned for reading as text


@dataclass
class Outcome:
    accepted: bool
    reason: str = ""
    removed_half: float = 0.0
    removable: float = 0.0
    seconds: tuple[float, ...] = ()


def run_netopt(model: nn.Module, x: Tensor, repeats: int) -> Outcome:
    trace_s, mat_s = [], []
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            traced = netopt.trace(model, x)
            t1 = time.perf_counter()
            small = peers.halved(traced.network)
            module = traced.materialize(small)
            t2 = time.perf_counter()
            trace_s.append(t1 - t0)
            mat_s.append(t2 - t1)
        with torch.no_grad():
            diff = float((traced.materialize().eval()(x) - model(x)).abs().max())
            module.eval()(x)
    except Exception as exc:
        return Outcome(False, f"{type(exc).__name__}: {first_line(exc, 160)}")
    if diff > 1e-4:
        return Outcome(False, f"full width differs from the original by {diff:.1e}")
    net = traced.network
    floor = net.with_widths({g.id: g.min_width for g in net.groups})
    return Outcome(True, "", 1 - params(small) / params(net), 1 - params(floor) / params(net),
                   (statistics.median(trace_s), statistics.median(mat_s)))


def last_layer(model: nn.Module) -> nn.Module:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)][-1]


class TimedOut(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise TimedOut(f"gave no result within {LIMIT_S} s")


LIMIT_S = 60
"""Torch-Pruning's dependency graph search does not finish on some models (regnetx_002): the
table says so instead of waiting for ever."""


def run_tp(model: nn.Module, x: Tensor, repeats: int) -> Outcome:
    import torch_pruning as tp

    seconds, before = [], sum(p.numel() for p in model.parameters())
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(LIMIT_S)
    try:
        for _ in range(repeats):
            pruned = copy.deepcopy(model)
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pruner = tp.pruner.MetaPruner(pruned, x, importance=tp.importance.MagnitudeImportance(p=2),
                                              pruning_ratio=0.5, ignored_layers=[last_layer(pruned)])
                pruner.step()
            seconds.append(time.perf_counter() - t0)
        with torch.no_grad():
            if pruned(x).shape != model(x).shape:
                return Outcome(False, "the pruned model's output shape changed")
    except Exception as exc:
        return Outcome(False, f"{type(exc).__name__}: {first_line(exc, 160)}")
    finally:
        signal.alarm(0)
    after = sum(p.numel() for p in pruned.parameters())
    return Outcome(True, "", 1 - after / before, seconds=(statistics.median(seconds),))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=None, help="architecture ids, e.g. timm:resnet18")
    args = parser.parse_args()
    torch.set_num_threads(1)
    archs = [a for a in peers.ARCHITECTURES if not args.only or a.id in args.only]
    rows, ours, theirs, refusals = [], 0, 0, []
    for arch in archs:
        torch.manual_seed(0)
        model, x = peers.build(arch), torch.randn(1, 3, arch.size, arch.size)
        mine, tp_ = run_netopt(model, x, args.repeats), run_tp(model, x, args.repeats)
        ours, theirs = ours + mine.accepted, theirs + tp_.accepted
        if not mine.accepted:
            refusals.append((arch.id, mine.reason))
        rows.append([
            arch.id, arch.family, str(arch.size),
            "yes" if mine.accepted else "**no**", f"{mine.removed_half:.0%}" if mine.accepted else "",
            f"{mine.removable:.0%}" if mine.accepted else "",
            f"{mine.seconds[0]:.2f}" if mine.accepted else "", f"{mine.seconds[1]:.3f}" if mine.accepted else "",
            "yes" if tp_.accepted else "**no**", f"{tp_.removed_half:.0%}" if tp_.accepted else "",
            f"{tp_.seconds[0]:.2f}" if tp_.accepted else "", "" if tp_.accepted else tp_.reason[:90],
        ])
        print(f"{arch.id}: netopt {'ok' if mine.accepted else mine.reason}; "
              f"Torch-Pruning {'ok' if tp_.accepted else tp_.reason}", file=sys.stderr, flush=True)
    print(table(["architecture", "family", "px", "netopt", "params cut at 1/2", "removable", "trace s",
                 "materialize s", "Torch-Pruning", "params cut at 50%", "prune s", "Torch-Pruning's error"], rows))
    print(f"\nnetopt accepts {ours} of {len(archs)} ({ours / len(archs):.1%}); "
          f"Torch-Pruning {theirs} of {len(archs)} ({theirs / len(archs):.1%}).")
    if refusals:
        print("\nStill refused by netopt:")
        for arch_id, reason in refusals:
            print(f"- {arch_id}: {reason}")


if __name__ == "__main__":
    main()
