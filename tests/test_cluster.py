"""Proposals on a real Dask cluster: a LocalCluster of 2 worker processes on loopback.

The same seed gives the same result serially, on a process pool and on the cluster; weights
and the objective are scattered once, tasks carry only widths and seeds; a worker killed
mid-proposal costs that proposal a rerun; bad addresses and foreign workers are one line.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import netopt
from netopt.cluster import QUIET, SPAWN_ENVIRON, TRIM, DaskExecutor, SlowWorkerWarning
from netopt.constraints import MACsConstraint, ReductionSchedule
from netopt.data import mnist
from netopt.errors import ConfigError
from netopt.objectives import Accuracy, Trainer
from netopt.runs import RunDir
from netopt.strategies import Problem, ProgressiveBarrier, RandomSearch

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed (pip install 'netopt[dask]')")
import dask  # noqa: E402  (after distributed: it brings dask's config for it)

HERE = Path(__file__).parent
DIGITS = mnist(size=12, holdout_per_class=5, test_fraction=0.1)
STEPS = {"short_term_steps": 3, "long_term_steps": 3, "progress": False}


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    env = {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}  # this module's objectives
    environ = {k: v for k, v in dask.config.get(SPAWN_ENVIRON).items() if k != TRIM}  # as DaskExecutor.local does
    with dask.config.set({SPAWN_ENVIRON: environ}):  # while the workers start, not after
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                           dashboard_address="127.0.0.1:0", env=env)
    with cluster, distributed.Client(cluster) as c:
        c.wait_for_workers(2, timeout=60)
        yield c


def problem(objective: Any = None) -> Problem:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 24, 3, 1, 1),
                          nn.BatchNorm2d(24), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(24, 10)).eval()
    traced = netopt.trace(model, DIGITS.train_x[:1])
    return Problem(traced, [MACsConstraint("50%", schedule=ReductionSchedule("25%"))],
                   objective or Accuracy(DIGITS, Trainer(lr=0.05, batch_size=16)))


def same(a: netopt.strategies.Result, b: netopt.strategies.Result) -> None:
    assert [p.to_dict() for p in a.history] == [p.to_dict() for p in b.history]
    assert a.final.network == b.final.network and a.final.accuracy == b.final.accuracy


def test_serial_a_process_pool_and_a_cluster_give_the_same_result(client: Any) -> None:
    serial = ProgressiveBarrier(**STEPS).run(problem())
    with ProcessPoolExecutor(2) as pool:
        pooled = ProgressiveBarrier(executor=pool, **STEPS).run(problem())
    clustered = ProgressiveBarrier(executor=client, **STEPS).run(problem())  # a Client is taken as it is
    same(pooled, serial)
    same(clustered, serial)
    searched = RandomSearch(trials=4, seed=1, batch_size=2, **STEPS)
    same(RandomSearch(trials=4, seed=1, batch_size=2, executor=client.get_executor(), **STEPS).run(problem()),
         searched.run(problem()))


def test_weights_and_objective_travel_once_and_tasks_carry_widths_and_seeds(client: Any) -> None:
    executor = DaskExecutor(client)
    scattered, sent = [], []
    real_scatter, real_submit = client.scatter, client.submit

    def scatter(value: Any, **kwargs: Any) -> Any:
        scattered.append((type(pickle.loads(value.data)).__name__, kwargs))  # what the shipment holds
        return real_scatter(value, **kwargs)

    def submit(fn: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append((args, kwargs))
        return real_submit(fn, *args, **kwargs)

    client.scatter, client.submit = scatter, submit
    try:
        result = ProgressiveBarrier(executor=executor, **STEPS).run(problem())
    finally:
        client.scatter, client.submit = real_scatter, real_submit
    iterations = len(result.family) - 1
    names = [n for n, _ in scattered]
    assert names.count("Accuracy") == 1 and names.count("Traced") == iterations  # one network an iteration
    assert all(kw == {"broadcast": True, "hash": False} for _, kw in scattered)  # on every worker: survives a death
    assert len(sent) == len(result.history)
    for (_fn, *args), kwargs in sent:
        assert kwargs["pure"] is False  # equal proposals are not merged by Dask's key hashing
        assert all(isinstance(a, distributed.Future | dict | int) for a in args), [type(a) for a in args]
        assert not any(isinstance(a, torch.Tensor | nn.Module) for a in args)


class DiesOnce(Accuracy):
    """Accuracy whose first proposal kills the worker process evaluating it (as a crash would)."""

    def __init__(self, marker: str) -> None:
        super().__init__(DIGITS, Trainer(lr=0.05, batch_size=16))
        self.marker = marker

    def short_term(self, module: nn.Module, steps: int, seed: int) -> Any:
        if steps and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        return super().short_term(module, steps, seed)


def _environ(name: str) -> str | None:
    """A variable of the process this runs in (a bound `os.environ.get` would carry the client's)."""
    return os.environ.get(name)


def test_a_local_cluster_starts_its_workers_quiet_and_without_the_malloc_trim() -> None:
    executor = DaskExecutor.local(2)
    try:
        settings = executor.client.run(lambda: {k: dask.config.get(k) for k in QUIET})
        assert list(settings.values()) == [QUIET, QUIET]
        assert set(executor.client.run(_environ, TRIM).values()) == {None}  # the workers' own environment
        extensions = executor.client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.extensions))
        assert "stealing" not in extensions
    finally:
        executor.shutdown()


