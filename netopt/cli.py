"""`netopt ...` commands: thin over the library. Errors become one line and exit code 2."""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

from netopt.errors import ConfigError, NetoptError

__all__ = ["main"]

ZOO = ("mobilenet_v1", "mobilenet_v2", "resnet8", "resnet20")


def _model(name: str, width: float, classes: int) -> object:
    from netopt import zoo

    makers: dict[str, Callable[[], object]] = {
        "mobilenet_v1": lambda: zoo.MobileNetV1(width, num_classes=classes),
        "mobilenet_v2": lambda: zoo.MobileNetV2(width, num_classes=classes),
        "resnet8": lambda: zoo.resnet_small(8, num_classes=classes),
        "resnet20": lambda: zoo.resnet_small(20, num_classes=classes),
    }
    return makers[name]()


def describe(args: argparse.Namespace) -> int:
    """Trace a zoo model and print its channel groups and analytic costs."""
    import torch

    import netopt
    from netopt.ir import activation_bytes, macs, params

    model = _model(args.model, args.width, args.classes)
    x = torch.randn(1, 3, args.resolution, args.resolution)
    start = time.perf_counter()
    traced = netopt.trace(model.eval(), x)  # type: ignore[attr-defined]
    net = traced.network
    print(f"{args.model} (width {args.width}, {args.resolution} px): {len(net.nodes)} nodes, "
          f"{len(net.groups)} prunable channel groups, traced in {time.perf_counter() - start:.2f} s\n")
    print(f"{'group':<24} {'width':>6} {'min':>5} {'step':>5} {'producers':>10} {'consumers':>10}")
    for g in net.groups:
        print(f"{g.id:<24} {g.width:>6} {g.min_width:>5} {g.step:>5} {len(g.producers):>10} {len(g.consumers):>10}")
    half = net.scaled(0.5)
    module = traced.materialize(half)
    print(f"\n{'network':<16} {'MACs':>14} {'params':>12} {'activations':>14}")
    for label, n in (("full width", net), ("every group /2", half)):
        print(f"{label:<16} {macs(n):>14,} {params(n):>12,} {activation_bytes(n):>12,} B")
    real = sum(p.numel() for p in module.parameters())
    print(f"\nmaterialized halved module: {real:,} parameters (IR says {params(half):,}), "
          f"output {tuple(module(x).shape)}")
    if args.json:
        from pathlib import Path

        from netopt.runs.files import write_atomic

        try:
            write_atomic(Path(args.json), half.to_json(indent=1).encode())
        except OSError as exc:
            raise ConfigError(f"--json {args.json}: cannot write there ({exc.strerror}); give a file path in a "
                              "writable folder") from None
        print(f"halved network IR written to {args.json}")
    return 0


def lut_command(args: argparse.Namespace) -> int:
    """Build a lookup table for a zoo model, or report how far its estimates can be trusted."""
    import torch

    import netopt
    from netopt.lut import LookupTable, fidelity
    from netopt.measure.precision import REPRESENTATIVE_BATCHES, representative_for
    from netopt.measure.registry import BACKENDS

    model = _model(args.model, args.width, args.classes)
    example = torch.randn(1, 3, args.resolution, args.resolution)
    traced = netopt.trace(model.eval(), example)  # type: ignore[attr-defined]
    entry = BACKENDS[args.backend]
    if args.precision not in entry.precisions:
        raise ConfigError(f"--backend {args.backend} measures at {', '.join(entry.precisions)}, not "
                          f"--precision {args.precision}; choose another precision or backend")
    quantized = {} if args.precision == "fp32" else {  # a zoo model of random weights: seeded normal inputs
        "precision": args.precision, "representative": representative_for(None, example, REPRESENTATIVE_BATCHES)}
    lut = LookupTable.open(args.lut, entry.make(threads=args.threads, **quantized))
    if args.action == "build":
        new = lut.prebuild(traced.network, points_per_group=args.points)
        print(f"{args.lut}: {new} new entries, {lut.store.count()} in all")
        return 0
    cal = lut.calibrate(traced, max_networks=args.calibration)
    ratios = ", ".join(f"{r:.2f}" for r in cal.knots[1])
    weights = f"; weights fetched anew priced at {cal.plane[2]:.3g} {lut.unit} a million" if cal.weighted else ""
    weights += f"; traffic priced at {cal.coefficients[3]:.3g} {lut.unit} a million" if cal.trafficked else ""
    print(f"calibration on {len(cal.points)} networks (at most {args.calibration}): measured / layer sum = {ratios} "
          f"(smallest to largest){weights}")
    report = fidelity(lut, traced, variants=args.variants)
    print(report.table())
    if args.plot:
        print(f"plot written to {report.plot(args.plot, title=f'{args.model}, {lut.backend.fingerprint.describe()}')}")
    return 0


