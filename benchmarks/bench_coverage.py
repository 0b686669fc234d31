"""Which real models netopt takes in, side by side with Torch-Pruning: the classic timm and
torchvision CNNs and the models deployed at the edge today (timm efficient and hybrid models,
Ultralytics' detectors, segmentation_models_pytorch; issue 31).

For every architecture of `netopt.testing.peers` (random weights, native resolution), in one run:

- netopt: `trace`, then every group halved and `materialize`d; accepted when both work and the
  full-width module equals the original (max abs diff <= 1e-4; of a tuple output, its first
  tensor: Ultralytics' decoded predictions). Reported: the reason when refused, the share of
  parameters removed at half width, the share removable at all (every group at its minimum),
  trace and materialize time (median of `--repeats`).
- Torch-Pruning 1.6.1: `MetaPruner` (DepGraph), L2 magnitude, pruning ratio 0.5, the last
  layer ignored; attention with a `qkv` projection and `num_heads` (timm's) is given its heads
  and loses whole heads (`prune_num_heads=True`, half of them), its `num_heads` / `head_dim`
  updated after, as Torch-Pruning's timm ViT example does, and where that fails it is tried as
  Torch-Pruning prunes by default; accepted when `step()` works and the pruned model still runs
  to the same output shape. Reported: the share of parameters removed,
  and the time of building the pruner + step.

A summary per library of each list follows the table: how many each tool accepts.

    python benchmarks/bench_coverage.py [--list edge|classic|all] [--repeats 3] [--only timm:resnet18 ...]
    python benchmarks/bench_coverage.py --refused   # netopt alone: peers.REFUSED as it stands today

Needs the bench extra (`pip install -c constraints.txt -e '.[bench]'`); `make bench` installs it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import re
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


LISTS = {"classic": peers.ARCHITECTURES, "edge": peers.EDGE, "all": peers.ARCHITECTURES + peers.EDGE}
LIBRARIES = {"timm": "timm", "torchvision": "torchvision", "netopt": "netopt's decoders on timm encoders",
             "ultralytics": "Ultralytics YOLO (nano, from yaml)", "smp": "segmentation_models_pytorch"}


@dataclass
class Outcome:
    accepted: bool
    reason: str = ""
    removed_half: float = 0.0
    removable: float = 0.0
    seconds: tuple[float, ...] = ()


def adapted(output: object) -> Tensor:
    """The output netopt adapts: the tensor, or the first of a tuple (Ultralytics' predictions)."""
    while isinstance(output, tuple | list):
        output = output[0]
    assert isinstance(output, Tensor)
    return output


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
            diff = float((adapted(traced.materialize().eval()(x)) - adapted(model(x))).abs().max())
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


def attention_heads(model: nn.Module) -> dict[nn.Module, int]:
    """{qkv projection: heads} of each attention module written like timm's (`qkv` Linear, `num_heads`)."""
    heads: dict[nn.Module, int] = {}
    for m in model.modules():
        qkv, count = getattr(m, "qkv", None), getattr(m, "num_heads", None)
        if isinstance(qkv, nn.Linear) and isinstance(count, int):
            heads[qkv] = count
    return heads


def fewer_heads(model: nn.Module, heads: dict[nn.Module, int]) -> None:
    """After the step, each attention module's head count and sizes as Torch-Pruning left its qkv."""
    for m in model.modules():
        qkv = getattr(m, "qkv", None)
        if not isinstance(qkv, nn.Linear) or qkv not in heads:
            continue
        count = heads[qkv]
        head_dim = qkv.out_features // (3 * count)
        setattr(m, "num_heads", count)  # noqa: B010 (module attributes mypy sees as Tensor | Module)
        if hasattr(m, "head_dim"):
            setattr(m, "head_dim", head_dim)  # noqa: B010
        if hasattr(m, "attn_dim"):
            setattr(m, "attn_dim", count * head_dim)  # noqa: B010


class TimedOut(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise TimedOut(f"gave no result within {LIMIT_S} s of CPU time")


LIMIT_S = 60
"""Torch-Pruning's dependency graph search does not finish on some models (regnetx_002): the
table says so instead of waiting for ever. The limit is CPU time (ITIMER_PROF), so that other
work on a busy machine does not cut it short."""


def prune_once(model: nn.Module, x: Tensor, by_heads: bool) -> tuple[nn.Module, float]:
    """A copy of the model pruned by Torch-Pruning's MetaPruner at 50% (L2), whole attention heads
    if `by_heads`, and the seconds it took."""
    import torch_pruning as tp

    pruned = copy.deepcopy(model)
    heads = attention_heads(pruned) if by_heads else {}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = tp.pruner.MetaPruner(pruned, x, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=0.5, ignored_layers=[last_layer(pruned)],
                                      num_heads=heads, prune_num_heads=bool(heads), prune_head_dims=not heads,
                                      head_pruning_ratio=0.5 if heads else 0.0)
        pruner.step()
    seconds = time.perf_counter() - t0
    fewer_heads(pruned, pruner.num_heads)
    return pruned, seconds


def run_tp(model: nn.Module, x: Tensor, repeats: int) -> Outcome:
    """Torch-Pruning by whole heads where the model has attention it can give heads for, and,
    where that fails, as it prunes by default: the better of the two counts."""
    outcome = run_tp_as(model, x, repeats, by_heads=bool(attention_heads(model)))
    return outcome if outcome.accepted or not attention_heads(model) else run_tp_as(model, x, repeats, False)


def run_tp_as(model: nn.Module, x: Tensor, repeats: int, by_heads: bool) -> Outcome:
    seconds, before = [], sum(p.numel() for p in model.parameters())
    signal.signal(signal.SIGPROF, _alarm)
    signal.setitimer(signal.ITIMER_PROF, LIMIT_S)
    try:
        for _ in range(repeats):
            pruned, took = prune_once(model, x, by_heads)
            seconds.append(took)
        with torch.no_grad():
            if adapted(pruned.eval()(x)).shape != adapted(model(x)).shape:
                return Outcome(False, "the pruned model's output shape changed")
    except Exception as exc:
        return Outcome(False, f"{type(exc).__name__}: {first_line(exc, 160)}")
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
    after = sum(p.numel() for p in pruned.parameters())
    return Outcome(True, "", 1 - after / before, seconds=(statistics.median(seconds),))


def row(arch: peers.Arch, mine: Outcome, theirs: Outcome) -> list[str]:
    ok = mine.accepted
    return [
        arch.id, arch.family, str(arch.size),
        "yes" if ok else "**no**", f"{mine.removed_half:.0%}" if ok else "", f"{mine.removable:.0%}" if ok else "",
        f"{mine.seconds[0]:.2f}" if ok else "", f"{mine.seconds[1]:.3f}" if ok else "",
        "yes" if theirs.accepted else "**no**", f"{theirs.removed_half:.0%}" if theirs.accepted else "",
        f"{theirs.seconds[0]:.2f}" if theirs.accepted else "", "" if theirs.accepted else theirs.reason[:90],
    ]


def summary(results: list[tuple[peers.Arch, Outcome, Outcome]]) -> str:
    """Per list and library: how many architectures, how many each tool accepts."""
    groups: dict[str, list[tuple[Outcome, Outcome]]] = {}
    for arch, mine, theirs in results:
        which = "edge" if arch in peers.EDGE else "classic"
        groups.setdefault(f"{which}: {LIBRARIES[arch.library]}", []).append((mine, theirs))
    rows = [[name, str(len(pairs)), str(sum(m.accepted for m, _ in pairs)), str(sum(t.accepted for _, t in pairs))]
            for name, pairs in groups.items()]
    return table(["family", "architectures", "netopt", "Torch-Pruning"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", choices=sorted(LISTS), default="all", help="which architectures (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=None, help="architecture ids, e.g. timm:resnet18")
    parser.add_argument("--refused", action="store_true",
                        help="netopt alone, once each: print peers.REFUSED as it stands today, to paste")
    args = parser.parse_args()
    torch.set_num_threads(1)
    archs = [a for a in LISTS[args.list] if not args.only or a.id in args.only]
    if args.refused:
        print_refused(archs)
        return
    results = []
    for arch in archs:
        model, x = built(arch)
        mine, theirs = run_netopt(model, x, args.repeats), run_tp(model, x, args.repeats)
        results.append((arch, mine, theirs))
        print(f"{arch.id}: netopt {'ok' if mine.accepted else mine.reason}; "
              f"Torch-Pruning {'ok' if theirs.accepted else theirs.reason}", file=sys.stderr, flush=True)
    report(results)


def op_named(reason: str) -> str | None:
    """The op a one-line refusal names (what `peers.REFUSED` keeps); None for any other failure."""
    if not reason.startswith("UnsupportedOpError: "):
        return None
    for pattern in (r" calls ('[^']*')", r" reads (?:the tensor )?('[^']*')", r"node '[^']*': (.*?)(?:;|: pass )"):
        if found := re.search(pattern, reason):
            return found.group(1)
    return reason.removeprefix("UnsupportedOpError: ")


def built(arch: peers.Arch) -> tuple[nn.Module, Tensor]:
    """The model and its input; what a library prints while building (Ultralytics' settings
    file) goes to stderr, beside the progress lines, not into the tables."""
    torch.manual_seed(0)
    with contextlib.redirect_stdout(sys.stderr):
        return peers.build(arch), torch.randn(1, 3, arch.size, arch.size)


def print_refused(archs: list[peers.Arch]) -> None:
    """peers.REFUSED's entries for these architectures as netopt treats them now."""
    print("REFUSED: dict[str, str] = {")
    for arch in archs:
        outcome = run_netopt(*built(arch), 1)
        if outcome.accepted:
            continue
        op = op_named(outcome.reason)
        print(f"    {json.dumps(arch.id)}: {json.dumps(op)}," if op is not None else
              f"    # {arch.id} is not refused in one line: {outcome.reason}", flush=True)
    print("}")


def report(results: list[tuple[peers.Arch, Outcome, Outcome]]) -> None:
    print(table(["architecture", "family", "px", "netopt", "params cut at 1/2", "removable", "trace s",
                 "materialize s", "Torch-Pruning", "params cut at 50%", "prune s", "Torch-Pruning's error"],
                [row(*r) for r in results]))
    ours, theirs, n = sum(m.accepted for _, m, _ in results), sum(t.accepted for _, _, t in results), len(results)
    print(f"\n{summary(results)}")
    print(f"\nnetopt accepts {ours} of {n} ({ours / n:.1%}); Torch-Pruning {theirs} of {n} ({theirs / n:.1%}).")
    refusals = [(arch.id, mine.reason) for arch, mine, _ in results if not mine.accepted]
    if refusals:
        print("\nStill refused by netopt:")
        for arch_id, reason in refusals:
            print(f"- {arch_id}: {reason}")


if __name__ == "__main__":
    main()
