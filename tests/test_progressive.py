"""ProgressiveBarrier on random networks and joint budgets, with a cheap stand-in objective."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from standins import fixed_net, problem_for

from netopt.constraints import MACsConstraint
from netopt.errors import ConfigError, InfeasibleError
from netopt.ir import Network
from netopt.runs import RunError, load
from netopt.strategies import ProgressiveBarrier, SelectionRule, smallest
from netopt.testing import strategies as nst


@settings(max_examples=15)
@given(nst.networks(max_blocks=3), st.integers(20, 100), st.integers(40, 100))
def test_meets_every_budget_or_says_it_is_infeasible(net: Network, macs_pct: int, memory_pct: int) -> None:
    problem = problem_for(net, f"{macs_pct}%", f"{memory_pct}%")
    strategy = ProgressiveBarrier(short_term_steps=0, long_term_steps=0, progress=False)
    try:
        result = strategy.run(problem)
    except InfeasibleError as exc:
        floor = smallest(net)
        bounds = problem.bind()
        assert any(b.estimate(floor) > b.budget for b in bounds), f"said infeasible but the floor fits: {exc}"
        return
    for bound in problem.bind():
        assert bound.estimate(result.final.network) <= bound.budget
    assert [c.iteration for c in result.family] == list(range(len(result.family)))
    assert sum(p.chosen for p in result.history) == len(result.family) - 1
    costs = [MACsConstraint("100%").estimate(c.network) for c in result.family]
    assert costs == sorted(costs, reverse=True)  # every iteration shrinks


def test_each_iteration_meets_its_tightened_target_and_follows_eq2() -> None:
    net = fixed_net()
    problem = problem_for(net, "60%", "100%")
    result = ProgressiveBarrier(short_term_steps=0, long_term_steps=0, progress=False).run(problem)
    bound = problem.bind()[0]
    for i, (before, after) in enumerate(zip(result.family, result.family[1:], strict=False)):
        target = bound.target(i, before.resources["macs"])
        chosen = next(p for p in result.history if p.iteration == i and p.chosen)
        assert after.resources["macs"] == chosen.resources["macs"] <= target


def test_an_unreachable_budget_fails_early_with_the_smallest_estimate() -> None:
    problem = problem_for(fixed_net(), "1%", "100%")
    with pytest.raises(InfeasibleError, match=r"macs budget .* cannot be met: the smallest network .* estimated at"):
        ProgressiveBarrier(progress=False).run(problem)


def test_selection_rules_and_bad_settings() -> None:
    problem = problem_for(fixed_net(), "70%", "100%")
    a = ProgressiveBarrier(short_term_steps=0, long_term_steps=0, progress=False).run(problem)
    b = ProgressiveBarrier(short_term_steps=0, long_term_steps=0, progress=False,
                           selection="accuracy_per_resource").run(problem)
    for result in (a, b):
        assert all(bound.estimate(result.final.network) <= bound.budget for bound in problem.bind())
    # the stand-in's accuracy is the share of parameters kept: PickHighestAccuracy keeps the most
    first = [p for p in a.history if p.iteration == 0]
    assert next(p for p in first if p.chosen).score == max(p.score for p in first)
    with pytest.raises(ConfigError, match="selection 'best' is unknown"):
        ProgressiveBarrier(selection="best")
    assert SelectionRule("accuracy") is SelectionRule.ACCURACY


def test_a_process_pool_gives_the_same_result_as_serial() -> None:
    problem = problem_for(fixed_net(), "60%", "90%")
    serial = ProgressiveBarrier(short_term_steps=0, long_term_steps=0, progress=False).run(problem)
    with ProcessPoolExecutor(2) as pool:
        pooled = ProgressiveBarrier(short_term_steps=0, long_term_steps=0, progress=False, executor=pool).run(problem)
    assert [c.network for c in pooled.family] == [c.network for c in serial.family]
    assert [p.to_dict() for p in pooled.history] == [p.to_dict() for p in serial.history]
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(pooled.final.module(x), serial.final.module(x))


RUN_SCRIPT = """
import sys
from netopt.strategies import ProgressiveBarrier
from standins import fixed_net, problem_for
problem = problem_for(fixed_net(), "45%", "90%", delay=float(sys.argv[2]))
ProgressiveBarrier(short_term_steps=0, long_term_steps=0, progress=False).run(
    problem, run_dir=sys.argv[1], resume=sys.argv[3] == "resume")
