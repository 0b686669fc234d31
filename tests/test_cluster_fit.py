"""A user's own Dask workers fitted for torch training: a real LocalCluster with Dask's defaults.

Dask's nannies start workers with MALLOC_TRIM_THRESHOLD_ set, which slows torch down; wrapping a
client fits each worker once (glibc's thresholds set at run time, torch's threads, its statistical
profiler stopped and its monitors slowed as `DaskExecutor.local` starts its own), and a worker
that cannot be fitted is warned about once, with the fix. Timing is the benchmark's business
(benchmarks/bench_scale.py): these tests assert what the workers report.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import netopt.cluster
from netopt.cluster import FITTED, MMAP_THRESHOLD, QUIET_CALLBACKS, TRIM, DaskExecutor, SlowWorkerWarning

distributed = pytest.importorskip("distributed", reason="the dask extra is not installed (pip install 'netopt[dask]')")

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """One worker process of one thread, started with Dask's defaults (the nanny's TRIM included)."""
    env = {"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}  # this module, on the worker
    before = os.environ.get(TRIM)
    try:
        with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                      dashboard_address=None, env=env) as cluster, distributed.Client(cluster) as c:
            c.wait_for_workers(1, timeout=60)
            yield c
    finally:  # the nanny leaves TRIM in this process's environment too, where later processes would inherit it
        os.environ.pop(TRIM, None) if before is None else os.environ.update({TRIM: before})


@pytest.fixture
def unfitted(client: Any) -> Any:
    """The worker as it started: netopt's mark removed and its glibc lookup as netopt wrote it."""
    client.run(_forget, False)
    yield client
    client.run(_forget, False)


def _forget(without_glibc: bool, dask_worker: Any = None) -> None:
    """On the worker: forget the fit, its monitors as they started; `without_glibc` makes the C library
    look like another (musl)."""
    os.environ.pop(FITTED, None)
    netopt.cluster._libc = (lambda: None) if without_glibc else _REAL_LIBC  # type: ignore[attr-defined]
    for name, callback in dask_worker.periodic_callbacks.items():
        if name in QUIET_CALLBACKS:
            callback.callback_time = _STARTED.setdefault(name, callback.callback_time)
            if name.startswith("profile") and not callback.is_running():
                callback.start()


_STARTED: dict[str, float] = {}
"""On the worker: its monitors' intervals as Dask started them."""


def _monitors(dask_worker: Any) -> dict[str, tuple[bool, float]]:
    """On the worker: whether each of the monitors netopt quiets runs, and its interval (ms)."""
    return {n: (c.is_running(), c.callback_time) for n, c in dask_worker.periodic_callbacks.items()
            if n in QUIET_CALLBACKS}


def _quieted(client: Any, timeout: float = 10.0) -> bool:
    """Whether every worker's profiler is stopped and its tick slowed, within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(client.run(_monitors).values())
        if all(not m["profile"][0] and not m["profile-cycle"][0] and m["tick"][1] == 1000 for m in found):
            return True
        time.sleep(0.1)
    return False


_REAL_LIBC = netopt.cluster._libc


def _environ(name: str) -> str | None:
    """On the worker: its own variable (`os.environ.get` would carry a copy of this process's environment)."""
    return os.environ.get(name)


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _wrap(client: Any) -> tuple[DaskExecutor, list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        executor = DaskExecutor(client)
    return executor, [w for w in caught if issubclass(w.category, SlowWorkerWarning)]


def test_a_worker_with_dasks_defaults_is_fitted_and_not_warned_about(unfitted: Any) -> None:
    assert set(unfitted.run(_environ, TRIM).values()) == {"65536"}  # Dask's defaults, as a user starts them
    executor, slow = _wrap(unfitted)
    assert slow == []
    assert set(unfitted.run(_environ, FITTED).values()) == {"mallopt"}
    assert executor.fit_workers() == dict.fromkeys(unfitted.run(os.getpid), "mallopt")  # once: the mark stays


def test_tasks_run_with_one_torch_thread_on_a_one_thread_worker(unfitted: Any) -> None:
    executor, _ = _wrap(unfitted)
    assert executor.submit(_torch_threads).result(timeout=60) == 1
    assert set(unfitted.run(_environ, "OMP_NUM_THREADS").values()) == {"1"}


def test_a_worker_that_joins_later_is_fitted_by_its_first_task(unfitted: Any) -> None:
    executor = DaskExecutor(unfitted, fit=False, check_workers=False)
    assert set(unfitted.run(_environ, FITTED).values()) == {None}
    executor.submit(abs, -1).result(timeout=60)
    assert set(unfitted.run(_environ, FITTED).values()) == {"mallopt"}
    assert _quieted(unfitted)  # by its event loop, once the task handed it over


def test_a_worker_with_dasks_defaults_runs_without_its_profiler_once_fitted(unfitted: Any) -> None:
    (started,) = unfitted.run(_monitors).values()
    assert started["profile"] == (True, 10)  # Dask's default: every thread's stack every 10 ms
    _wrap(unfitted)
    assert _quieted(unfitted, timeout=1.0)
    (fitted,) = unfitted.run(_monitors).values()
    assert fitted["monitor"][1] >= 5000 and fitted.get("memory_monitor", (False, 1000))[1] >= 1000


def test_a_worker_without_glibc_gives_one_warning_with_the_fix(unfitted: Any) -> None:
    unfitted.run(_forget, True)
    _, slow = _wrap(unfitted)
    assert len(slow) == 1
    message = str(slow[0].message)
    assert "could not undo it there (no glibc to call mallopt in)" in message
    assert f"MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}" in message and "DaskExecutor.local" in message
    assert set(unfitted.run(_environ, FITTED).values()) == {"unfit: no glibc to call mallopt in"}


def test_fit_false_leaves_the_worker_alone_and_warns_as_before(unfitted: Any) -> None:
    with pytest.warns(SlowWorkerWarning, match="about 2x slower.*fit=True"):
        DaskExecutor(unfitted, fit=False)
    assert set(unfitted.run(_environ, FITTED).values()) == {None}
    assert not _quieted(unfitted, timeout=0.5)
