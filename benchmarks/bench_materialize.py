"""Benchmark: netopt trace + materialize vs Torch-Pruning 1.6.1, halving every channel group.

Goal: netopt materializes in at most half of Torch-Pruning's time
(netopt `materialize` / Torch-Pruning `pruner.step()` <= 0.50: the median of the ratios
taken within each repetition, which resists drift in machine load better than a ratio of medians).

Model: the zoo's MobileNetV2 (width 1.0, 224 px, 1000 classes), random init with the
BatchNorm affine parameters and running statistics randomized so that L2 scores are not
degenerate. Both tools keep filters by L2 magnitude and cut every prunable group to half
(netopt: the largest valid width <= full // 2; Torch-Pruning: pruning_ratio=0.5, round_to=8,
the classifier's Linear ignored).

Protocol: warm-up runs first, then `--repeats` timed repetitions. Each repetition runs both
tools, interleaved (the order alternates every repetition), each on a fresh deepcopy of the
model; the copy is not timed. Single-threaded torch, garbage collector off while timing.
Times are median, min and interquartile range (IQR) in milliseconds.

Run:  .venv/bin/python benchmarks/bench_materialize.py [--repeats N] [--warmup N]
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version

import torch
import torch_pruning as tp
from torch import Tensor, nn

import netopt
from netopt.ir import Network, macs, params
from netopt.report.tables import markdown_table
from netopt.zoo import MobileNetV2

table = functools.partial(markdown_table, pad=True)  # columns aligned for reading as text

GOAL_RATIO = 0.5
NETOPT_PHASES = ("trace", "materialize", "trace+materialize")
TP_PHASES = ("build pruner (DepGraph)", "pruner.step()", "build+step")


@dataclass
class Timings:
    """Seconds per repetition, by phase name."""

    runs: dict[str, list[float]] = field(default_factory=dict)

    def add(self, sample: dict[str, float]) -> None:
        for phase, seconds in sample.items():
            self.runs.setdefault(phase, []).append(seconds)


@dataclass(frozen=True)
class Stats:
    median: float
    minimum: float
    iqr: float

    @classmethod
    def of(cls, xs: Sequence[float]) -> Stats:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
        return cls(statistics.median(xs), min(xs), q3 - q1)


# --- model ------------------------------------------------------------------------------------


def make_model(seed: int) -> nn.Module:
    """MobileNetV2 1.0 in eval mode, BatchNorm parameters and statistics randomized."""
    torch.manual_seed(seed)
    model = MobileNetV2(width=1.0, num_classes=1000)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None:
                m.weight.uniform_(0.2, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def half_network(net: Network) -> Network:
    """Every prunable group at the largest valid width not above half its full width."""
    return net.scaled(0.5)


def final_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1]


# --- the two pipelines -------------------------------------------------------------------------


@contextmanager
def quiet_gc() -> Iterator[None]:
    """Collect garbage up front, keep the collector off while timing."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def run_netopt(model: nn.Module, x: Tensor) -> tuple[dict[str, float], nn.Module]:
    """Trace, choose half widths, materialize; end-to-end includes choosing the widths."""
    with quiet_gc():
        t0 = time.perf_counter()
        traced = netopt.trace(model, x)
        t1 = time.perf_counter()
        half = half_network(traced.network)
        t2 = time.perf_counter()
        module = traced.materialize(half)
        t3 = time.perf_counter()
    return dict(zip(NETOPT_PHASES, (t1 - t0, t3 - t2, t3 - t0), strict=True)), module


def run_tp(model: nn.Module, x: Tensor) -> tuple[dict[str, float], nn.Module]:
    """Build Torch-Pruning's L2-magnitude MetaPruner (DepGraph inside), then prune in place.

    In 1.6.1 `MetaPruner` and `MagnitudePruner` are both deprecated aliases of `BasePruner`.
    """
    with quiet_gc():
        t0 = time.perf_counter()
        pruner = tp.pruner.MetaPruner(
            model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
            ignored_layers=[final_linear(model)], round_to=8,
        )
        t1 = time.perf_counter()
        pruner.step()
        t2 = time.perf_counter()
    return dict(zip(TP_PHASES, (t1 - t0, t2 - t1, t2 - t0), strict=True)), model


Runner = Callable[[nn.Module, Tensor], tuple[dict[str, float], nn.Module]]


def repetition(base: nn.Module, x: Tensor, netopt_first: bool) -> tuple[dict[str, float], dict[str, float]]:
    """One interleaved repetition: both tools, each on a fresh (untimed) deepcopy."""
    order: list[Runner] = [run_netopt, run_tp] if netopt_first else [run_tp, run_netopt]
    samples = {}
    for runner in order:
        model = copy.deepcopy(base)
        samples[runner], _ = runner(model, x)
    return samples[run_netopt], samples[run_tp]


def measure(base: nn.Module, x: Tensor, repeats: int, warmup: int) -> tuple[Timings, Timings]:
    for i in range(warmup):
        repetition(base, x, netopt_first=i % 2 == 0)
    ours, theirs = Timings(), Timings()
    for i in range(repeats):
        a, b = repetition(base, x, netopt_first=i % 2 == 0)
        ours.add(a)
        theirs.add(b)
    return ours, theirs


# --- sanity checks -----------------------------------------------------------------------------


