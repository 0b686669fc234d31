"""Proposals on a Dask cluster: `DaskExecutor`, a `concurrent.futures.Executor` over a `distributed.Client`.

Every strategy takes `executor=`; give it a `DaskExecutor` (or a `Client`, or
`client.get_executor()`, which are wrapped in one) and each proposal's fine-tune and score runs
on a worker. What travels is small and explicit:

- the traced network (its IR and its weights) and the objective are *scattered* once, to every
  worker (`broadcast`, so that a worker dying does not lose them), and each task names them
  instead of carrying them; a task itself is the widths, the steps and the seed;
- tasks are submitted with `pure=False`: two proposals with the same arguments are two
  evaluations, never merged by Dask's key hashing;
- an objective built by a factory (`netopt.app.factory.ConfigObjective`, what `netopt adapt
  --dask` uses) travels as the factory's name and options and is built on the worker, so its
  data loaders open there.

A worker that dies mid-proposal costs that proposal a rerun elsewhere (the scheduler's
`allowed-failures`, 3 by default); the result is the same, since every proposal's seed is its
own. Each worker must have this netopt and this torch installed (`pip install netopt[dask]`);
one without netopt, or with another version, is refused by name before any work.
Each worker is fitted for torch training once (`_fit_worker`: glibc's allocator thresholds, the
thread counts), so that a cluster started with Dask's defaults runs at the speed of
`DaskExecutor.local`; one that cannot be fitted is warned about once, with the fix.
Dask is an optional extra, imported only here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import logging
import os
import pickle
import uuid
import warnings
from collections import OrderedDict
from concurrent.futures import CancelledError, Executor, Future
from typing import TYPE_CHECKING, Any

from netopt.errors import ConfigError, ObjectiveError, first_line

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["DaskExecutor", "CONNECT_TIMEOUT", "QUIET", "SlowWorkerWarning", "dask_client"]

LOG = logging.getLogger("netopt.progress")

CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a scheduler to answer, and for its first worker to join."""

_INLINE = (int, float, str, bool, bytes, type(None))
SPAWN_ENVIRON, TRIM = "distributed.nanny.pre-spawn-environ", "MALLOC_TRIM_THRESHOLD_"
"""Dask's nannies start workers with MALLOC_TRIM_THRESHOLD_=65536, which turns glibc's dynamic mmap
threshold off: every tensor over 128 KiB is then mmapped and unmapped, which slows torch training down
(benchmarks/bench_scale.py measures by how much). netopt's own clusters go without it; `_fit_worker`
undoes it on anyone else's."""

FITTED = "NETOPT_WORKER_FIT"
"""Set in a worker process's environment once `_fit_worker` ran there: what it did to the allocator."""
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD, TRIM_THRESHOLD = 32 << 20, 64 << 20
"""The ceiling of glibc's dynamic mmap threshold on 64 bits (DEFAULT_MMAP_THRESHOLD_MAX) and twice it
for the trim threshold, as glibc's dynamic rule pairs them: set at run time, tensors up to 32 MiB come
from the heap again instead of a fresh mapping each."""
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


QUIET: dict[str, Any] = {
    "distributed.worker.profile.enabled": False,
    "distributed.scheduler.work-stealing": False,
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.admin.tick.interval": "1s",
}
"""Dask settings for workers that each run one proposal at a time, in seconds to minutes: no
statistical profiler (it samples every thread's stack every 10 ms, beside torch), no work
stealing (proposals are alike; queued on the scheduler they go to whichever worker frees first),
and the system and memory monitors and the event-loop tick at seconds, not milliseconds.
`DaskExecutor.local` starts its workers with them (`quiet=False`: Dask's defaults); set them in
your workers' Dask config on a cluster of your own."""


class SlowWorkerWarning(UserWarning):
    """Dask workers started in a way that slows torch down (see `TRIM`)."""
PACKAGES = ("netopt", "torch")
"""What every worker must have, at the version this process has."""


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise ConfigError("running on a Dask cluster needs the dask extra: pip install 'netopt[dask]' (dask "
                          "distributed); or run without --dask") from None
    return distributed


