"""The comparison harness: same problem, same budgets, same fine-tuning budget; tables, files, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from optuna._hypervolume import compute_hypervolume
from standins import fixed_net, problem_for

from netopt.app.config import CompareConfig, load_config
from netopt.compare import Comparison, compare, hypervolume, with_budget
from netopt.errors import ConfigError
from netopt.strategies import ProgressiveBarrier, RandomSearch, UniformWidth

STEPS = {"short_term_steps": 4, "long_term_steps": 6, "progress": False}


def makers() -> dict:  # type: ignore[type-arg]
    return {"UniformWidth": lambda n: UniformWidth(**STEPS),
            "RandomSearch": lambda n: RandomSearch(trials=max(1, (n or 20) // 4), **STEPS),
            "ProgressiveBarrier": lambda n: ProgressiveBarrier(**STEPS)}


def test_hypervolume_by_hand_and_against_optuna() -> None:
    assert hypervolume([(0.5, 0.9)], (1.0, 0.0)) == pytest.approx(0.45)
    assert hypervolume([(0.5, 0.9), (0.25, 0.5)], (1.0, 0.0)) == pytest.approx(0.45 + 0.25 * 0.5)
    assert hypervolume([(0.5, 0.9), (0.6, 0.8)], (1.0, 0.0)) == pytest.approx(0.45)  # a dominated point adds nothing
    assert hypervolume([(1.5, 0.9)], (1.0, 0.0)) == 0.0  # beyond the reference
    rng = np.random.default_rng(0)
    for _ in range(20):
        pts = rng.uniform(0.05, 0.95, size=(7, 2))
        ours = hypervolume([(c, a) for c, a in pts], (1.0, 0.0))
        theirs = compute_hypervolume(np.stack([pts[:, 0], -pts[:, 1]], axis=1), np.array([1.0, 0.0]))
        assert ours == pytest.approx(theirs)


def test_with_budget_changes_only_the_first_constraint() -> None:
    problem = problem_for(fixed_net(), "45%", "90%")
    changed = with_budget(problem, "30%")
    assert changed.bind()[0].budget == pytest.approx(0.30 * problem.bind()[0].initial)
    assert changed.bind()[1].budget == problem.bind()[1].budget
    assert problem.bind()[0].budget == pytest.approx(0.45 * problem.bind()[0].initial)  # the original is untouched


def test_compare_runs_every_strategy_at_every_budget_with_matched_steps_and_resumes(tmp_path: Path) -> None:
    problem = problem_for(fixed_net(), "45%", "90%")
    said: list[str] = []
    result = compare(problem, ["60%", "40%", "1%"], makers(), tmp_path, long_term_steps=6, progress=said.append)
    assert said[0] == "macs-60pct: ProgressiveBarrier"  # it runs first, to set the budget the others match
    done = said[1]  # a log line per strategy, with the figures of its result
    assert done.startswith("macs-60pct: ProgressiveBarrier done in ") and "test " in done and "macs " in done
    assert any(s.startswith("macs-1pct: ProgressiveBarrier failed: macs budget") for s in said)
    assert [(r.budget, r.strategy) for r in result.rows][:3] == [
        ("60%", "ProgressiveBarrier"), ("60%", "UniformWidth"), ("60%", "RandomSearch")]
    bounds = problem.bind()
    for row in result.rows:
        if row.budget == "1%":
            assert "cannot be met" in row.error  # recorded, and the comparison went on
            continue
        budget = with_budget(problem, row.budget).bind()[0].budget
        assert row.estimated["macs"] <= budget and row.estimated["memory"] <= bounds[1].budget
        assert row.training_steps == row.search_steps + 6
    for budget in ("60%", "40%"):
        pb, rs = (next(r for r in result.rows if r.budget == budget and r.strategy == s)
                  for s in ("ProgressiveBarrier", "RandomSearch"))
        assert rs.search_steps <= pb.search_steps  # the same fine-tuning budget, never more
    report = (tmp_path / "comparison.md").read_text()
    assert "macs budget 60%" in report and "hypervolume" in report and "failed: macs budget" in report
    assert (tmp_path / "frontier.png").stat().st_size > 0
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert set(saved["hypervolumes"]) == {"ProgressiveBarrier", "UniformWidth", "RandomSearch"}
    assert all(0 < v < 1 for v in saved["hypervolumes"].values())

    said.clear()  # a resumed comparison redoes nothing that finished
    again = compare(problem, ["60%", "40%", "1%"], makers(), tmp_path, long_term_steps=6, resume=True,
                    progress=said.append)
    assert said == []
    assert [r.widths for r in again.rows] == [r.widths for r in result.rows]
    assert again.hypervolumes() == result.hypervolumes()


def test_compare_resumes_a_strategy_stopped_before_its_row(tmp_path: Path) -> None:
    problem = problem_for(fixed_net(), "45%", "90%")
    whole = compare(problem, ["50%"], makers(), tmp_path / "whole", long_term_steps=6)
    compare(problem, ["50%"], makers(), tmp_path / "cut", long_term_steps=6)
    (tmp_path / "cut" / "macs-50pct" / "RandomSearch" / "row.json").unlink()  # as if stopped before writing it
    resumed = compare(problem, ["50%"], makers(), tmp_path / "cut", long_term_steps=6, resume=True)
    assert [r.widths for r in resumed.rows] == [r.widths for r in whole.rows]


def test_comparison_table_reads_measured_figures_against_the_start() -> None:
    from netopt.compare import Row

    row = Row("50%", "X", test_accuracy=0.9, estimated={"latency": 1.0}, measured={"latency": 2.0,
                                                                                 "start_latency": 5.0})
    c = Comparison("latency", "ms", {"latency": 2.0, "measured_latency": 4.0}, [row])
    assert c.relative(row) == pytest.approx(0.4)  # against the start measured in the same rounds
    assert "2.50x" in c.table("50%")


def test_yaml_and_toml_configs_read_alike(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('run_dir = "r"\n[training]\nshort_term_steps = 5\n'
                                     '[compare]\nstrategies = ["UniformWidth"]\nbudgets = ["60%", 0.5]\n')
    (tmp_path / "c.yaml").write_text('run_dir: r\ntraining: {short_term_steps: 5}\n'
                                     'compare: {strategies: [UniformWidth], budgets: ["60%", 0.5]}\n')
    toml, yaml = (load_config(tmp_path / f"c.{s}", CompareConfig) for s in ("toml", "yaml"))
    assert toml == yaml and isinstance(toml, CompareConfig) and toml.compare.budgets == ["60%", 0.5]


@pytest.mark.parametrize(("text", "message"), [
    ("compare: {strategies: [Genetic]}", "compare.strategies.0"),
    ("compare: {budgets: ['-5%']}", "compare budget '-5%' must be a positive"),
    ("compare: {search_steps: 0}", "search_steps 0 must be >= 1"),
    ("compare: {budgets: [50%", "is not valid YAML"),
    ("- just\n- a list", "must hold a mapping"),
])
def test_compare_config_errors_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(path, CompareConfig)


@pytest.mark.slow
def test_netopt_compare_runs_on_mnist_at_tiny_size(tmp_path: Path) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text(f"""
run_dir: {tmp_path / 'out'}
model: {{pretrain_steps: 30}}
training: {{short_term_steps: 2, long_term_steps: 2}}
constraints: [{{resource: latency, budget: 85%}}]
compare: {{strategies: [UniformWidth, RandomSearch], budgets: [80%], search_steps: 4}}
lut: {{path: {tmp_path / 'lut.sqlite'}, calibration: 5}}
""")
    env = {**os.environ, "NETOPT_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "netopt.cli", "compare", str(config)], capture_output=True,
                          text=True, timeout=900, check=False, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "latency budget 80%" in done.stdout and "hypervolume" in done.stdout
    rows = json.loads((tmp_path / "out" / "comparison.json").read_text())["rows"]
    assert {r["strategy"] for r in rows} == {"UniformWidth", "RandomSearch"}
    assert all(r["measured"]["latency"] > 0 for r in rows)  # measured end to end, side by side
