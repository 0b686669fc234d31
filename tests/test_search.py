"""UniformWidth and RandomSearch, and the Trials bookkeeping they share."""

from __future__ import annotations

import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from standins import fixed_net, problem_for

from netopt.constraints import MACsConstraint
from netopt.errors import ConfigError, InfeasibleError
from netopt.runs import load
from netopt.strategies import Candidate, RandomSearch, UniformWidth, pareto_front, smallest

STEPS = {"short_term_steps": 3, "long_term_steps": 4, "progress": False}


def test_uniform_width_finds_the_largest_multiplier_meeting_every_budget() -> None:
    problem = problem_for(fixed_net(), "40%", "90%")
    strategy = UniformWidth(**STEPS)
    result = strategy.run(problem)
    bounds = problem.bind()
    net = problem.traced.network
    widths = result.final.network.widths
    fraction = max(w / net.group(g).full_width for g, w in widths.items())
    assert all(b.met(result.final.resources[b.resource]) for b in bounds)
    assert result.final.network == net.scaled(fraction)  # one multiplier for every group
    bigger = net.scaled(fraction + 1 / 8)  # the next multiplier up on the grid breaks a budget
    assert bigger != result.final.network and any(b.estimate(bigger) > b.budget for b in bounds)
    assert result.training_steps == 3 + 4 and sum(p.score is not None for p in result.history) == 1


def test_uniform_width_keeps_the_start_when_it_already_fits() -> None:
    problem = problem_for(fixed_net(), "100%", "100%")
    result = UniformWidth(**STEPS).run(problem)
    assert result.final.network == problem.traced.network


def test_random_search_scores_exactly_its_trials_and_rejects_the_rest_untrained() -> None:
    problem = problem_for(fixed_net(), "30%", "70%")
    result = RandomSearch(trials=5, seed=1, **STEPS).run(problem)
    scored = [p for p in result.history if p.score is not None]
    refused = [p for p in result.history if p.score is None]
    assert len(scored) == 5 and all(p.steps == 3 for p in scored)
    assert refused and all(p.steps == 0 for p in refused)
    bounds = problem.bind()
    assert all(any(not b.met(p.resources[b.resource]) for b in bounds) for p in refused)
    assert result.training_steps == 5 * 3 + 4
    assert result.final.network.widths == max(
        scored, key=lambda p: (p.score, -sum(p.resources[b.resource] / b.budget for b in bounds))).widths


def test_zero_compute_budget_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"trials=0 is not a compute budget.*integer >= 1"):
        RandomSearch(trials=0)


def test_a_bad_batch_size_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"batch_size=0 must be an integer >= 1"):
        RandomSearch(batch_size=0)


def test_random_search_gives_up_clearly_when_nothing_random_fits() -> None:
    floor = MACsConstraint("100%").estimate(smallest(fixed_net()))
    problem = problem_for(fixed_net(), f"{100 * floor / MACsConstraint('100%').estimate(fixed_net()) + 0.01}%",
                          "100%")  # only the smallest network fits: one assignment in 192
    with pytest.raises(InfeasibleError, match="RandomSearch scored no network within every budget"):
        RandomSearch(trials=2, max_rejections=5, **STEPS).run(problem)


def test_a_process_pool_gives_the_serial_result() -> None:
    problem = problem_for(fixed_net(), "40%", "90%")
    serial = RandomSearch(trials=4, seed=2, **STEPS).run(problem)
    with ProcessPoolExecutor(2) as pool:
        pooled = RandomSearch(trials=4, seed=2, executor=pool, batch_size=2, **STEPS).run(problem)
    assert [p.to_dict() for p in pooled.history] == [p.to_dict() for p in serial.history]
    assert pooled.final.network == serial.final.network


def test_a_stopped_search_resumes_without_redoing_scored_trials(tmp_path: Path) -> None:
    problem = problem_for(fixed_net(), "40%", "90%")
    whole = RandomSearch(trials=4, seed=5, **STEPS).run(problem, run_dir=tmp_path / "whole")
    assert load(tmp_path / "whole").training is False  # the final network loads ready to use
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "whole", cut)
    shutil.rmtree(cut / "final")  # stopped after scoring, before the long-term fine-tune
    lines = (cut / "history.jsonl").read_text().splitlines()
    (cut / "history.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # and the last trial was lost
    calls: list[int] = []
    objective = problem.objective
    original = objective.short_term

    def counting(module, steps, seed):  # type: ignore[no-untyped-def]
        calls.append(steps)
        return original(module, steps, seed)

    objective.short_term = counting  # type: ignore[method-assign]
    resumed = RandomSearch(trials=4, seed=5, **STEPS).run(problem, run_dir=cut, resume=True)
    assert resumed.final.network == whole.final.network and resumed.final.accuracy == whole.final.accuracy
    assert calls.count(3) <= 1  # at most the lost trial was fine-tuned again
    assert len((cut / "history.jsonl").read_text().splitlines()) == len(lines)


def test_pareto_front_keeps_only_undominated_candidates() -> None:
    net = fixed_net()

    def c(i: int, acc: float, macs: float, mem: float) -> Candidate:
        return Candidate(i, net.scaled(1 - i / 10), None, acc, {"macs": macs, "memory": mem})  # type: ignore[arg-type]

    pts = [c(0, 0.9, 10, 10), c(1, 0.8, 5, 10), c(2, 0.7, 6, 10), c(3, 0.9, 10, 12), c(4, 0.6, 4, 4)]
    assert [x.iteration for x in pareto_front(pts)] == [0, 1, 4]


def test_a_resume_that_would_propose_otherwise_is_refused(tmp_path: Path) -> None:
    from netopt.runs import RunError
    from netopt.strategies import Engine, Trials

    problem = problem_for(fixed_net(), "40%", "90%")
    strategy = RandomSearch(trials=3, seed=5, **STEPS)
    strategy.run(problem, run_dir=tmp_path)
    shutil.rmtree(tmp_path / "final")
    engine = Engine(problem, strategy.config(), short_term_steps=3, seed=5, run_dir=tmp_path, resume=True)
    trials = Trials(engine, progress=False)
    other = problem.traced.network.scaled(0.25).widths  # not what the stopped run proposed first
    with pytest.raises(RunError, match=r"proposal 0 \(\*\) differs from the one logged"):
        trials.evaluate([other])


def test_bad_settings_name_the_value() -> None:
    with pytest.raises(ConfigError, match=r"tolerance=0 must lie in \(0, 1\)"):
        UniformWidth(tolerance=0)


def test_the_chosen_proposal_is_marked_in_the_history(tmp_path: Path) -> None:
    problem = problem_for(fixed_net(), "40%", "90%")
    result = RandomSearch(trials=4, seed=1, **STEPS).run(problem, run_dir=tmp_path)
    chosen = [p for p in result.history if p.chosen]
    assert len(chosen) == 1 and result.final.network == problem.traced.network.with_widths(chosen[0].widths)
    again = RandomSearch(trials=4, seed=1, **STEPS).run(problem, run_dir=tmp_path, resume=True)  # read back
    assert [p.to_dict() for p in again.history] == [p.to_dict() for p in result.history]
