"""The jobs `netopt adapt` and `netopt compare` run: build from a config, run, write plots.

Both run with one torch thread (latency is measured on one, and training beside measurement
must not compete with it) and give the caller's thread setting back when they end.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from netopt.app.config import AdaptConfig, CompareConfig
from netopt.app.factory import build_problem, make_strategy, strategy_makers
from netopt.app.reports import measure_family
from netopt.errors import ConfigError
from netopt.ir.versions import VERSION_KEY, version_of
from netopt.runs.files import write_json

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from netopt.compare import Comparison
    from netopt.strategies import Result

__all__ = ["adapt_job", "compare_job", "torch_threads"]


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` while the block runs, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


APP_CONFIG = "app.json"
"""The whole config of a job, kept in its run directory: a resume must give the same."""
APP_CONFIG_VERSION = 1
"""Version of app.json (`format_version`; one written before the key existed is version 1)."""


def same_config(config: AdaptConfig, resume: bool) -> None:
    """Record the job's config in its run directory, or, on resume, refuse one that differs from
    the recorded config in anything but the run directory, naming the first field that does."""
    path = Path(config.run_dir) / APP_CONFIG
    current = _flat(config.model_dump(mode="json", exclude={"run_dir"}))
    started = Path(config.run_dir, "config.json").is_file()  # the run itself has begun
    if resume and started and path.is_file():
        recorded = _flat(_recorded(path))
        defaults = _flat(type(config)().model_dump(mode="json", exclude={"run_dir"}))  # fields newer than the run
        for key in sorted(set(recorded) | set(current)):
            was = recorded.get(key, defaults.get(key))
            if was != current.get(key):
                raise ConfigError(
                    f"{config.run_dir} was started with {key} = {was!r}, not {current.get(key)!r}: the "
                    "result would belong to neither config; resume with the config it was started with, or give a "
                    "new run_dir")
    elif resume == started:  # a new run (also after one that failed before it began), or a run from before app.json
        try:
            write_json(path, config.model_dump(mode="json", exclude={"run_dir"}), APP_CONFIG_VERSION)
        except OSError as exc:
            raise ConfigError(f"run_dir {config.run_dir} cannot be written ({exc.strerror}); give a folder you can "
                              "write (not a file, nor below one)") from None


def _recorded(path: Path) -> dict[str, Any]:
    """The config app.json holds, without its version key; a newer format is refused."""
    doc = json.loads(path.read_text())
    version_of(doc, APP_CONFIG_VERSION, str(path), "resume with the netopt that started the run, or give a new run_dir",
               error=ConfigError)
    return {k: v for k, v in doc.items() if k != VERSION_KEY}


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested tables as dotted keys (`training.lr`, `constraints.0.budget`)."""
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for i, sub in enumerate(value) for k, v in _flat(sub, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): value}


def adapt_job(config: AdaptConfig, resume: bool = False, executor: Executor | None = None) -> Result:
    """Run (or resume) the adaptation the config describes, and write its plots; proposals on
    `executor` if given (a process pool, a DaskExecutor), the objective built on its workers."""
    from netopt.report import plot_family, plot_widths

    same_config(config, resume)  # before any pretraining or measurement
    with torch_threads(1):
        problem = build_problem(config, workers=executor is not None)
        result = make_strategy(config, executor).run(problem, run_dir=config.run_dir, resume=resume)
        measure_family(problem, result)
    first = problem.constraints[0]
    plot_family(result, first.resource, Path(config.run_dir) / f"accuracy_vs_{first.resource}.png",
                f"{first.unit}, estimated")
    plot_widths(result, Path(config.run_dir) / "widths.png")
    return result


def compare_job(config: CompareConfig, resume: bool = False, executor: Executor | None = None) -> Comparison:
    """Run the config's strategies at its budgets on one problem (`netopt.compare.compare`)."""
    from netopt.compare import compare

    with torch_threads(1):
        problem = build_problem(config, workers=executor is not None)
        c = config.compare
        return compare(problem, c.budgets, strategy_makers(config, executor), config.run_dir,
                       long_term_steps=config.training.long_term_steps, search_steps=c.search_steps, resume=resume,
                       progress=lambda line: print(f"-- {line}", flush=True))