"""


def _start_run(run_dir: Path, delay: float, mode: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    return subprocess.Popen([sys.executable, "-c", RUN_SCRIPT, str(run_dir), str(delay), mode], env=env)


def test_a_run_killed_mid_proposal_resumes_to_the_same_result(tmp_path: Path) -> None:
    reference = ProgressiveBarrier(short_term_steps=0, long_term_steps=0, progress=False).run(
        problem_for(fixed_net(), "45%", "90%"), run_dir=tmp_path / "whole")
    assert len(reference.family) >= 3
    killed = tmp_path / "killed"
    proc = _start_run(killed, 0.15, "new")
    log = killed / "history.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # wait for iteration 1 to be under way
        if log.exists() and any('"iteration": 1' in line for line in log.read_text().splitlines()):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists()
    logged_before = len(log.read_text().splitlines())
    resumed = ProgressiveBarrier(short_term_steps=0, long_term_steps=0, progress=False).run(
        problem_for(fixed_net(), "45%", "90%"), run_dir=killed, resume=True)
    assert [c.network for c in resumed.family] == [c.network for c in reference.family]
    assert [p.to_dict() for p in resumed.history] == [p.to_dict() for p in reference.history]
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(resumed.final.module(x), reference.final.module(x))
    assert torch.equal(load(killed, "final")(x), load(tmp_path / "whole", "final")(x))
    redone = len(log.read_text().splitlines()) - logged_before
    assert redone < len(reference.history)  # finished proposals were not evaluated again
    finished = ProgressiveBarrier(short_term_steps=0, long_term_steps=0, progress=False).run(
        problem_for(fixed_net(), "45%", "90%"), run_dir=killed, resume=True)  # a finished run reads back whole
    assert [p.to_dict() for p in finished.history] == [p.to_dict() for p in reference.history]
    assert sum(p.chosen for p in finished.history) == len(finished.family) - 1


def test_resume_refuses_other_settings_and_starting_anew_refuses_a_used_folder(tmp_path: Path) -> None:
    problem = problem_for(fixed_net(), "60%", "90%")
    ProgressiveBarrier(short_term_steps=0, long_term_steps=0, progress=False).run(problem, run_dir=tmp_path / "r")
    with pytest.raises(RunError, match="resume it with the same settings"):
        ProgressiveBarrier(short_term_steps=0, long_term_steps=0, seed=1, progress=False).run(
            problem, run_dir=tmp_path / "r", resume=True)
    with pytest.raises(RunError, match="already holds files"):
        ProgressiveBarrier(short_term_steps=0, long_term_steps=0, progress=False).run(problem, run_dir=tmp_path / "r")


def test_groups_adapted_as_blocks_shrink_together_and_still_meet_every_budget() -> None:
    problem = problem_for(fixed_net(), "45%", "90%")
    single = ProgressiveBarrier(short_term_steps=0, long_term_steps=0, progress=False).run(problem)
    blocks = ProgressiveBarrier(short_term_steps=0, long_term_steps=0, block_size=2, progress=False).run(problem)
    assert all(b.met(blocks.final.resources[b.resource]) for b in problem.bind())
    first = [p for p in blocks.history if p.iteration == 0]
    assert [p.group for p in first] == ["conv2d0+conv2d1", "conv2d3"]  # consecutive groups, two at a time
    pair = first[0]
    start = problem.traced.network.widths
    assert pair.widths["conv2d0"] < start["conv2d0"] and pair.widths["conv2d1"] < start["conv2d1"]
    assert len(blocks.history) < len(single.history)  # fewer proposals per iteration
    with pytest.raises(ConfigError, match="block_size 0 must be an integer >= 1"):
        ProgressiveBarrier(block_size=0)


def test_blocks_keep_going_when_one_of_their_groups_is_already_at_its_minimum(tmp_path: Path) -> None:
    """A block whose first group reached its minimum still shrinks its others; the re-traced
    network no longer has that group at all (it cannot shrink), so it must not be set."""
    import netopt
    from netopt.testing.problems import joint_problem
    from netopt.zoo import MobileNetV1

    net = netopt.trace(MobileNetV1(0.5, num_classes=10).eval(), torch.randn(1, 3, 32, 32)).network
    problem = joint_problem(net, "45%", "90%")
    strategy = ProgressiveBarrier(short_term_steps=1, long_term_steps=1, block_size=2, seed=1,
                                  selection="accuracy_per_resource")
    result = strategy.run(problem, run_dir=tmp_path / "run")
    floor = {g.id: g.min_width for g in net.groups}
    assert any(result.family[i].network.widths[g] == floor[g] for i in range(len(result.family) - 1) for g in floor)
    assert all(b.met(b.estimate(result.final.network)) for b in problem.bind())
    again = strategy.run(problem, run_dir=tmp_path / "run", resume=True)
    assert [p.to_dict() for p in again.history] == [p.to_dict() for p in result.history]
