"""ExecuTorch programs sent to `netopt agent`, each loaded and timed in a process of its own.

ExecuTorch's runtime verifies a program before it runs it, yet a program damaged past its
verifier can abort the process or corrupt its heap (a few bit flips in a `.pte` do). So the
agent never loads one itself: a worker process imports torch and ExecuTorch once and forks a
child per program; the child parses and times it and exits, and a child that crashes costs
that request a 4xx, never the agent or the next measurement. The protocol between agent and
worker is a JSON line (then the program's bytes) each way: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Mapping
from typing import IO, Any

from netopt.errors import MeasurementError, first_line

__all__ = ["ProgramWorker", "main"]

START_SECONDS = 180.0
"""How long the worker may take to import torch and ExecuTorch before it counts as absent."""
CHILD_SECONDS = 600.0
"""How long one program may take to load and be timed before its child is killed."""
FLOAT32 = 6  # ExecuTorch's ScalarType of float32
FIX_PROGRAM = "send the bytes of a .pte program made by netopt.measure.ExecuTorch(...).lower(module, example_input)"


class ProgramWorker:
    """The agent's side of the worker: started on first use, restarted if it ever dies."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._absent: str | None = None

    def missing(self) -> str | None:
        """Why ExecuTorch's runtime cannot run here (one line), or None once the worker is up."""
        with self._lock:
            return self._ensure()

    def measure(self, program: bytes, job: Mapping[str, Any]) -> dict[str, Any]:
        """The worker's answer for one program: {"measurement", "shape"} or {"status", "error"}."""
        with self._lock:
            reason = self._ensure()
            if reason is not None:
                return {"status": 400, "error": reason}
            assert self._process is not None and self._process.stdin is not None
            try:
                self._process.stdin.write(json.dumps({**job, "size": len(program)}).encode() + b"\n" + program)
                self._process.stdin.flush()
                return _reply(_read_line(self._process, CHILD_SECONDS + 30.0))
            except (OSError, ValueError, TimeoutError) as exc:
                self._stop()
                return {"status": 500, "error": f"the agent's ExecuTorch worker failed ({first_line(exc)}); it is "
                                                "restarted for the next request"}

    def close(self) -> None:
        """Stop the worker (it is started again when needed)."""
        with self._lock:
            self._stop()

    def _ensure(self) -> str | None:
        if self._absent is not None or (self._process is not None and self._process.poll() is None):
            return self._absent
        self._process = subprocess.Popen([sys.executable, "-m", "netopt.measure.agent_worker"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            hello = _reply(_read_line(self._process, START_SECONDS))
        except (OSError, ValueError, TimeoutError) as exc:
            hello = {"missing": f"ExecuTorch's runtime did not start here: {first_line(exc)}"}
        if "missing" in hello:
            self._absent = str(hello["missing"])
            self._stop()
        return self._absent

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        process.wait(10)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()


def _read_line(process: subprocess.Popen[bytes], seconds: float) -> bytes:
    """One line from the worker's stdout within `seconds`, read from the raw descriptor."""
    assert process.stdout is not None
    fd, data, deadline = process.stdout.fileno(), b"", time.monotonic() + seconds
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError(f"no answer within {seconds:.0f} s")
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            raise OSError(f"the worker exited (code {process.poll()})")
        data += chunk
    return data


def _reply(line: bytes) -> dict[str, Any]:
    reply = json.loads(line)
    if not isinstance(reply, dict):
        raise ValueError(f"the worker answered {line[:60]!r}, not a JSON object")
    return reply


# ----------------------------------------------------------------------------------- the worker process


def main() -> None:
    """The worker: import the runtime once, then fork a child per program read from stdin."""
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever a library prints goes to the agent's log, never into the protocol
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torch  # noqa: F401 - imported once here, so that every child starts with it loaded
            from executorch.runtime import Runtime

            from netopt.measure.executorch import ExecuTorch  # noqa: F401

            Runtime.get()
    except Exception as exc:
        _send(answers, {"missing": f"backend 'executorch' is installed but its runtime does not import here "
                                   f"({first_line(exc)}); reinstall 'netopt[executorch]' on the device"})
        return
    _send(answers, {"ready": True})
    while header := sys.stdin.buffer.readline():
        job = json.loads(header)
        _send(answers, _forked(job, sys.stdin.buffer.read(int(job["size"]))))


def _send(stream: IO[bytes], reply: Mapping[str, Any]) -> None:
    stream.write(json.dumps(reply).encode() + b"\n")
    stream.flush()


def _forked(job: Mapping[str, Any], program: bytes) -> dict[str, Any]:
    """`_child` run in a fork; its crash or overrun is an answer too."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            with os.fdopen(write, "wb") as out:
                _send(out, _child(job, program))
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as answer:
        ready = select.select([answer], [], [], CHILD_SECONDS)[0]
        data = answer.read() if ready else b""
    if not ready:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if data:
        return _reply(data)
    how = f"did not finish within {CHILD_SECONDS:.0f} s" if not ready else _ended(status)
    return {"status": 422, "error": f"ExecuTorch's runtime {how} on the program: {FIX_PROGRAM}, with the "
                                    "ExecuTorch version the agent reports (the agent keeps serving)"}


def _ended(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"crashed ({signal.Signals(os.WTERMSIG(status)).name})"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


def _child(job: Mapping[str, Any], program: bytes) -> dict[str, Any]:
    """Check the program with the runtime (verification on), then time it: the answer to send."""
    try:
        shape = _input_shape(program, job)
        if isinstance(shape, dict):
            return shape
        return {"measurement": _timed(program, shape, job).to_dict(), "shape": list(shape)}
    except MeasurementError as exc:
        return {"status": 422, "error": first_line(exc)}
    except Exception as exc:
        print(f"netopt agent worker: internal error: {traceback.format_exc()}", file=sys.stderr, flush=True)
        return {"status": 500, "error": f"the agent's ExecuTorch worker failed: {first_line(exc)}; this is a bug "
                                        "in the agent (it keeps serving); see its log"}


def _input_shape(program: bytes, job: Mapping[str, Any]) -> tuple[int, ...] | dict[str, Any]:
    """The static shape of the program's one float32 input, or a 400 answer saying what is wrong."""
    from executorch.runtime import Runtime, Verification

    try:
        loaded = Runtime.get().load_program(program, verification=Verification.InternalConsistency)
        meta = loaded.metadata("forward")
        count = meta.num_inputs()
        tensor = meta.input_tensor_meta(0) if count == 1 else None
    except Exception as exc:
        return {"status": 400, "error": f"the body is not an ExecuTorch program with a method 'forward' "
                                        f"({first_line(exc)}): {FIX_PROGRAM}"}
    if tensor is None or tensor.dtype() != FLOAT32:
        return {"status": 400, "error": f"the program's forward takes {count} input(s), not one float32 tensor: "
                                        "the agent feeds one random float32 input; lower the model with one"}
    shape = tuple(int(s) for s in tensor.sizes())
    wanted = job.get("shape")
    if len(shape) > int(job["max_rank"]) or min(shape, default=1) < 1 or math.prod(shape) > int(job["max_elements"]):
        return {"status": 400, "error": f"the program's input shape {list(shape)} is over the agent's caps "
                                        f"({job['max_rank']} dimensions, {job['max_elements']:,} elements): lower "
                                        "the model with a smaller input"}
    if wanted is not None and list(wanted) != list(shape):
        return {"status": 400, "error": f"shape {list(wanted)} does not fit the program's input {list(shape)}: "
                                        "an ExecuTorch program's input shape is fixed; drop shape= or lower the "
                                        "model again for that shape"}
    return shape


def _timed(program: bytes, shape: tuple[int, ...], job: Mapping[str, Any]) -> Any:
    import torch

    from netopt.measure.base import MeasureSettings, NoisyMeasurementWarning
    from netopt.measure.executorch import ExecuTorch

    backend = ExecuTorch(precision=str(job["precision"]), threads=int(job["threads"]),
                         settings=MeasureSettings(**job["settings"]), representative=[torch.zeros(shape)])
    example = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoisyMeasurementWarning)
        return backend.measure_program(program, example, "the program")


if __name__ == "__main__":
    main()