@contextmanager
def _executor(args: argparse.Namespace) -> Iterator[Any]:
    """The executor --dask or --workers asks for (None: proposals in this process), closed at the end."""
    if args.dask:
        from netopt.cluster import DaskExecutor

        executor: Any = DaskExecutor.connect(args.dask, timeout=args.dask_timeout)
        workers = len(executor.client.scheduler_info().get("workers", {}))
        print(f"Dask scheduler {args.dask}: {workers} worker(s); dashboard {executor.dashboard or 'not served'}",
              file=sys.stderr, flush=True)
    elif args.workers:
        from concurrent.futures import ProcessPoolExecutor

        executor = ProcessPoolExecutor(args.workers)
    else:
        executor = None
    try:
        yield executor
    finally:
        if executor is not None:
            executor.shutdown()


def _executor_options(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--dask", metavar="ADDRESS", help="evaluate proposals on the Dask cluster whose scheduler is "
                       "at ADDRESS (tcp://host:8786); its workers need netopt installed")
    where.add_argument("--workers", type=_ranged(int, 1, 4096), help="evaluate proposals in N local processes")
    p.add_argument("--dask-timeout", type=_ranged(float, 0.1, 3600), default=10.0,
                   help="seconds to wait for the scheduler to answer (default 10)")


def adapt_command(args: argparse.Namespace) -> int:
    """Adapt the network the config describes; resume with --resume."""
    from netopt.app.config import AdaptConfig, load_config
    from netopt.app.jobs import adapt_job
    from netopt.app.reports import summary

    config = load_config(args.config) if args.config else AdaptConfig()
    with _executor(args) as executor:
        result = adapt_job(config, resume=args.resume, executor=executor)
    print(summary(result))
    print(f"\nrun directory: {config.run_dir} (plots, family; final/: model.onnx, model.pt2, weights.pt + "
          "network.json)")
    return 0


def compare_command(args: argparse.Namespace) -> int:
    """Compare strategies on one problem, budget by budget."""
    from netopt.app.config import CompareConfig, load_config
    from netopt.app.jobs import compare_job

    config = load_config(args.config, CompareConfig) if args.config else CompareConfig()
    with _executor(args) as executor:
        comparison = compare_job(config, resume=args.resume, executor=executor)  # type: ignore[arg-type]
    print(comparison.report())
    print(f"\noutput: {config.run_dir} (comparison.md, comparison.json, frontier.png, one run directory per strategy)")
    return 0


def agent_command(args: argparse.Namespace) -> int:
    """Serve measurements on this device until interrupted."""
    from pathlib import Path

    from netopt.measure.agent import serve

    try:
        token = Path(args.token_file).read_text().strip() if args.token_file else args.token
    except OSError as exc:
        raise ConfigError(f"--token-file {args.token_file}: cannot be read ({exc.strerror}); give the file that "
                          "holds the token") from None
    if token is not None and not token:
        raise ConfigError("the token is empty (--token '' or an empty --token-file); give one, or neither to have "
                          "the agent generate and print one")
    try:
        serve(args.host, args.port, token, int(args.max_mb * 2**20), allow_remote=args.allow_remote)
    except KeyboardInterrupt:
        return 0
    return 0