def hook_macs(model: nn.Module, x: Tensor) -> int:
    """Conv and Linear multiply-accumulates for one input, counted with forward hooks."""
    total = 0

    def hook(m: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total += out[0].numel() * (m.in_channels // m.groups) * kh * kw
        elif isinstance(m, nn.Linear):
            total += out[0].numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return total


def forward_check(model: nn.Module, x: Tensor) -> str:
    with torch.no_grad():
        out = model.eval()(x)
    ok = out.shape == (x.shape[0], 1000) and bool(torch.isfinite(out).all())
    return f"{'ok' if ok else 'FAILED'} {tuple(out.shape)}"


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def sanity_rows(base: nn.Module, x: Tensor) -> list[tuple[str, str, str, str, str]]:
    """(model, params, IR MACs, hook MACs, forward) for the original and both pruned models."""
    traced = netopt.trace(copy.deepcopy(base), x)
    half = half_network(traced.network)
    _, tp_model = run_tp(copy.deepcopy(base), x)
    ours = traced.materialize(half)
    return [
        ("original", f"{n_params(base):,}", f"{macs(traced.network):,}", f"{hook_macs(base, x):,}",
         forward_check(base, x)),
        ("netopt (half)", f"{n_params(ours):,} (IR {params(half):,})", f"{macs(half):,}",
         f"{hook_macs(ours, x):,}", forward_check(ours, x)),
        ("Torch-Pruning (half)", f"{n_params(tp_model):,}", "-", f"{hook_macs(tp_model, x):,}",
         forward_check(tp_model, x)),
    ]


def full_width_error(base: nn.Module, x: Tensor) -> float:
    """Max |output difference| between the original and netopt's full-width materialize."""
    traced = netopt.trace(copy.deepcopy(base), x)
    full = traced.materialize(traced.network)
    with torch.no_grad():
        return float((full(x) - base(x)).abs().max())


# --- report ------------------------------------------------------------------------------------


def timing_rows(tool: str, timings: Timings) -> list[list[str]]:
    rows = []
    for phase, xs in timings.runs.items():
        s = Stats.of(xs)
        rows.append([tool, phase, f"{s.median * 1e3:.1f}", f"{s.minimum * 1e3:.1f}", f"{s.iqr * 1e3:.1f}"])
    return rows


def ratio_row(label: str, ours: list[float], theirs: list[float]) -> list[str]:
    """Ratio of medians, and median / min / max of the per-repetition (paired) ratios."""
    paired = [a / b for a, b in zip(ours, theirs, strict=True)]
    of_medians = statistics.median(ours) / statistics.median(theirs)
    return [label, f"{of_medians:.2f}", f"{paired_median(ours, theirs):.2f}",
            f"{min(paired):.2f} .. {max(paired):.2f}"]


def paired_median(ours: list[float], theirs: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(ours, theirs, strict=True))


def noisy_phases(*timings: Timings, limit: float = 0.1) -> list[str]:
    """Phases whose IQR exceeds `limit` of their median (a busy machine)."""
    return [p for t in timings for p, xs in t.runs.items() if Stats.of(xs).iqr > limit * Stats.of(xs).median]


def report(ours: Timings, theirs: Timings) -> float:
    """Print the timing and ratio tables; returns the median paired materialize/step ratio."""
    print(table(["tool", "phase", "median ms", "min ms", "IQR ms"],
                timing_rows("netopt", ours) + timing_rows("Torch-Pruning", theirs)))
    step = ours.runs["materialize"], theirs.runs["pruner.step()"]
    e2e = ours.runs["trace+materialize"], theirs.runs["build+step"]
    print()
    print(table(["netopt / Torch-Pruning", "ratio of medians", "median paired ratio", "paired range"],
                [ratio_row("(a) materialize / step()", *step), ratio_row("(b) end-to-end", *e2e)]))
    noisy = noisy_phases(ours, theirs)
    if noisy:
        print(f"\nWARNING: noisy timings (IQR > 10% of median) for {noisy}; the machine may be busy.")
    return paired_median(*step)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed repetitions, >= 5 (default 7)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up repetitions, >= 1 (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random model (default 0)")
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")
    if args.warmup < 1:
        parser.error("--warmup must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    base, x = make_model(args.seed), torch.randn(1, 3, 224, 224)
    print("# netopt vs Torch-Pruning: halve every channel group of MobileNetV2 1.0 (224 px, 1000 classes)")
    print(f"Goal: netopt materializes in at most half of Torch-Pruning's time (ratio <= {GOAL_RATIO:.2f}).")
    print(f"torch {torch.__version__}, torch-pruning {version('torch-pruning')}, threads 1, "
          f"warm-up {args.warmup}, repeats {args.repeats} (interleaved, fresh deepcopy each)\n")
    ours, theirs = measure(base, x, args.repeats, args.warmup)
    ratio = report(ours, theirs)
    print()
    print(table(["model", "params", "MACs (IR)", "MACs (hooks)", "forward"], sanity_rows(base, x)))
    print(f"\nmax |netopt full-width materialize - original| = {full_width_error(base, x):.3g}")
    verdict = "MET" if ratio <= GOAL_RATIO else "NOT MET"
    print(f"Goal {verdict}: materialize / step() = {ratio:.2f}, median paired ratio (target <= {GOAL_RATIO:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