def test_a_worker_that_dies_mid_proposal_costs_only_a_rerun(client: Any, tmp_path: Path) -> None:
    reference = ProgressiveBarrier(**STEPS).run(problem())
    marker = tmp_path / "died"
    result = ProgressiveBarrier(executor=client, **STEPS).run(problem(DiesOnce(str(marker))))
    assert marker.is_file() and int(marker.read_text()) != os.getpid()  # a worker process died
    same(result, reference)
    client.wait_for_workers(2, timeout=60)  # the nanny restarted it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_scheduler_that_does_not_answer_is_one_line_within_the_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"no Dask scheduler answered at 'tcp://127\.0\.0\.1:\d+' within 2 s") as info:
        DaskExecutor.connect(f"tcp://127.0.0.1:{_free_port()}", timeout=2)
    assert time.monotonic() - started < 15 and "\n" not in str(info.value)


FOREIGN_WORKER = """
import importlib.metadata as m, sys
real, kind = m.version, sys.argv[2]
def version(name):
    if name != "netopt":
        return real(name)
    if kind == "missing":
        raise m.PackageNotFoundError(name)
    return "0.0.1"
m.version = version
from distributed.cli.dask_worker import main
sys.argv = ["dask-worker", sys.argv[1], "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1"]
main()
"""


@pytest.mark.parametrize("kind, words", [("missing", "has no netopt installed"),
                                         ("other", r"has netopt 0\.0\.1, this process 0\.1\.0")])
def test_a_worker_without_this_netopt_is_refused_by_name(tmp_path: Path, kind: str, words: str) -> None:
    script = tmp_path / "worker.py"
    script.write_text(FOREIGN_WORKER)
    with distributed.LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=None, processes=True) as cluster:
        worker = subprocess.Popen([sys.executable, str(script), cluster.scheduler_address, kind],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with pytest.raises(ConfigError, match=rf"Dask worker tcp://127\.0\.0\.1:\d+ {words}") as info:
                DaskExecutor.connect(cluster.scheduler_address, timeout=60)
            assert "\n" not in str(info.value)
        finally:
            worker.kill()
            worker.wait()


def test_workers_with_dasks_malloc_setting_are_warned_about() -> None:
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as c, \
            distributed.Client(c) as client, pytest.warns(SlowWorkerWarning, match="about 2x slower"):
        DaskExecutor(client, fit=False)  # fitted (the default), they are not: tests/test_cluster_fit.py


def test_a_scheduler_without_workers_is_one_line() -> None:
    with distributed.LocalCluster(n_workers=0, host="127.0.0.1", dashboard_address=None) as cluster, \
            pytest.raises(ConfigError, match="has no worker after 1 s"):
        DaskExecutor.connect(cluster.scheduler_address, timeout=1)


CONFIG = """
run_dir = "{run}"
[model]
size = 16
pretrain_steps = 30
[data]
holdout_per_class = 5
test_fraction = 0.1
[training]
short_term_steps = 2
long_term_steps = 2
[[constraints]]
resource = "macs"
budget = "60%"
schedule = {{ initial = "20%" }}
"""


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NETOPT_CACHE": os.environ.get("NETOPT_CACHE", str(Path.home() / ".cache" / "netopt"))}
    return subprocess.run([sys.executable, "-m", "netopt.cli", *args], capture_output=True, text=True, timeout=600,
                          env=env)


@pytest.mark.slow
def test_the_cli_runs_on_a_cluster_and_on_local_workers_with_the_serial_result(client: Any, tmp_path: Path) -> None:
    runs = {}
    for name, extra in (("serial", []), ("dask", ["--dask", client.scheduler.address]), ("pool", ["--workers", "2"])):
        path = tmp_path / f"{name}.toml"
        path.write_text(CONFIG.format(run=tmp_path / name))
        done = _cli("adapt", str(path), *extra)
        assert done.returncode == 0, done.stderr[-2000:]
        run = RunDir.open(tmp_path / name)
        runs[name] = (run.history(), run.summary("final"), run.network("final"))
        if name == "dask":
            assert "Dask scheduler" in done.stderr and "dashboard http://127.0.0.1:" in done.stderr
    assert len(runs["serial"][0]) > 2
    assert runs["dask"] == runs["serial"] and runs["pool"] == runs["serial"]


def test_the_cli_says_in_one_line_when_no_scheduler_answers(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(CONFIG.format(run=tmp_path / "run"))
    done = _cli("adapt", str(path), "--dask", f"tcp://127.0.0.1:{_free_port()}", "--dask-timeout", "1")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no Dask scheduler answered" in done.stderr
    assert not (tmp_path / "run" / "config.json").exists()
