"""The timing loops every latency backend shares: warm up, then time until runs and seconds suffice.

`time_calls` times one model; `time_interleaved` times several call by call in turn, so that
all of them run under the same load and the ratios between their figures hold where the
machine's speed does not: on a shared machine a network's own figure drifts from minute to
minute far more than its ratio to a network timed beside it (docs/measurement.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from netopt.measure.base import Measurement, MeasureSettings, summarize, time_interleaved

__all__ = ["time_calls", "time_interleaved"]


def time_calls(run: Callable[[], object], settings: MeasureSettings, fingerprint: str = "",
               what: str = "measurement", sync: Callable[[], None] | None = None) -> Measurement:
    """Milliseconds per call of `run`, by the protocol in `settings`.

    `sync` (e.g. torch.cuda.synchronize) runs after each call, inside the timed region, so
    asynchronous devices are timed to completion.
    """
    for _ in range(settings.warmup):
        run()
    if sync:
        sync()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < settings.max_runs and (
        len(samples) < settings.runs or time.perf_counter() - start < settings.min_seconds
    ):
        t0 = time.perf_counter_ns()
        run()
        if sync:
            sync()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return summarize(samples, "ms", fingerprint, what)