def dask_client(address: str, timeout: float = CONNECT_TIMEOUT) -> Client:
    """A client of the scheduler at `address`, or one ConfigError line within `timeout` seconds."""
    distributed = _distributed()
    try:
        return distributed.Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ConfigError(f"no Dask scheduler answered at {address!r} within {timeout:.0f} s ({first_line(exc, 120)}); "
                          "start one (dask scheduler), check the address (tcp://host:8786), or run without "
                          "--dask") from None


def _fit_worker(dask_worker: Any = None) -> str:
    """Fit this worker process for torch training, once: glibc's thresholds back where Dask's `TRIM`
    moved them (`MMAP_THRESHOLD`), torch's threads as the worker's OMP_NUM_THREADS says (else 1), and
    its monitors as `QUIET` sets them (`_quiet`). `dask_worker`: the worker, where Dask's `run` hands
    it in; else (in a task) the worker this runs on. Returns what was done to the allocator
    ("mallopt", "as started", or "unfit: why"), kept in `FITTED`."""
    done = os.environ.get(FITTED)
    if done is None:
        _fit_threads()
        done = os.environ[FITTED] = _fit_allocator() if TRIM in os.environ else "as started"
        if dask_worker is not None:
            _quiet(dask_worker)
        else:
            _quiet_later()
    return done


QUIET_CALLBACKS: dict[str, float | None] = {
    "profile": None, "profile-cycle": None,
    "monitor": float(QUIET["distributed.admin.system-monitor.interval"].removesuffix("s")),
    "memory_monitor": float(QUIET["distributed.worker.memory.monitor-interval"].removesuffix("s")),
    "tick": float(QUIET["distributed.admin.tick.interval"].removesuffix("s")),
}
"""`QUIET` on a running worker: its periodic callbacks by name, stopped (None) or slowed to seconds."""


def _quiet(worker: Any) -> list[str]:
    """A running worker's statistical profiler stopped and its monitors slowed to `QUIET`'s seconds: a
    user's worker, started with Dask's defaults, then runs proposals as `DaskExecutor.local`'s do. Run
    in the worker's event loop; returns the callbacks changed, by name."""
    changed = []
    for name, seconds in QUIET_CALLBACKS.items():
        callback = getattr(worker, "periodic_callbacks", {}).get(name)
        if callback is None:
            continue
        if seconds is None and callback.is_running():
            callback.stop()
            changed.append(name)
        elif seconds is not None and callback.callback_time < seconds * 1000:
            callback.callback_time = seconds * 1000
            changed.append(name)
    if "tick" in changed:  # the interval the worker checks its event loop's ticks against
        worker._tick_interval = QUIET_CALLBACKS["tick"]
    return changed


def _quiet_later() -> None:
    """`_quiet` for the worker whose task this runs in, handed to its event loop (a worker that joined
    after the executor fitted the others); nothing outside a worker."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return
    worker.loop.add_callback(_quiet, worker)


def _environ(name: str) -> str | None:
    """A variable of the environment of the process this runs in (`os.environ.get` would travel with a copy
    of the client's environment, pickled with the bound method)."""
    return os.environ.get(name)


def _libc() -> Any:
    """glibc, or None where the C library is another (musl) or cannot be loaded."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (only glibc has it)
    except (OSError, AttributeError):
        return None
    return libc


def _fit_allocator() -> str:
    """glibc's mmap and trim thresholds set explicitly, as its dynamic rule would have grown them."""
    libc = _libc()
    if libc is None:
        return "unfit: no glibc to call mallopt in"
    if libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return "unfit: glibc's mallopt refused the thresholds"
    return "mallopt"


def _fit_threads() -> int:
    """One torch thread per task thread unless the worker was started with OMP_NUM_THREADS: proposals
    fill the cores side by side, and more threads each would oversubscribe them."""
    try:
        threads = max(1, int(os.environ.get("OMP_NUM_THREADS") or 1))
    except ValueError:
        threads = 1
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, str(threads))
    import torch

    if torch.get_num_threads() != threads:  # per calling thread under OpenMP: `_run` repeats it in the task's
        torch.set_num_threads(threads)
    return threads


