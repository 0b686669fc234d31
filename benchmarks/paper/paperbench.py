"""What the paper benchmarks share: the problem, resumable adaptation runs, long-term fine-tuning
and end-to-end measurement, all kept under one output folder so that any part can stop and rerun.

The problem is the demo's: the zoo's MobileNetV1 (width 0.5, 32 px) pretrained on the bundled
5,000 MNIST digits, its latency estimated by an ONNX Runtime lookup table (1 thread) and checked
end to end. Every number is measured here; nothing is copied from the paper into a netopt column.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from netopt.app.config import AdaptConfig, ConstraintConfig, LutConfig, ScheduleConfig, TrainingConfig
from netopt.app.factory import build_problem
from netopt.ir import Network
from netopt.lut import LookupTable
from netopt.runs.files import write_json
from netopt.strategies import Problem, ProgressiveBarrier, Result

MODELS = ("mobilenet_v1", "mobilenet_v2")
V2_PRETRAIN_STEPS = 1500


@dataclass(frozen=True)
class Scale:
    """The CPU-scale settings: the paper's protocol, shrunk to minutes on 2 cores."""

    short_term_steps: int = 40
    long_term_steps: int = 300
    initial: str = "6%"
    """The paper's 0.5 ms first reduction of the small MobileNetV1's latency, as a share of this start."""
    decay: float = 0.96
    budget: str = "50%"
    range_budget: str = "30%"
    """The lowest latency of the long run that traces NetAdapt's whole trade-off curve."""
    macs_budget: str = "30%"
    multipliers: tuple[float, ...] = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25)
    long_term_curve: tuple[int, ...] = (0, 100, 300, 1000)
    variants: int = 30
    calibration: int = 16
    curve_points: int = 6
    """Members of the long run long-term fine-tuned for the trade-off curve."""


QUICK = Scale(short_term_steps=4, long_term_steps=10, initial="15%", budget="70%", range_budget="55%",
              macs_budget="50%", multipliers=(1.0, 0.5), long_term_curve=(0, 10), variants=5, calibration=4,
              curve_points=2)


def say(line: str) -> None:
    print(f"-- {line}", flush=True)


def standard_error(accuracy: float, n: int) -> float:
    """Standard error of an accuracy measured on `n` test examples (binomial)."""
    return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / n)


def _long_term(objective: Any, module: nn.Module, steps: int, seed: int) -> dict[str, float]:
    """On a worker: long-term fine-tune a copy for `steps`, then its holdout and test accuracy."""
    import torch

    torch.set_num_threads(1)
    module = copy.deepcopy(module)
    holdout = objective.long_term(module, steps, seed).score
    return {"steps": steps, "holdout": float(holdout), "test": float(objective.test(module))}


