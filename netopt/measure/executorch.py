"""ExecuTorch with the XNNPACK delegate: the runtime a network deployed on Android or iOS runs on.

The module is exported with `torch.export`, quantized for int8 by PT2E with the XNNPACK
quantizer (per-channel, symmetric), lowered with the XNNPACK partitioner to an ExecuTorch
program (`.pte` bytes) and run by ExecuTorch's runtime. Ops the delegate does not take run on
ExecuTorch's portable kernels, usually much slower: the backend reports them (`delegation`)
and warns once per module, so that a figure is never silently a mix of the two.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import re
import threading
import warnings
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from netopt.errors import MeasurementError, first_line
from netopt.frozen import Frozen
from netopt.measure.base import (
    Backend,
    Fingerprint,
    Measurement,
    MeasureSettings,
    NoisyMeasurementWarning,
    settings_from,
)
from netopt.measure.platform import cores, cpu_model
from netopt.measure.precision import Precision, check_representative, representative_for
from netopt.measure.timing import time_calls

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["Delegation", "ExecuTorch", "ExecuTorchSettings", "PortableOpsWarning"]

_LEFT_ALONE = {"executorch_call_delegate", "getitem"}  # plumbing around a delegate call, not an op
_OP_NAME = re.compile(r"\b(?:aten|quantized_decomposed|dim_order_ops)\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+")
_KEPT_PROGRAMS = 64  # lowered programs a backend keeps, the oldest dropped first ...
_KEPT_BYTES = 256 << 20  # ... and at most this many bytes of them (a whole network's fp32 weights are megabytes)
_EXPORT_LOCK = threading.Lock()  # export and PT2E patch global torch state: one lowering at a time


class ExecuTorchSettings(Frozen):
    """How ExecuTorch runs: the delegate, the precision it is lowered at, and the thread count of
    the runtime's thread pool (the one XNNPACK parallelizes on)."""

    delegate: Literal["xnnpack"] = "xnnpack"
    precision: Precision = "fp32"
    threads: int = Field(1, ge=1, le=256)


class PortableOpsWarning(UserWarning):
    """Ops of a measured module run outside the delegate, on ExecuTorch's portable kernels."""


@dataclass(frozen=True)
class Delegation:
    """Where a lowered program's ops run: counts by op name inside the delegate, and on the
    portable kernels outside it."""

    delegated: Mapping[str, int] = field(default_factory=dict)
    portable: Mapping[str, int] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Whether every op runs inside the delegate."""
        return not self.portable

    def summary(self) -> str:
        """One line: how many ops are delegated, and which are not (by name).

        >>> Delegation({"aten.convolution.default": 2}, {"aten.cumsum.default": 1}).summary()
        '2 ops delegated, 1 on the portable kernels: aten.cumsum.default x1'
        """
        inside, outside = sum(self.delegated.values()), sum(self.portable.values())
        names = ", ".join(f"{op} x{n}" for op, n in sorted(self.portable.items()))
        return f"{inside} ops delegated, {outside} on the portable kernels" + (f": {names}" if names else "")


@dataclass(eq=False)
class _Loaded:
    """A program loaded by the runtime, with the bytes it runs from: `load_program` does not
    copy them, so they must outlive the program and its method (freeing them segfaults)."""

    buffer: bytes
    program: Any
    method: Any


class _ThreadPool:
    """ExecuTorch's thread pool, one per process: XNNPACK keeps the pool of the moment a method
    is loaded, so resizing it under a loaded method crashes. It is resized only while none of
    the programs this module loaded is alive."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: weakref.WeakSet[_Loaded] = weakref.WeakSet()

    def load(self, buffer: bytes, threads: int, what: str) -> _Loaded:
        """`buffer` loaded with the pool at `threads` threads."""
        with warnings.catch_warnings(), _quiet_imports():
            warnings.simplefilter("ignore")  # the pybindings warn on import that they are experimental
            from executorch.extension.pybindings import portable_lib
            from executorch.runtime import Runtime

        with self._lock:
            self._resize(portable_lib, threads)
            try:
                program = Runtime.get().load_program(buffer)
                method = program.load_method("forward")
            except RuntimeError as exc:
                raise _load_error(buffer, what, exc) from exc
            loaded = _Loaded(buffer, program, method)
            self._loaded.add(loaded)
            return loaded

    def _resize(self, runtime: Any, threads: int) -> None:
        count = getattr(runtime, "_threadpool_get_thread_count", None)
        reset = getattr(runtime, "_unsafe_reset_threadpool", None)
        current = count() if count else None
        if current == threads:
            return
        if reset is None:
            raise MeasurementError(f"ExecuTorch(threads={threads}): this ExecuTorch cannot set its thread pool's "
                                   f"size (it runs {current or 'an unknown number of'} threads); measure with "
                                   f"threads={current or 1}, or install an ExecuTorch that exposes it")
        if self._loaded:
            gc.collect()  # a runner of a finished measurement may await collection
        if self._loaded:
            raise MeasurementError(f"ExecuTorch(threads={threads}): ExecuTorch has one thread pool per process, now "
                                   f"running {current} threads for {len(self._loaded)} program(s) still loaded, and "
                                   "resizing it under them crashes; give every ExecuTorch backend of a process the "
                                   "same threads, or drop the other's runners first")
        reset(threads)


