"""The same run twice is the same run: `make demo`'s problem run N times from identical copies of one table.

    python benchmarks/bench_repro.py [--runs 5] [--jobs 1] [--config examples/demo.toml]
                                     [--out benchmarks/out/repro]

Issue 32's goal: five runs of `make demo`'s problem from identical copies of a calibrated lookup
table give the same family and the same final network. Each run is the command `make demo` runs
(`python -m netopt.cli adapt CONFIG`) in a process of its own, its config the demo's with its own
run directory and its own copy of the table; the tables may be written (tracking recalibrates),
so the runs agree only where every decision a measurement makes is decisive
(`netopt.strategies.decisive`). A resumed run replaying its recorded figures is tested
(tests/test_decisive.py), not timed here.

A unit a run needs and its table lacks is measured in that run, and two measurements of one unit
differ by the machine's noise: runs from a table that lacks their units diverge at the first width
those figures tip (the first try of this benchmark: at iteration 2). So the runs start from a warm
table: the base (`--out`/table.sqlite, copied from the config's table where that exists, SQLite's
backup so a table in use copies whole, else made and calibrated here) run once (`--out`/warm), and
that run's table, every unit it measured kept, its recalibrations replaced by the base's
calibration (`--out`/table-warm.sqlite), copied for each run. Each run's outcome is kept in
`--out`/runN/ and read back: a rerun redoes only the runs that did not finish.

Printed: per run, the iterations, a digest of the family's widths and of the final's, the final's
latency measured (as the run recorded it) and its share of the budget, the decisions that were
close, the recalibrations, the wall time; then whether all runs agree.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from netopt.app.config import AdaptConfig, load_config
from netopt.app.factory import build_problem
from netopt.measure.platform import cpu_model
from netopt.report.tables import markdown_table
from netopt.runs.files import write_atomic, write_json

ROOT = Path(__file__).resolve().parent.parent


def base_table(config: AdaptConfig, out: Path) -> Path:
    """The table every run starts from a copy of, calibrated for the config's network."""
    base = out / "table.sqlite"
    if base.is_file():
        return base
    source = Path(config.lut.path) if Path(config.lut.path).is_absolute() else ROOT / config.lut.path
    if source.is_file():
        copy_table(source, base)
    problem = build_problem(config.model_copy(update={"lut": config.lut.model_copy(update={"path": str(base)})}))
    for constraint in problem.constraints:
        table = getattr(constraint, "estimator", None)
        if hasattr(table, "calibrate") and table.calibration(problem.traced.network) is None:  # type: ignore[union-attr]
            table.calibrate(problem.traced)  # type: ignore[union-attr]
    return base


def copy_table(source: Path, target: Path) -> None:
    """A whole copy of an SQLite table, its write-ahead log included, written then renamed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    with sqlite3.connect(f"file:{source}?mode=ro", uri=True) as src, sqlite3.connect(partial) as dst:
        src.backup(dst)
    partial.replace(target)


def warm_table(config: AdaptConfig, base: Path, out: Path) -> Path:
    """The base table with every unit one run of the problem measured, at the base's calibration."""
    warm = out / "table-warm.sqlite"
    if warm.is_file():
        return warm
    one_run(config, base, out / "warm")
    partial = out / "table-warm.partial"
    copy_table(out / "warm" / "table.sqlite", partial)
    db = sqlite3.connect(partial)
    try:
        with db:  # one transaction: the run's recalibrations out, the base's calibration in
            db.execute("ATTACH DATABASE ? AS base", (str(base),))
            db.execute("DELETE FROM main.calibrations")
            db.execute("INSERT INTO main.calibrations SELECT * FROM base.calibrations")
    finally:
        db.close()
    partial.replace(warm)
    return warm