class Bench:
    """The runs and figures of every part, cached under `out` (see the README for the layout)."""

    def __init__(self, out: Path, scale: Scale, workers: int = 2, seed: int = 0, model: str = "mobilenet_v1") -> None:
        if model not in MODELS:
            raise ValueError(f"model {model!r}: give one of {', '.join(MODELS)}")
        self.out, self.scale, self.workers, self.seed, self.model = Path(out), scale, workers, seed, model
        self._problems: dict[str, Problem] = {}
        self._pool: Executor | None = None

    def on(self, model: str, **scale: Any) -> Bench:
        """The same bench for another of `MODELS` (with `scale` changed), in its own folder under this
        one, on the same pool."""
        other = Bench(self.out / model, replace(self.scale, **scale), self.workers, self.seed, model)
        other._pool = self._pool
        return other

    # --- set-up ----------------------------------------------------------------------------

    @contextmanager
    def pool(self) -> Iterator[Bench]:
        """A process pool of `workers` for proposals and fine-tuning, closed at the end."""
        with ProcessPoolExecutor(self.workers) as pool:
            self._pool = pool
            try:
                yield self
            finally:
                self._pool = None

    def config(self, resource: str = "latency", budget: str | None = None, initial: str | None = None,
               decay: float | None = None, short_term_steps: int | None = None) -> AdaptConfig:
        s = self.scale
        constraint = ConstraintConfig(resource=resource, budget=budget or s.budget,  # type: ignore[arg-type]
                                      schedule=ScheduleConfig(initial=initial or s.initial,
                                                              decay=s.decay if decay is None else decay))
        steps = s.short_term_steps if short_term_steps is None else short_term_steps
        return AdaptConfig(run_dir=str(self.out / "runs"), constraints=[constraint],
                           training=TrainingConfig(short_term_steps=steps, long_term_steps=0),
                           lut=LutConfig(path=str(self.out / "lut-ort-cpu1.sqlite"), threads=1,
                                         calibration=s.calibration))

    def problem(self, resource: str = "latency", **schedule: Any) -> Problem:
        config = self.config(resource, **schedule)
        key = config.model_dump_json(include={"constraints"})
        if key not in self._problems:
            self._problems[key] = build_problem(config, workers=True) if self.model == "mobilenet_v1" else \
                self._mobilenet_v2(config)
        return self._problems[key]

    def _mobilenet_v2(self, config: AdaptConfig) -> Problem:
        """The zoo's MobileNetV2 (width 0.5, 32 px) trained here on the digits split as the V1's
        (once; kept in the folder), under the config's one constraint."""
        import torch

        import netopt
        from netopt.measure import OnnxRuntimeCPU
        from netopt.runs.files import save_tensors

        d, c = config.data, config.constraints[0]
        data = netopt.data.mnist(size=32, holdout_per_class=d.holdout_per_class, test_fraction=d.test_fraction,
                                 seed=d.seed)
        torch.manual_seed(self.seed)
        model = netopt.zoo.MobileNetV2(0.5, num_classes=10, in_channels=1)
        weights = self.out / "mobilenet_v2-digits.pt"
        if weights.is_file():
            model.load_state_dict(torch.load(weights, weights_only=True))
        else:
            say(f"training the zoo's MobileNetV2 0.5 on the digits ({V2_PRETRAIN_STEPS} steps, once)")
            netopt.Trainer(lr=0.05, batch_size=64, device="cpu").train(  # lr 0.1 diverges here
                model, data.train_x, data.train_y, V2_PRETRAIN_STEPS, self.seed, schedule="cosine")
            save_tensors(weights, model.state_dict())
        traced = netopt.trace(model.eval(), data.train_x[:1])
        schedule = netopt.ReductionSchedule(c.schedule.initial, c.schedule.decay)
        if c.resource == "latency":
            table = netopt.LookupTable.open(config.lut.path, OnnxRuntimeCPU(threads=1),
                                            calibration_networks=config.lut.calibration)
            constraint: Any = netopt.LatencyConstraint(c.budget, table, schedule)
        else:
            constraint = netopt.MACsConstraint(c.budget, schedule=schedule)
        return netopt.Problem(traced, [constraint], netopt.Accuracy(data, netopt.Trainer(lr=config.training.lr)))

    @property
    def latency(self) -> Problem:
        """The latency problem at the default budget: its table measures every figure here."""
        return self.problem("latency")

    @property
    def table(self) -> LookupTable:
        estimator = self.latency.constraints[0].estimator
        assert isinstance(estimator, LookupTable)
        return estimator

    @property
    def test_examples(self) -> int:
        return len(self.latency.objective.data.test_y)  # type: ignore[attr-defined]

    # --- adaptation runs -------------------------------------------------------------------

    def adapt(self, name: str, resource: str = "latency", **settings: Any) -> Result:
        """ProgressiveBarrier on one constraint (its settings as `config` takes them), in its own
        run folder: a finished run is read back, a stopped one resumed. No long-term fine-tuning
        (`long_term` does it for every network compared, the same way)."""
        run_dir = self.out / "runs" / name
        resume = (run_dir / "config.json").is_file()
        problem = self.problem(resource, **{k: v for k, v in settings.items() if k != "short_term_steps"})
        steps = settings.get("short_term_steps", self.scale.short_term_steps)
        strategy = ProgressiveBarrier(short_term_steps=steps, long_term_steps=0, seed=self.seed, executor=self._pool)
        say(f"{name}: ProgressiveBarrier, {resource} {settings.get('budget', self.scale.budget)}, schedule "
            f"{settings.get('initial', self.scale.initial)}/{settings.get('decay', self.scale.decay)}, {steps} "
            f"short-term steps a proposal{' (resumed)' if resume else ''}")
        started = time.perf_counter()
        result = strategy.run(problem, run_dir=run_dir, resume=resume)
        timings = run_dir / "timings.json"
        if not timings.is_file():  # the first time it finishes: a resumed run's clock counts its last part only
            write_json(timings, {**result.timings, "wall": time.perf_counter() - started, "resumed": resume})
        return result

    def wall(self, name: str) -> tuple[float, bool]:
        """A run's wall time and whether it was resumed (then it covers the last part only)."""
        data = json.loads((self.out / "runs" / name / "timings.json").read_text())
        return float(data["wall"]), bool(data["resumed"])

    # --- long-term fine-tuning -------------------------------------------------------------

    def long_term(self, modules: Mapping[str, nn.Module], steps: int | None = None,
                  each: Mapping[str, int] | None = None) -> dict[str, dict[str, float]]:
        """Each module long-term fine-tuned `steps` (default the scale's; `each` by name), holdout
        and test accuracy; in parallel on the pool, cached by name and steps in long_term/, so a
        rerun does only what is missing."""
        default = self.scale.long_term_steps if steps is None else steps
        wanted = {name: (each or {}).get(name, default) for name in modules}
        path = {name: self.out / "long_term" / f"{name}@{k}.json" for name, k in wanted.items()}
        out = {name: json.loads(path[name].read_text()) for name in modules if path[name].is_file()}
        todo = [name for name in modules if name not in out]
        if todo:
            say(f"long-term fine-tuning {len(todo)} networks ({', '.join(f'{n}: {wanted[n]}' for n in todo)} steps)")
            objective, pool = self.latency.objective, self._pool
            futures = {n: pool.submit(_long_term, objective, modules[n], wanted[n], self.seed) for n in todo} \
                if pool else {}
            for name in todo:
                found = futures[name].result() if pool else \
                    _long_term(objective, modules[name], wanted[name], self.seed)
                out[name] = found
                write_json(path[name], found)  # kept as each finishes
        return {name: out[name] for name in modules}

    def start_module(self, network: Network) -> nn.Module:
        """`network` materialized from the pretrained start (filters chosen by L2 magnitude)."""
        return self.latency.traced.materialize(network)

    # --- measurement -----------------------------------------------------------------------

    def measure(self, nets: Mapping[str, Network], passes: int = 3) -> dict[str, float]:
        """End-to-end latency (ms) of each network, all in the same interleaved rounds, so that
        ratios between them are taken side by side."""
        names = list(nets)
        found = self.table.measure_networks(self.latency.traced, [nets[n] for n in names], passes=passes)
        return {n: m.median for n, m in zip(names, found, strict=True)}