def _ranged(kind: type[int] | type[float], low: float, high: float) -> Callable[[str], Any]:
    """An argparse type: a finite number of `kind` in [low, high], else one line saying so."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} must lie in [{low:g}, {high:g}]")
        return value
    return parse


def _model_options(p: argparse.ArgumentParser, model_nargs: str | None) -> None:
    p.add_argument("model", nargs=model_nargs, default="mobilenet_v1", choices=ZOO)
    p.add_argument("--width", type=_ranged(float, 0.01, 4), default=0.5, help="width multiplier (default 0.5)")
    p.add_argument("--resolution", type=_ranged(int, 8, 2048), default=128, help="input size in px (default 128)")
    p.add_argument("--classes", type=_ranged(int, 1, 100_000), default=10, help="output classes (default 10)")


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line, like every other netopt error (argparse would add the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"netopt: error: {message}; see {self.prog} --help\n")


def _parser() -> argparse.ArgumentParser:
    from netopt.measure.precision import PRECISIONS
    from netopt.measure.registry import latency_backends

    parser = _Parser(prog="netopt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("describe", help="trace a zoo model; print its groups and costs")
    _model_options(p, None)
    p.add_argument("--json", help="write the halved network's IR to this file")
    p.set_defaults(run=describe)
    p = sub.add_parser("demo", help="the main job on bundled defaults (netopt adapt with the demo's config)")
    p.add_argument("--resume", action="store_true", help="continue the run in runs/demo")
    p.set_defaults(run=adapt_command, config=None)
    p = sub.add_parser("lut", help="build a lookup table, or report its fidelity")
    p.add_argument("action", choices=("build", "fidelity"))
    _model_options(p, "?")
    p.add_argument("--lut", default="lut.sqlite", help="the lookup table file (default lut.sqlite)")
    p.add_argument("--backend", choices=latency_backends(), default="onnxruntime",
                   help="the runtime the table measures on (default onnxruntime)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32", help="fp32 (default) or int8")
    p.add_argument("--threads", type=_ranged(int, 1, 1024), default=1, help="the runtime's threads (default 1)")
    p.add_argument("--points", type=_ranged(int, 1, 1000), default=3,
                   help="build: widths per group on the grid (default 3)")
    p.add_argument("--variants", type=_ranged(int, 2, 10_000), default=20,
                   help="fidelity: random variants (default 20)")
    p.add_argument("--calibration", type=_ranged(int, 2, 1000), default=16,
                   help="fidelity: whole networks calibration measures at most (default 16)")
    p.add_argument("--plot", help="fidelity: write the scatter plot (PNG) here")
    p.set_defaults(run=lut_command)
    p = sub.add_parser("adapt", help="adapt a network to its budgets (NetAdapt), as a TOML config says")
    p.add_argument("config", nargs="?", help="TOML or YAML config (default: the demo's settings)")
    p.add_argument("--resume", action="store_true", help="continue the run in the config's run_dir")
    _executor_options(p)
    p.set_defaults(run=adapt_command)
    p = sub.add_parser("compare", help="run several strategies on one problem and compare them fairly")
    p.add_argument("config", nargs="?", help="TOML or YAML config with a [compare] table (default: built-in)")
    p.add_argument("--resume", action="store_true", help="skip finished strategies, resume unfinished ones")
    _executor_options(p)
    p.set_defaults(run=compare_command)
    p = sub.add_parser("agent", help="serve ONNX Runtime measurements over HTTP (run it on the target device)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    p.add_argument("--port", type=_ranged(int, 0, 65535), default=8470, help="0: any free port (default 8470)")
    p.add_argument("--token", help="the bearer token clients must send (default: generate and print one)")
    p.add_argument("--token-file", help="read the token from this file instead")
    p.add_argument("--max-mb", type=float, default=64, help="largest model accepted, in MiB (default 64)")
    p.add_argument("--allow-remote", action="store_true", help="allow listening on a non-loopback address")
    p.set_defaults(run=agent_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not sys.stderr.isatty():  # no progress bars there: a line an iteration instead
        logging.basicConfig(level=logging.WARNING, format="netopt: %(message)s", stream=sys.stderr)
        logging.getLogger("netopt").setLevel(logging.INFO)  # netopt's own lines; libraries' at WARNING
    try:
        return int(args.run(args))
    except NetoptError as exc:
        print(f"netopt: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
