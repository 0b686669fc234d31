"""The run directory's format: versioned files, runs of the first format migrated, newer refused,
and the public API as a snapshot that changes only on purpose."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from standins import fixed_net, problem_for

from netopt.runs import FORMAT_VERSION, RunDir, RunError, read_lines
from netopt.strategies import ProgressiveBarrier, RandomSearch
from netopt.testing.api import listing

DATA = Path(__file__).parent / "data"
PB = {"short_term_steps": 2, "long_term_steps": 2, "seed": 3, "progress": False}


def copy_of(name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(DATA / "runs_v1" / name, target)
    return target


def versions(run: Path) -> set[int]:
    docs = [json.loads(p.read_text()) for p in run.rglob("*.json") if p.name not in ("network.json", "original.json")]
    lines = list(read_lines(run / "history.jsonl"))
    return {d.get("format_version", 1) for d in docs + lines}


def test_every_file_a_new_run_writes_carries_the_format_version(tmp_path: Path) -> None:
    problem = problem_for(fixed_net(), "40%", "90%")
    RandomSearch(trials=2, **PB).run(problem, run_dir=tmp_path / "run")
    assert versions(tmp_path / "run") == {FORMAT_VERSION}
    networks = [json.loads(p.read_text()) for p in (tmp_path / "run").rglob("network.json")]
    assert networks and all(n["format"] == "netopt.ir.network" and "format_version" in n for n in networks)


def test_a_stopped_run_of_the_first_format_resumes_to_what_a_fresh_run_gives(tmp_path: Path) -> None:
    run = copy_of("progressive_stopped", tmp_path)
    assert versions(run) == {1}
    problem = problem_for(fixed_net(), "40%", "90%")
    resumed = ProgressiveBarrier(**PB).run(problem, run_dir=run, resume=True)
    fresh = ProgressiveBarrier(**PB).run(problem, run_dir=tmp_path / "fresh")
    assert [p.to_dict() for p in resumed.history] == [p.to_dict() for p in fresh.history]
    assert resumed.final.network == fresh.final.network
    assert versions(run) == {FORMAT_VERSION}


def test_a_finished_run_of_the_first_format_reads_back_whole(tmp_path: Path) -> None:
    run = copy_of("random_finished", tmp_path)
    problem = problem_for(fixed_net(), "40%", "90%")
    result = RandomSearch(trials=3, **PB).run(problem, run_dir=run, resume=True)
    fresh = RandomSearch(trials=3, **PB).run(problem, run_dir=tmp_path / "fresh")
    assert [p.to_dict() for p in result.history] == [p.to_dict() for p in fresh.history]
    assert result.final.test_accuracy == fresh.final.test_accuracy


def test_loading_a_network_of_a_first_format_run_reads_it_as_it_is(tmp_path: Path) -> None:
    import torch

    from netopt.runs import load

    run = copy_of("random_finished", tmp_path)
    module = load(run)
    assert module(torch.randn(1, 3, 16, 16)).shape == (1, 10)
    assert versions(run) == {1}  # reading changed nothing


def test_a_run_of_a_newer_format_is_refused_naming_both_versions(tmp_path: Path) -> None:
    run = copy_of("random_finished", tmp_path)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "format_version": FORMAT_VERSION + 1}))
    with pytest.raises(RunError, match=rf"format version {FORMAT_VERSION + 1}.*reads up to {FORMAT_VERSION}"):
        RunDir.open(run)


def test_the_public_api_is_the_snapshot() -> None:
    """A public name or signature changed: if on purpose, regenerate the snapshot with
    `python -m netopt.testing.api > tests/data/public_api.txt` and say why in the commit."""
    snapshot = (DATA / "public_api.txt").read_text().splitlines()
    now = listing()
    assert [line for line in now if line not in snapshot] == []  # added or changed
    assert [line for line in snapshot if line not in now] == []  # removed or changed


def finished_random(tmp_path: Path) -> tuple[Path, object, RandomSearch]:
    problem = problem_for(fixed_net(), "40%", "90%")
    strategy = RandomSearch(trials=3, **PB)
    strategy.run(problem, run_dir=tmp_path / "run")
    return tmp_path / "run", problem, strategy


@pytest.mark.parametrize(("damage", "rule"), [
    ("history", r"history\.jsonl is damaged"),
    ("config", r"config\.json is damaged"),
    ("summary", r"summary\.json is damaged"),
    ("weights", r"0000 is damaged .*delete that folder to resume from the iteration before it"),
])
def test_a_damaged_run_directory_is_one_line_naming_the_file(tmp_path: Path, damage: str, rule: str) -> None:
    run, problem, strategy = finished_random(tmp_path)
    shutil.rmtree(run / "final")  # so that resuming reads the family and the history back
    if damage == "history":
        lines = (run / "history.jsonl").read_text().splitlines(keepends=True)
        (run / "history.jsonl").write_text(lines[0] + '{"iteration": 1, "gro\n' + "".join(lines[1:]))
    elif damage == "config":
        (run / "config.json").write_bytes(bytes(range(200, 256)))
    elif damage == "summary":
        (run / "family" / "0000" / "summary.json").write_bytes(bytes(range(200, 256)))
    else:
        (run / "family" / "0000" / "weights.pt").write_bytes(bytes(range(256)))
    with pytest.raises(RunError, match=rule) as info:
        if damage == "weights":
            RunDir.open(run).module(0)
        elif damage == "summary":  # what reads a member back: netopt.load, a ProgressiveBarrier resume
            RunDir.open(run).summary(0)
        else:
            strategy.run(problem, run_dir=run, resume=True)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_damaged_proposal_weights_are_fine_tuned_again(tmp_path: Path) -> None:
    run, problem, strategy = finished_random(tmp_path)
    fresh = [p.to_dict() for p in strategy.run(problem, run_dir=tmp_path / "again").history]  # type: ignore[arg-type]
    shutil.rmtree(run / "final")
    for weights in (run / "proposals").rglob("*.pt"):
        weights.write_bytes(b"not a tensor file")
    with pytest.warns(RuntimeWarning, match="is damaged: that proposal is fine-tuned again"):
        resumed = strategy.run(problem, run_dir=run, resume=True)  # type: ignore[arg-type]
    assert [p.to_dict() for p in resumed.history] == fresh


@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_a_run_directory_that_cannot_be_made_is_one_line(tmp_path: Path, where: str) -> None:
    (tmp_path / "f").write_text("x")
    target = tmp_path / "f" if where == "a file" else tmp_path / "f" / "run"
    with pytest.raises(RunError) as info:
        RandomSearch(trials=1, **PB).run(problem_for(fixed_net(), "40%", "90%"), run_dir=target)
    assert ("is a file" if where == "a file" else "cannot be created") in str(info.value)
