"""OptunaSearch (TPE and NSGA-II) on the fixed joint problem, with the ParamsKept stand-in."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch
from standins import ParamsKept, fixed_net, problem_for

from netopt.errors import ConfigError
from netopt.ir import Builder, Network
from netopt.strategies import Candidate, Problem, ProgressiveBarrier, Result
from netopt.strategies.optuna_search import OptunaSearch, _Space

STEPS = {"short_term_steps": 2, "long_term_steps": 3, "progress": False}


def search(**settings: object) -> OptunaSearch:
    return OptunaSearch(**{"trials": 6, **STEPS, **settings})  # type: ignore[arg-type]


def meets_every_bound(result: Result, problem: Problem) -> bool:
    return all(b.met(result.final.resources[b.resource]) and b.met(b.estimate(result.final.network))
               for b in problem.bind())


def dominates(a: Candidate, b: Candidate) -> bool:
    no_worse = a.accuracy >= b.accuracy and all(a.resources[r] <= b.resources[r] for r in a.resources)
    return no_worse and (a.accuracy > b.accuracy or any(a.resources[r] < b.resources[r] for r in a.resources))


class Counted(ParamsKept):
    """ParamsKept that counts short-term fine-tunings, and stops the run after `stop_after` of them."""

    def __init__(self, full: int, stop_after: int | None = None) -> None:
        super().__init__(full)
        self.trained, self.stop_after = 0, stop_after

    def short_term(self, module: torch.nn.Module, steps: int, seed: int):  # type: ignore[no-untyped-def]
        if self.stop_after is not None and self.trained == self.stop_after:
            raise KeyboardInterrupt("stopped mid-search")
        self.trained += 1
        return super().short_term(module, steps, seed)

    def long_term(self, module: torch.nn.Module, steps: int, seed: int):  # type: ignore[no-untyped-def]
        return ParamsKept.short_term(self, module, steps, seed)

    def test(self, module: torch.nn.Module) -> float:
        return ParamsKept.short_term(self, module, 0, 0).score


def counted_problem(stop_after: int | None = None):  # type: ignore[no-untyped-def]
    problem = problem_for(fixed_net(), "45%", "90%")
    return replace(problem, objective=Counted(problem.objective.full, stop_after))  # type: ignore[attr-defined,arg-type]


@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])
def test_the_final_network_meets_every_budget(sampler: str) -> None:
    problem = problem_for(fixed_net(), "45%", "90%")
    result = search(sampler=sampler).run(problem)
    assert meets_every_bound(result, problem)
    assert result.strategy == "OptunaSearch"
    assert sum(p.score is not None for p in result.history) == 6  # the compute budget: networks fine-tuned
    assert all(p.score is None for p in result.history if not all(
        b.met(p.resources[b.resource]) for b in problem.bind()))  # nothing over budget was trained
    assert 0 < result.training_steps <= search(sampler=sampler).training_budget(problem)


def test_nsga2_returns_a_feasible_pareto_front() -> None:
    problem = problem_for(fixed_net(), "45%", "90%")
    result = search(sampler="nsga2", trials=10).run(problem)
    assert len(result.family) >= 2
    for member in result.family:
        assert all(b.met(member.resources[b.resource]) for b in problem.bind())
        assert not any(dominates(other, member) for other in result.family)
    scored = {p.iteration for p in result.history if p.score is not None}
    assert {m.iteration for m in result.family} <= scored


def test_bad_settings_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"sampler 'cmaes' is unknown; use one of 'tpe', 'nsga2'"):
        OptunaSearch(sampler="cmaes")
    with pytest.raises(ConfigError, match=r"trials=0 is not a compute budget"):
        OptunaSearch(trials=0)
    with pytest.raises(ConfigError, match=r"max_rejections=-1"):
        OptunaSearch(max_rejections=-1)
    with pytest.raises(ConfigError, match=r"warm_start\[0\] .* does not fit the network: width 12 is invalid"):
        search(warm_start=[{"conv2d0": 12}]).run(problem_for(fixed_net(), "45%", "90%"))


def test_a_storage_that_cannot_be_opened_is_a_config_error(tmp_path: Path) -> None:
    url = "sqlite:////nonexistent/dir/x.db"
    with pytest.raises(ConfigError, match=r"storage 'sqlite:////nonexistent/dir/x.db' cannot be opened") as info:
        search(storage=url).run(problem_for(fixed_net(), "45%", "90%"), run_dir=tmp_path / "run")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "run").exists()  # failed before the run folder was made: the same call can be retried


@pytest.mark.skipif(importlib.util.find_spec("psycopg2") is not None, reason="a postgresql driver is installed")
def test_a_storage_without_its_driver_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now raises ImportError
    with pytest.raises(ConfigError, match=r"needs the postgres extra: pip install 'netopt\[postgres\]'"):
        search(storage="postgresql://u:pw@localhost/db").run(problem_for(fixed_net(), "45%", "90%"))


def test_a_storage_that_does_not_answer_is_one_line_without_the_password() -> None:
    with pytest.raises(ConfigError, match=r"storage postgresql://u:\*\*\*@127\.0\.0\.1:1/db: cannot connect") as info:
        search(storage="postgresql://u:pw@127.0.0.1:1/db").run(problem_for(fixed_net(), "45%", "90%"))
    assert "pw" not in str(info.value) and "\n" not in str(info.value)


def test_a_run_directory_keeps_the_study_in_sqlite(tmp_path: Path) -> None:
    result = search().run(problem_for(fixed_net(), "45%", "90%"), run_dir=tmp_path)
    assert (tmp_path / "optuna.db").is_file()
    study = optuna.load_study(study_name="OptunaSearch", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert len(study.trials) >= len(result.history)  # repeats of scored assignments are told, not recorded
    assert {tuple(sorted(t.params.items())) for t in study.trials} == {
        tuple(sorted(p.widths.items())) for p in result.history}
    feasible = [t for t in study.trials if all(v <= 0 for v in t.constraints.values())]
    assert {t.value for t in feasible} <= {p.score for p in result.history}
    with pytest.raises(ConfigError, match="study 'OptunaSearch' already exists in sqlite:///"):
        search(storage=f"sqlite:///{tmp_path / 'optuna.db'}").run(problem_for(fixed_net(), "45%", "90%"))


def test_warm_start_widths_are_the_first_trials() -> None:
    problem = problem_for(fixed_net(), "45%", "90%")
    given = [{"conv2d0": 16, "conv2d1": 16, "conv2d3": 32}, {"conv2d3": 8}]  # the second is completed at full width
    result = search(warm_start=given).run(problem)
    assert result.history[0].widths == given[0]
    assert result.history[1].widths == {"conv2d0": 32, "conv2d1": 48, "conv2d3": 8}
    barrier = ProgressiveBarrier(short_term_steps=0, long_term_steps=0, progress=False).run(problem)
    warmed = OptunaSearch.from_result(barrier, trials=4, **STEPS)  # type: ignore[arg-type]
    assert warmed.warm_start[0] == barrier.final.network.widths
    assert warmed.run(problem).history[0].widths == barrier.final.network.widths


@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])
def test_the_same_seed_gives_the_same_search(sampler: str) -> None:
    problem = problem_for(fixed_net(), "45%", "90%")
    first, second = search(sampler=sampler, seed=5).run(problem), search(sampler=sampler, seed=5).run(problem)
    assert first.final.network == second.final.network and first.final.accuracy == second.final.accuracy
    assert [p.to_dict() for p in first.history] == [p.to_dict() for p in second.history]
    assert [c.network for c in first.family] == [c.network for c in second.family]
    other = search(sampler=sampler, seed=6).run(problem)
    assert [p.widths for p in other.history] != [p.widths for p in first.history]


@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])
def test_a_stopped_run_resumes_to_the_uninterrupted_result(tmp_path: Path, sampler: str) -> None:
    whole_problem = counted_problem()
    whole = search(sampler=sampler, trials=8).run(whole_problem, run_dir=tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        search(sampler=sampler, trials=8).run(counted_problem(stop_after=4), run_dir=tmp_path / "stopped")
    assert not (tmp_path / "stopped" / "final").exists()
    resumed_problem = counted_problem()
    resumed = search(sampler=sampler, trials=8).run(resumed_problem, run_dir=tmp_path / "stopped", resume=True)
    assert resumed.final.network == whole.final.network and resumed.final.accuracy == whole.final.accuracy
    assert [p.to_dict() for p in resumed.history] == [p.to_dict() for p in whole.history]
    assert [c.network for c in resumed.family] == [c.network for c in whole.family]
    assert whole_problem.objective.trained == 8
    assert resumed_problem.objective.trained == 4  # the four scored before the stop were read back
    studies = [optuna.load_study(study_name="OptunaSearch", storage=f"sqlite:///{tmp_path / run / 'optuna.db'}")
               for run in ("whole", "stopped")]
    assert [t.params for t in studies[0].trials] == [t.params for t in studies[1].trials]


def off_grid_net() -> Network:
    b = Builder((3, 16, 16))
    x = b.relu(b.bn(b.conv(b.input, 30, 3, stride=2)))  # 30 channels on a step of 8: 8, 16, 24, 30
    x = b.relu(b.bn(b.conv(x, 20, 3)))
    return b.build(b.linear(b.flatten(b.adaptive_avgpool(x)), 10))


def test_groups_whose_full_width_is_off_the_step_grid_are_searched_by_index() -> None:
    net = off_grid_net()
    space = _Space(net)
    for g in net.groups:
        for width in g.valid_widths():
            widths = {**net.widths, g.id: width}
            params = space.encode(widths)
            assert f"{g.id}.index" in params
            assert space.suggest(optuna.trial.FixedTrial(params)) == widths
    problem = problem_for(net, "50%", "100%")
    result = search(trials=4).run(problem)
    assert meets_every_bound(result, problem)
    assert all(net.with_widths(p.widths).widths == p.widths for p in result.history)


def test_the_worker_count_does_not_change_the_search() -> None:
    from concurrent.futures import ProcessPoolExecutor

    problem = problem_for(fixed_net(), "45%", "90%")
    settings = {"sampler": "tpe", "trials": 6, "short_term_steps": 2, "long_term_steps": 2, "seed": 0,
                "progress": False}
    serial = OptunaSearch(**settings).run(problem)  # type: ignore[arg-type]
    with ProcessPoolExecutor(2) as pool:
        pooled = OptunaSearch(executor=pool, **settings).run(problem)  # type: ignore[arg-type]
    assert [p.to_dict() for p in pooled.history] == [p.to_dict() for p in serial.history]
    with pytest.raises(ConfigError, match="batch_size=0 must be an integer >= 1"):
        OptunaSearch(batch_size=0)