def run_config(config: AdaptConfig, base: Path, folder: Path) -> Path:
    """Run `folder`'s config: the demo's, with its own run directory and table copy."""
    table = folder / "table.sqlite"
    if not table.is_file():
        copy_table(base, table)
    own = config.model_copy(update={"run_dir": str(folder / "run"),
                                    "lut": config.lut.model_copy(update={"path": str(table)})})
    path = folder / "config.yaml"  # JSON is YAML; the CLI reads either
    write_atomic(path, own.model_dump_json(indent=1, exclude_defaults=True).encode())
    return path


def one_run(config: AdaptConfig, base: Path, folder: Path) -> dict[str, Any]:
    """One run in a process of its own (resumed where a previous one stopped); its outcome."""
    done = folder / "outcome.json"
    if done.is_file():
        return json.loads(done.read_text())  # type: ignore[no-any-return]
    folder.mkdir(parents=True, exist_ok=True)
    path = run_config(config, base, folder)
    resume = ["--resume"] if (folder / "run" / "config.json").is_file() else []
    started = time.perf_counter()
    with (folder / "log.txt").open("a") as log:
        subprocess.run([sys.executable, "-m", "netopt.cli", "adapt", str(path), *resume], cwd=ROOT, check=True,
                       stdout=log, stderr=subprocess.STDOUT)
    outcome = read_outcome(folder / "run")
    outcome["seconds"] = time.perf_counter() - started
    write_json(done, outcome)
    return outcome


def read_outcome(run: Path) -> dict[str, Any]:
    """What decides whether two runs are the same run, read from the run directory."""
    family = [json.loads((d / "summary.json").read_text()) for d in sorted((run / "family").iterdir())]
    widths = [json.loads((d / "network.json").read_text()).get("widths") for d in sorted((run / "family").iterdir())]
    final = json.loads((run / "final" / "summary.json").read_text())
    final_net = json.loads((run / "final" / "network.json").read_text())
    record = json.loads((run / "calibrations.json").read_text())
    return {
        "iterations": len(family),
        "family": digest([*widths, [f.get("group") for f in family]]),
        "final": digest(final_net),
        "final_latency": final.get("measured", {}).get("latency"),
        "accuracy": final.get("test_accuracy"),
        "close": sum(len(r.get("close", [])) for k, r in record.items() if isinstance(r, dict)),
        "recalibrations": sum(len(r.get("added", [])) for k, r in record.items() if isinstance(r, dict)),
    }


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:10]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5, help="runs from identical copies of the table (default 5)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1: the machine's noise alone)")
    p.add_argument("--config", default=str(ROOT / "examples" / "demo.toml"), help="the problem (default make demo's)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "repro")
    args = p.parse_args(argv)
    if args.runs < 2:
        p.error(f"--runs {args.runs}: comparing runs needs at least 2")
    config = load_config(args.config)
    args.out.mkdir(parents=True, exist_ok=True)
    base = warm_table(config, base_table(config, args.out), args.out)
    folders = [args.out / f"run{i}" for i in range(args.runs)]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        outcomes = list(pool.map(lambda f: one_run(config, base, f), folders))
    rows = [[str(i), str(o["iterations"]), o["family"], o["final"],
             f"{o['final_latency']:.5f} ms" if o["final_latency"] else "-", f"{o['accuracy']:.3f}",
             str(o["close"]), str(o["recalibrations"]), f"{o['seconds']:.0f} s"] for i, o in enumerate(outcomes)]
    same = len({(o["family"], o["final"]) for o in outcomes}) == 1
    name = Path(args.config).name
    text = (f"# The same run again: {args.runs} runs of {name}'s problem from identical table copies\n\n"
            f"{cpu_model()}; {args.jobs} run(s) at a time\n\n"
            + markdown_table(["run", "iterations", "family", "final", "final latency (measured)", "test accuracy",
                              "close decisions", "recalibrations", "wall"], rows)
            + f"\n\nSame family and final in every run: {'YES' if same else 'NO'}\n")
    write_atomic(args.out / "repro.md", text.encode())
    print(text)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