class DaskExecutor(Executor):
    """Runs each submitted task on a Dask cluster (see the module docstring).

    `DaskExecutor(client)` uses a client of yours (it stays yours: `shutdown` leaves it open);
    `DaskExecutor.connect(address)` and `DaskExecutor.local(workers)` make and own one.
    `check_workers` (default True) refuses workers without this netopt and torch; `fit` (default True)
    fits each worker for torch training (`fit_workers`), else workers with `TRIM` are only warned about."""

    def __init__(self, client: Client, *, check_workers: bool = True, owned: tuple[Any, ...] = (),
                 timeout: float = CONNECT_TIMEOUT, keep: int = 8, fit: bool = True) -> None:
        self.client = client
        self._owned = owned  # what shutdown closes: a client and cluster this executor made
        self._scattered: OrderedDict[int, tuple[Any, Any]] = OrderedDict()
        self._keep = keep
        if check_workers:
            self.check_workers(timeout)
        if fit:
            self.fit_workers()
        elif check_workers:
            self._warn_trimmed()

    @classmethod
    def connect(cls, address: str, timeout: float = CONNECT_TIMEOUT) -> DaskExecutor:
        """An executor on the scheduler at `address` ("tcp://host:8786")."""
        client = dask_client(address, timeout)
        try:
            return cls(client, owned=(client,), timeout=timeout)
        except BaseException:
            client.close()
            raise

    @classmethod
    def local(cls, workers: int, threads_per_worker: int = 1, quiet: bool = True) -> DaskExecutor:
        """An executor on a `LocalCluster` of `workers` processes on loopback (one thread each),
        with Dask's `QUIET` settings unless `quiet=False`."""
        import dask

        distributed = _distributed()
        environ = {k: v for k, v in dask.config.get(SPAWN_ENVIRON, {}).items() if k != TRIM}
        with dask.config.set({SPAWN_ENVIRON: environ, **(QUIET if quiet else {})}):  # see TRIM; the nannies pass it on
            cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker,
                                               processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0")
        client = distributed.Client(cluster)
        return cls(client, owned=(client, cluster), check_workers=False)

    @property
    def dashboard(self) -> str | None:
        """The Dask dashboard's address (where progress across workers shows), if it serves one."""
        link = getattr(self.client, "dashboard_link", None)
        return str(link) if link else None

    def check_workers(self, timeout: float = CONNECT_TIMEOUT) -> None:
        """Wait for a worker, then refuse any that lacks this netopt or torch, naming it."""
        try:
            self.client.wait_for_workers(1, timeout=timeout)
        except (TimeoutError, OSError):
            address = self.client.scheduler.address if self.client.scheduler else "?"
            raise ConfigError(f"the Dask scheduler {address} has no worker after {timeout:.0f} s; start some "
                              "(dask worker ADDRESS) with netopt installed") from None
        for package in PACKAGES:
            mine = importlib.metadata.version(package)
            found = self.client.run(importlib.metadata.version, package, on_error="return")
            for worker, version in sorted(found.items()):
                if isinstance(version, BaseException):
                    raise ConfigError(f"Dask worker {worker} has no {package} installed ({type(version).__name__}); "
                                      f"install {package} {mine} on every worker (pip install 'netopt[dask]')")
                if version != mine:
                    raise ConfigError(f"Dask worker {worker} has {package} {version}, this process {mine}: results "
                                      f"would not be reproducible; install {package} {mine} on every worker")

    def fit_workers(self) -> dict[str, str]:
        """Fit every worker for torch training (`_fit_worker`; one that joins later, by its first task) and
        warn once, with the fix, about those it cannot; returns what each worker's allocator got."""
        found = {w: v if isinstance(v, str) else f"unfit: {first_line(v, 80)}"
                 for w, v in sorted(self.client.run(_fit_worker, on_error="return").items())}
        unfit = {w: v for w, v in found.items() if v.startswith("unfit")}
        if unfit:
            why = next(iter(unfit.values())).removeprefix("unfit: ")
            warnings.warn(f"Dask workers {list(unfit)[:3]} run with {TRIM} set (Dask's default) and netopt could not "
                          f"undo it there ({why}): glibc then maps and unmaps every tensor over 128 KiB, and training "
                          f"runs about 2x slower; start them with MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD} in their "
                          f"environment, or without {TRIM} (dask config {SPAWN_ENVIRON}), or use DaskExecutor.local",
                          SlowWorkerWarning, stacklevel=3)
        return found

    def _warn_trimmed(self) -> None:
        """Warn about workers that run with `TRIM` set and were not fitted (`fit=False`)."""
        trimmed = sorted(w for w, v in self.client.run(_environ, TRIM).items() if v is not None)
        if trimmed:
            warnings.warn(f"Dask workers {trimmed[:3]} run with {TRIM} set (Dask's default): glibc then maps and "
                          "unmaps every tensor over 128 KiB, and training runs about 2x slower; start them without it "
                          f"(dask config {SPAWN_ENVIRON}, or DaskExecutor.local), or let netopt fit them (fit=True)",
                          SlowWorkerWarning, stacklevel=3)

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        """`fn(*args, **kwargs)` on a worker; large arguments go by their scattered copy."""
        sent = [self._by_reference(a) for a in args]
        task = self.client.submit(_run, fn, *sent, pure=False, **{k: self._by_reference(v) for k, v in kwargs.items()})
        return _bridged(task)

    def _by_reference(self, value: Any) -> Any:
        """A small value as it is; anything else scattered once to every worker, then named."""
        if isinstance(value, _INLINE) or (isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, _INLINE) for k, v in value.items())):
            return value
        key = id(value)
        if key in self._scattered:
            self._scattered.move_to_end(key)
            return self._scattered[key][1]
        future = self.client.scatter(_Shipped(value), broadcast=True, hash=False)
        self._scattered[key] = (value, future)  # the value held too: its id stays its own
        while len(self._scattered) > self._keep:  # an old iteration's network: released on the cluster
            self._scattered.popitem(last=False)
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._scattered.clear()
        for owned in self._owned:
            owned.close()
        self._owned = ()

    def __repr__(self) -> str:
        return f"DaskExecutor({self.client.scheduler.address if self.client.scheduler else '?'})"