_POOL = _ThreadPool()  # mirrors the runtime's own process-wide pool: there is exactly one


class ExecuTorch(Backend):
    """Latency (ms) of the module lowered to an ExecuTorch program (XNNPACK delegate) and run by
    ExecuTorch's runtime; int8 is quantized by PT2E on `representative` inputs (a few batches).

    >>> backend = ExecuTorch(precision="fp32", threads=1)
    >>> {k: backend.fingerprint.fields[k] for k in ("backend", "delegate", "precision", "threads")}
    {'backend': 'executorch', 'delegate': 'xnnpack', 'precision': 'fp32', 'threads': 1}
    >>> ExecuTorch(precision="int8")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    netopt.errors.ConfigError: ExecuTorch(precision='int8') needs representative inputs to quantize with: ...
    >>> from netopt.testing.backends import small_model  # doctest: +SKIP
    >>> backend.measure(*small_model()).median > 0  # doctest: +SKIP
    True
    """

    unit = "ms"

    def __init__(self, delegate: str = "xnnpack", precision: str = "fp32", threads: int = 1,
                 settings: MeasureSettings | None = None, representative: Sequence[torch.Tensor] | None = None) -> None:
        check_representative("ExecuTorch", precision, representative)
        self.et: ExecuTorchSettings = settings_from(
            ExecuTorchSettings, {"delegate": delegate, "precision": precision, "threads": threads}, "ExecuTorch")
        self.settings = settings or MeasureSettings()
        self.representative = list(representative or ())
        self._delegation: Delegation | None = None
        self._warned: set[tuple[str, tuple[str, ...]]] = set()
        self._programs: dict[str, tuple[bytes, Delegation]] = {}
        if threads > cores():
            warnings.warn(f"ExecuTorch(threads={threads}) on {cores()} cores: with more threads than cores a "
                          f"figure varies from one minute to the next; measure with at most {cores()} threads",
                          NoisyMeasurementWarning, stacklevel=2)

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint({
            "backend": "executorch", "executorch": _version("executorch"), "torch": _version("torch"),
            "delegate": self.et.delegate, "precision": self.et.precision, "threads": self.et.threads,
            "cpu": cpu_model(),
        })

    @property
    def delegation(self) -> Delegation | None:
        """Where the ops of the last module this backend lowered run (None before the first)."""
        return self._delegation

    def lower(self, module: nn.Module, example_input: torch.Tensor) -> bytes:
        """The module as an ExecuTorch program (`.pte` bytes), quantized first where int8; its
        delegation is kept (`delegation`) and ops left outside the delegate warned about once.
        A module exported alike (same graph, weights and input shape) is lowered once: lowering
        costs far more than timing, and a lookup table times the same unit or network in turns."""
        what = type(module).__name__
        was_training = module.training
        module.eval()
        try:
            with _EXPORT_LOCK, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                exported = _export(module, example_input, what)
                key = _content_key(exported, example_input)
                if key not in self._programs:
                    self._keep(key, self._lowered(exported, example_input, what))
        finally:
            module.train(was_training)
        buffer, self._delegation = self._programs[key]
        self._warn_portable(what, self._delegation)
        return buffer

    def _lowered(self, exported: Any, example_input: torch.Tensor, what: str) -> tuple[bytes, Delegation]:
        if self.et.precision == "int8":
            batches = representative_for(self.representative, example_input)
            exported = _quantize(exported, example_input, batches, what)
        return _lower(exported, what)

    def _keep(self, key: str, lowered: tuple[bytes, Delegation]) -> None:
        while self._programs and (len(self._programs) >= _KEPT_PROGRAMS or
                                  sum(len(b) for b, _ in self._programs.values()) + len(lowered[0]) > _KEPT_BYTES):
            del self._programs[next(iter(self._programs))]
        self._programs[key] = lowered

    def close(self) -> None:
        """Drop the programs kept for modules lowered already."""
        self._programs.clear()

    def prepared(self, program: bytes, example_input: torch.Tensor, what: str = "program") -> Callable[[], object]:
        """One call of an ExecuTorch program on `example_input`, run once already; the program
        and its bytes live as long as the returned callable."""
        loaded = _POOL.load(program, self.et.threads, what)
        inputs = (example_input.detach().contiguous(),)
        try:
            loaded.method.execute(inputs)
        except Exception as exc:
            raise MeasurementError(f"ExecuTorch could not run {what} on an input of shape "
                                   f"{tuple(example_input.shape)}: {first_line(exc)}") from exc
        return lambda: loaded.method.execute(inputs)

    def measure_program(self, program: bytes, example_input: torch.Tensor, what: str = "program") -> Measurement:
        """Time an ExecuTorch program (`.pte` bytes) on `example_input`."""
        return time_calls(self.prepared(program, example_input, what), self.settings, self.fingerprint.key, what)

    def runner(self, module: nn.Module, example_input: torch.Tensor) -> Callable[[], object]:
        return self.prepared(self.lower(module, example_input), example_input, type(module).__name__)

    def measure(self, module: nn.Module, example_input: torch.Tensor) -> Measurement:
        return self.measure_program(self.lower(module, example_input), example_input, type(module).__name__)

    def _warn_portable(self, what: str, delegation: Delegation) -> None:
        key = (what, tuple(sorted(delegation.portable)))
        if delegation.complete or key in self._warned:
            return
        self._warned.add(key)
        warnings.warn(f"ExecuTorch: {what} runs {', '.join(key[1])} outside the {self.et.delegate} delegate, on the "
                      "portable kernels; its figure includes them (as it would on the device): replace those ops "
                      "to measure the delegate alone", PortableOpsWarning, stacklevel=3)


