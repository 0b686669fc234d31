"""Many processes on one Optuna study: a JournalStorage file and a real PostgreSQL server.

Four worker processes fill one study with no trial lost or scored twice; all four killed
mid-trial, fresh workers fail the trials the dead ones left running, retry each once and finish.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from pgserver import Server
from standins import fixed_net, problem_for

from netopt.errors import ConfigError
from netopt.strategies import OptunaSearch
from netopt.strategies.optuna_search import RETRY_OF, SCORED, open_storage

HERE = Path(__file__).parent
TRIALS = 8
WORKER = f"""
import sys
from netopt.strategies import OptunaSearch
from standins import fixed_net, problem_for
problem = problem_for(fixed_net(), "60%", "95%", delay=float(sys.argv[2]))
print(OptunaSearch(trials={TRIALS}, storage=sys.argv[1], study_name="shared", short_term_steps=0,
                   long_term_steps=0, progress=False, seed=0).work(problem), flush=True)
"""


def _workers(tmp_path: Path, storage: str, count: int, delay: float) -> list[subprocess.Popen[str]]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    return [subprocess.Popen([sys.executable, str(script), storage, str(delay)], env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(count)]


def _finish(workers: list[subprocess.Popen[str]]) -> list[int]:
    out = []
    for w in workers:
        stdout, stderr = w.communicate(timeout=300)
        assert w.returncode == 0, stderr[-2000:]
        out.append(int(stdout.split()[-1]))
    return out


def _check(storage: str, scored_by_workers: int | None = None) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="shared", storage=open_storage(storage))
    trials = study.get_trials(deepcopy=False)
    states = {t.state for t in trials}
    assert optuna.trial.TrialState.RUNNING not in states and optuna.trial.TrialState.WAITING not in states
    scored = [t for t in trials if t.user_attrs.get(SCORED)]
    assert TRIALS <= len(scored) <= TRIALS + 3  # a worker stops once the study holds enough; others may be mid-trial
    assert len({t.number for t in scored}) == len(scored)
    if scored_by_workers is not None:
        assert scored_by_workers == len(scored)  # every scored trial was told once, by the one worker that scored it
    by_number = {t.number: t for t in trials}
    for failed in (t for t in trials if t.state == optuna.trial.TrialState.FAIL):  # each lost one retried to the end
        retry = failed
        while retry.state == optuna.trial.TrialState.FAIL:
            again = [t for t in trials if t.user_attrs.get(RETRY_OF) == retry.number]
            assert len(again) == 1, f"trial {retry.number} was lost and retried {len(again)} times"
            assert retry.params.items() <= again[0].params.items()  # what it had drawn (killed mid-draw: a part)
            retry = by_number[again[0].number]
        assert retry.state == optuna.trial.TrialState.COMPLETE
    return trials


def _storages(tmp_path: Path, pg: Server | None) -> str:
    if pg is None:
        return f"journal:{tmp_path / 'study.log'}"
    return pg.create_database(f"study_{uuid.uuid4().hex[:8]}")  # one each: killed sessions linger on the server


@pytest.mark.parametrize("backend", [pytest.param("journal", marks=pytest.mark.slow), "postgresql"])
def test_four_processes_fill_one_study_without_losing_or_repeating_a_trial(tmp_path: Path, backend: str,
                                                                          request: pytest.FixtureRequest) -> None:
    storage = _storages(tmp_path, request.getfixturevalue("pg") if backend == "postgresql" else None)
    counts = _finish(_workers(tmp_path, storage, 4, delay=0.05))
    _check(storage, sum(counts))
    result = OptunaSearch(trials=TRIALS, storage=storage, study_name="shared", short_term_steps=0, long_term_steps=0,
                          progress=False).study_result(problem_for(fixed_net(), "60%", "95%"))
    assert result.final.accuracy == max(p.score for p in result.history if p.score is not None)


@pytest.mark.parametrize("backend", ["journal", pytest.param("postgresql", marks=pytest.mark.slow)])
def test_all_workers_killed_mid_trial_then_resumed_lose_nothing(tmp_path: Path, backend: str,
                                                                request: pytest.FixtureRequest) -> None:
    storage = _storages(tmp_path, request.getfixturevalue("pg") if backend == "postgresql" else None)
    lost: list[optuna.trial.FrozenTrial] = []
    for _ in range(3):  # on a loaded machine a kill can fall between trials: then kill the next ones
        workers = _workers(tmp_path, storage, 4, delay=1.5)
        deadline = time.monotonic() + 120
        running: list[optuna.trial.FrozenTrial] = []
        while time.monotonic() < deadline and not running:
            time.sleep(0.3)
            try:
                study = optuna.load_study(study_name="shared", storage=open_storage(storage))
                running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            except KeyError:  # the study is not created yet
                continue
        for w in workers:
            w.send_signal(signal.SIGKILL)
            w.wait()
        study = optuna.load_study(study_name="shared", storage=open_storage(storage))
        lost = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if lost:
            break
    assert lost, "the workers were killed mid-trial (each spends most of its time in one)"
    _finish(_workers(tmp_path, storage, 2, delay=0.0))
    trials = _check(storage)
    failed = {t.number for t in trials if t.state == optuna.trial.TrialState.FAIL}
    assert {t.number for t in lost} <= failed  # the trials the killed workers left, failed and retried


def test_work_without_a_shared_storage_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"OptunaSearch.work needs storage= shared by every worker"):
        OptunaSearch(trials=2).work(problem_for(fixed_net(), "60%", "95%"))
    with pytest.raises(ConfigError, match=r"folder /nonexistent does not exist"):
        OptunaSearch(trials=2, storage="journal:/nonexistent/study.log").work(problem_for(fixed_net(), "60%", "95%"))