class _Shipped:
    """A value pickled once in this process and unpickled once per worker process.

    Dask serializes an `nn.Module` attribute by attribute (`register_generic`), which a torch.fx
    GraphModule (its class made at run time) does not survive; plain pickle is what it supports."""

    def __init__(self, value: Any) -> None:
        self.key = uuid.uuid4().hex
        self.data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def value(self) -> Any:
        found = _UNPACKED.get(self.key)
        if found is None:
            found = _UNPACKED[self.key] = pickle.loads(self.data)
            while len(_UNPACKED) > 8:
                _UNPACKED.pop(next(iter(_UNPACKED)))
        return found


_UNPACKED: dict[str, Any] = {}
"""What this (worker) process has unpickled, by shipment; the newest few kept."""


def _run(fn: Any, *args: Any, **kwargs: Any) -> bytes:
    """On a worker: `fn` on the unpacked arguments, its result pickled whole (see `_Shipped`)."""
    if FITTED in os.environ:
        _fit_threads()  # OpenMP keeps the thread count per thread: this task's thread too
    else:
        _fit_worker()  # a worker that joined after the executor fitted the others

    def unpacked(v: Any) -> Any:
        return v.value() if isinstance(v, _Shipped) else v
    result = fn(*map(unpacked, args), **{k: unpacked(v) for k, v in kwargs.items()})
    return pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)


def _bridged(task: Any) -> Future[Any]:
    """A concurrent.futures.Future that follows a Dask future (whose result `_run` pickled)."""
    future: Future[Any] = Future()
    future.set_running_or_notify_cancel()

    def done(t: Any) -> None:
        try:
            future.set_result(pickle.loads(t.result()))
        except CancelledError as exc:
            future.set_exception(exc)
        except BaseException as exc:
            future.set_exception(_explained(exc))

    task.add_done_callback(done)
    return future


def _explained(exc: BaseException) -> BaseException:
    """Dask's KilledWorker (a task that took its worker down every time it ran) as one line."""
    if type(exc).__name__ == "KilledWorker":
        return ObjectiveError(f"its Dask worker died each time it ran it ({first_line(exc, 160)}): the "
                           "evaluation crashes its process (out of memory?); run it without --dask to see the error")
    return exc


def as_executor(executor: Any) -> Any:
    """A Dask `Client` or `client.get_executor()` as a DaskExecutor; anything else as it is."""
    module = type(executor).__module__ or ""
    if not module.startswith("distributed"):
        return executor
    client = executor if hasattr(executor, "scheduler_info") else getattr(executor, "_client", None)
    if client is None:
        return executor
    return DaskExecutor(client)