def _export(module: nn.Module, example_input: torch.Tensor, what: str) -> Any:
    """`torch.export` of the module, or one MeasurementError line naming the export's error."""
    import torch

    try:
        return torch.export.export(module, (example_input,))
    except Exception as exc:
        raise MeasurementError(
            f"exporting {what} with torch.export for ExecuTorch failed: {first_line(exc)}; make the model "
            "exportable (no data-dependent control flow: torch.cond, or a fixed branch), or measure it with "
            "OnnxRuntimeCPU or TorchEager") from exc


def _content_key(exported: Any, example_input: torch.Tensor) -> str:
    """A hash of what a lowered program depends on: the exported graph, its weights and buffers,
    and the input's shape and type."""
    import torch

    digest = hashlib.sha256(exported.graph_module.code.encode())
    digest.update(repr((tuple(example_input.shape), example_input.dtype)).encode())
    for name, tensor in sorted({**exported.state_dict, **exported.constants}.items()):
        if isinstance(tensor, torch.Tensor):
            digest.update(name.encode())
            digest.update(repr((tuple(tensor.shape), tensor.dtype)).encode())
            digest.update(tensor.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@contextmanager
def _quiet_imports() -> Iterator[None]:
    """Libraries' import-time log lines at ERROR only: on a CPU-only torch, torchao warns about
    every CUDA kernel library it cannot load, and torch about a deprecated registration of its."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def _quantize(exported: Any, example_input: torch.Tensor, batches: Sequence[torch.Tensor], what: str) -> Any:
    """The exported module quantized to int8 by PT2E with the XNNPACK quantizer (per-channel,
    symmetric), its activation ranges observed on `batches`, exported again."""
    import torch

    with _quiet_imports():
        import torchao  # noqa: F401 - first imported here, where its import-time warnings are quieted
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    try:
        observed = prepare_pt2e(exported.module(), quantizer)
        with torch.no_grad():
            for batch in batches:
                observed(batch)
        return torch.export.export(convert_pt2e(observed), (example_input,))
    except Exception as exc:
        raise MeasurementError(f"quantizing {what} to int8 for ExecuTorch (PT2E, XNNPACK quantizer) failed"
                               f"{_culprit(exc)}: {first_line(exc)}; measure it at precision='fp32'") from exc


def _lower(exported: Any, what: str) -> tuple[bytes, Delegation]:
    """The exported program lowered with the XNNPACK partitioner to ExecuTorch bytes, and where its ops run."""
    with _quiet_imports():
        import torchao  # noqa: F401 - first imported here, where its import-time warnings are quieted
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    try:
        edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
        delegation = _delegation(edge.exported_program().graph_module)
        return bytes(edge.to_executorch().buffer), delegation
    except Exception as exc:
        raise MeasurementError(f"lowering {what} to ExecuTorch (XNNPACK) failed{_culprit(exc)}: "
                               f"{first_line(exc).rstrip(':')}; replace that op in the model, or measure it with "
                               "OnnxRuntimeCPU") from exc


def _delegation(graph_module: Any) -> Delegation:
    """Counts by op name of the ops inside the lowered graph's delegate calls and of those outside."""
    outside, inside = Counter[str](), Counter[str]()
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and _op_name(node.target) not in _LEFT_ALONE:
            outside[_op_name(node.target)] += 1
        elif node.op == "get_attr" and hasattr(getattr(graph_module, node.target), "original_module"):
            lowered = getattr(graph_module, node.target).original_module
            inside.update(_op_name(n.target) for n in lowered.graph.nodes
                          if n.op == "call_function" and _op_name(n.target) not in _LEFT_ALONE)
    return Delegation(dict(inside), dict(outside))


def _op_name(target: Any) -> str:
    return str(getattr(target, "__name__", target))


def _culprit(exc: BaseException) -> str:
    """' at <op>' where the error's text names an op, else ''."""
    found = _OP_NAME.search(str(exc))
    return f" at {found.group(0)}" if found else ""


def _load_error(buffer: bytes, what: str, exc: BaseException) -> MeasurementError:
    """Why the runtime refused a program: the operators outside the delegate it has no kernel for."""
    from executorch.runtime import Runtime

    kernels = Runtime.get().operator_registry.operator_names
    missing = sorted({op for op in _operators(buffer) if op not in kernels})
    if missing:
        return MeasurementError(f"ExecuTorch could not load {what}: its runtime has no kernel for {', '.join(missing)}"
                                "; replace that op in the model, or measure it with OnnxRuntimeCPU")
    return MeasurementError(f"ExecuTorch could not load {what}: {first_line(exc)}; give the bytes of a program "
                            "lowered for this runtime (ExecuTorch.lower)")


def _operators(buffer: bytes) -> list[str]:
    """The operators a program calls outside its delegates, as the runtime names them ('aten::sort.values')."""
    from executorch.exir._serialize import _deserialize_pte_binary

    try:
        program = _deserialize_pte_binary(buffer).program
    except Exception:
        return []
    return [f"{op.name}.{op.overload}" if op.overload else op.name
            for plan in program.execution_plan for op in plan.operators]


def _version(package: str) -> str:
    try:
        return version(package).split("+")[0]
    except PackageNotFoundError:
        return "none"