def member_at(family: Sequence[Any], resource: str, at_most: float) -> Any | None:
    """The first family member (in iteration order) whose `resource` is at most `at_most`: what
    ProgressiveBarrier with that budget would have returned, as its iterations up to there are
    the same."""
    return next((c for c in family if c.resources[resource] <= at_most), None)


def spread(family: Sequence[Any], resource: str, points: int) -> list[Any]:
    """`points` members spaced evenly in `resource` from the start to the last (the start left out)."""
    first, last = family[0].resources[resource], family[-1].resources[resource]
    picked: list[Any] = []
    for k in range(1, points + 1):
        target = first - (first - last) * k / points
        member = member_at(family[1:], resource, target * 1.0001)
        if member is not None and member not in picked:
            picked.append(member)
    return picked


def fastest_as_accurate(points: Mapping[str, tuple[float, float]],
                        others: Mapping[str, tuple[float, float]]) -> dict[str, str | None]:
    """For each of `points` (name -> (latency, accuracy)): the fastest of `others` at least as
    accurate (None where none is)."""
    out: dict[str, str | None] = {}
    for name, (_, accuracy) in points.items():
        match = [o for o, (_, acc) in others.items() if acc >= accuracy]
        out[name] = min(match, key=lambda o: others[o][0]) if match else None
    return out
