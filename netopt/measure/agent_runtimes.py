"""The runtimes `netopt agent` serves: which are installed, their fingerprint fields, and the
artifact each takes (an ONNX model, an ExecuTorch program) checked and timed.

ONNX Runtime and OpenVINO time an ONNX model in the agent's process, once `onnx.checker`
accepts it (at int8, the QDQ model the client quantized: the agent only times it). ExecuTorch
programs are loaded and timed in a forked child of a worker process (`agent_worker`), since a
damaged program can crash ExecuTorch's runtime. A runtime is imported only when asked for.
"""

from __future__ import annotations

import importlib
import math
import platform
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import onnx
from pydantic import Field

from netopt.errors import ConfigError, first_line
from netopt.frozen import Frozen
from netopt.measure.agent_worker import ProgramWorker
from netopt.measure.base import Backend, Measurement, MeasureSettings, settings_from
from netopt.measure.precision import Precision
from netopt.measure.registry import BACKENDS

__all__ = ["DEFAULT_BACKEND", "MAX_ELEMENTS", "MAX_RANK", "SERVED", "RequestError", "Runtimes", "Served",
           "check_elements", "input_shape", "parse_onnx", "parse_shape", "platform_fields"]

MAX_ELEMENTS = 1 << 25
"""Largest input the agent will allocate: 32 Mi float32 elements (128 MiB)."""
MAX_RANK = 8
DEFAULT_BACKEND = "onnxruntime"
"""The backend of a request that names none: what every agent served before it named any."""
TIMES_ONLY: Any = (None,)
"""The representative inputs an int8 backend is built with here: the client quantized the model,
the agent only times it, so they are never read."""
CLIENT_FIELDS = ("torch", "exporter", "quantizer")
"""Fingerprint fields of the side that exports and quantizes (the client adds its own)."""


class RequestError(Exception):
    """A request the agent refuses: an HTTP status and a message that says how to fix it."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})


def printable(text: str) -> str:
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def quote(text: str, limit: int = 80) -> str:
    """Untrusted text for an error message: printable, quoted, cut to `limit` characters."""
    shown = printable(text)
    return f"'{shown[:limit]}...'" if len(shown) > limit else f"'{shown}'"


class ServedSettings(Frozen):
    """The settings every served runtime takes from a request: its threads and precision."""

    threads: int = Field(1, ge=1, le=256)
    precision: Precision = "fp32"


def _ort(s: ServedSettings, extra: Mapping[str, str], settings: MeasureSettings) -> Backend:
    from netopt.measure.onnxrt import OnnxRuntimeCPU

    return OnnxRuntimeCPU(threads=s.threads, settings=settings, precision=s.precision, representative=TIMES_ONLY,
                          **extra)


def _openvino(s: ServedSettings, extra: Mapping[str, str], settings: MeasureSettings) -> Backend:
    from netopt.measure.openvino import OpenVINO

    return OpenVINO("CPU", s.precision, s.threads, settings, TIMES_ONLY)


def _executorch(s: ServedSettings, extra: Mapping[str, str], settings: MeasureSettings) -> Backend:
    from netopt.measure.executorch import ExecuTorch

    return ExecuTorch("xnnpack", s.precision, s.threads, settings, TIMES_ONLY)


@dataclass(frozen=True)
class Served:
    """A runtime the agent can serve: its registry name, the artifact it takes, the module that
    must import, the request parameters of its own, and how to build its backend."""

    name: str
    artifact: Literal["onnx", "executorch-program"]
    runtime: str
    params: tuple[str, ...]
    make: Callable[[ServedSettings, Mapping[str, str], MeasureSettings], Backend]
    label: str


SERVED: Mapping[str, Served] = {s.name: s for s in (
    Served("onnxruntime", "onnx", "onnxruntime", ("optimization",), _ort, "ONNX Runtime"),
    Served("openvino", "onnx", "openvino", (), _openvino, "OpenVINO"),
    Served("executorch", "executorch-program", "executorch", (), _executorch, "ExecuTorch"),
)}
"""What each backend takes: "onnx" (at int8 the QDQ model) or "executorch-program" (`.pte` bytes)."""
OWN_PARAMS = tuple(sorted({p for s in SERVED.values() for p in s.params}))
"""Parameters that only some backends take (refused for the others)."""


def platform_fields(backend: Backend) -> dict[str, Any]:
    """The fingerprint fields of this device for `backend`'s settings (the client adds its exporter's)."""
    fields = {k: v for k, v in backend.fingerprint.fields.items() if k not in CLIENT_FIELDS}
    return {**fields, "os": platform.system(), "machine": platform.machine()}


class Runtimes:
    """The runtimes one agent serves, found installed on first use, and its ExecuTorch worker.

    >>> Runtimes(names=("onnxruntime",)).served({"backend": "openvino"})
    Traceback (most recent call last):
    ...
    netopt.measure.agent_runtimes.RequestError: backend 'openvino' is not one the agent serves: this agent has \
onnxruntime; ask for one of them
    """

    def __init__(self, names: tuple[str, ...] = tuple(SERVED)) -> None:
        self.names = names
        self.worker = ProgramWorker()
        self._missing: dict[str, str | None] = {}
        self._lock = threading.Lock()

    def missing(self, name: str) -> str | None:
        """Why `name` cannot run on this device (one line), or None: its runtime imports here."""
        with self._lock:
            if name not in self._missing:
                self._missing[name] = self._find(name)
            return self._missing[name]

    def _find(self, name: str) -> str | None:
        reason = BACKENDS[name].missing()
        if reason is not None or SERVED[name].artifact == "executorch-program":
            return reason or self.worker.missing()
        try:
            importlib.import_module(SERVED[name].runtime)
        except Exception as exc:
            return f"backend {name!r} is installed but its runtime does not import here ({first_line(exc)})"
        return None

    def installed(self) -> list[str]:
        return [n for n in self.names if self.missing(n) is None]

    def served(self, params: Mapping[str, str], explicit: bool = True) -> Served | None:
        """The runtime a request names (default onnxruntime), or a 400 naming those this agent has;
        None where the request names none and the default is absent (only where `explicit` is False)."""
        name = params.get("backend", DEFAULT_BACKEND)
        if name not in self.names:
            raise RequestError(400, f"backend {quote(name)} is not one the agent serves: this agent has "
                                    f"{self._have()}; ask for one of them")
        reason = self.missing(name)
        if reason is not None:
            if not explicit and "backend" not in params:
                return None
            raise RequestError(400, f"backend {name!r} is not available on this device ({reason}): this agent "
                                    f"has {self._have()}; ask for one of them")
        return SERVED[name]

    def _have(self) -> str:
        return ", ".join(self.installed()) or "none (install onnxruntime, openvino or executorch there)"

    def backend(self, served: Served, params: Mapping[str, str], settings: MeasureSettings) -> Backend:
        """`served`'s backend for the request's threads, precision and its own parameters (400 if invalid)."""
        alien = [p for p in OWN_PARAMS if p in params and p not in served.params]
        if alien:
            raise RequestError(400, f"parameter {alien[0]!r} does not apply to backend {served.name!r}: drop it "
                                    f"(it is {', '.join(s.name for s in SERVED.values() if alien[0] in s.params)}'s)")
        common = {k: params[k] for k in ("threads", "precision") if k in params}
        try:
            shared = settings_from(ServedSettings, common, "netopt agent")
            return served.make(shared, {k: params[k] for k in served.params if k in params}, settings)
        except ConfigError as exc:
            raise RequestError(400, str(exc)) from None

    def describe(self, params: Mapping[str, str], settings: MeasureSettings) -> dict[str, Any]:
        """`/v1/info`'s listing: each installed backend with its version, precisions, artifact and
        fingerprint fields for the request's threads and precision; each absent one with why."""
        listed: dict[str, Any] = {}
        for name in self.installed():
            served = SERVED[name]
            own = {k: v for k, v in params.items() if k in ("threads", "precision", *served.params)}
            fields = platform_fields(self.backend(served, own, settings))
            listed[name] = {"version": str(fields.get(served.runtime, "")), "artifact": served.artifact,
                            "precisions": list(BACKENDS[name].precisions), "platform": fields}
        missing = {n: self.missing(n) for n in self.names if n not in listed}
        return {"backends": listed, "missing": missing}

    def measure(self, served: Served, backend: Backend, body: bytes, params: Mapping[str, str],
                lock: threading.Lock) -> tuple[Measurement, tuple[int, ...]]:
        """The body checked as `served`'s artifact, then timed under `lock`: the measurement and input shape."""
        if served.artifact == "executorch-program":
            return self._program(backend, body, params, lock)
        model = parse_onnx(body)
        shape = input_shape(model, params.get("shape"))
        check_quantized(model, str(backend.fingerprint.fields.get("precision", "fp32")))
        with lock:
            try:
                return backend.measure_onnx(body, shape, "remote model"), shape  # type: ignore[attr-defined]
            except Exception as exc:
                raise RequestError(422, f"{served.label} could not run the model on shape {list(shape)}: "
                                        f"{first_line(exc)}; check the model runs locally with "
                                        f"{served.label}") from None

    def _program(self, backend: Backend, body: bytes, params: Mapping[str, str],
                 lock: threading.Lock) -> tuple[Measurement, tuple[int, ...]]:
        fields = backend.fingerprint.fields
        shape = parse_shape(params["shape"]) if "shape" in params else None
        job = {"threads": fields["threads"], "precision": fields["precision"], "shape": shape,
               "settings": backend.settings.model_dump(),  # type: ignore[attr-defined]
               "max_rank": MAX_RANK, "max_elements": MAX_ELEMENTS}
        with lock:
            reply = self.worker.measure(body, job)
        if "status" in reply:
            raise RequestError(int(reply["status"]), str(reply["error"]))
        return Measurement.from_dict(reply["measurement"]), tuple(int(s) for s in reply["shape"])

    def close(self) -> None:
        """Stop the ExecuTorch worker."""
        self.worker.close()


# ----------------------------------------------------------------------------------- ONNX models


def parse_onnx(body: bytes) -> onnx.ModelProto:
    """The body as a checked ONNX model, or a 400 saying why not. Never anything but protobuf parsing."""
    fix = "send the bytes of a .onnx file (torch.onnx.export, or netopt.measure.export_onnx)"
    try:
        model = onnx.load_model_from_string(body)
    except Exception as exc:
        raise RequestError(400, f"the body is not an ONNX model ({first_line(exc)}): {fix}") from None
    if any(_is_external(t) for t in _tensors(model)):
        raise RequestError(400, "the model refers to external data files, which the agent never reads: "
                                "export the model with its weights inside (one self-contained .onnx)")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise RequestError(400, f"the body is not a valid ONNX model ({first_line(exc)}): {fix}") from None
    return model


def check_quantized(model: onnx.ModelProto, precision: str) -> None:
    """At int8, the model must be the QDQ model the client quantized: the agent never quantizes."""
    if precision == "int8" and not any(n.op_type == "QuantizeLinear" for n in model.graph.node):
        raise RequestError(400, "precision=int8 but the model has no QuantizeLinear node: the agent times models "
                                "as sent; send the QDQ model (netopt.measure.export_qdq), or measure at fp32")


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data) > 0


def _tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            for attr in node.attribute:
                yield from _attribute_tensors(attr)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in graph.node:
        for attr in node.attribute:
            yield from _attribute_tensors(attr)


def _attribute_tensors(attr: onnx.AttributeProto) -> Iterator[onnx.TensorProto]:
    yield from ([attr.t] if attr.HasField("t") else [])
    yield from attr.tensors
    for sparse in [*([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []), *attr.sparse_tensors]:
        yield from (sparse.values, sparse.indices)
    for graph in [*([attr.g] if attr.HasField("g") else []), *attr.graphs]:
        yield from _graph_tensors(graph)


def input_shape(model: onnx.ModelProto, text: str | None) -> tuple[int, ...]:
    """The shape to feed the model's one float input: `text` checked against the model, or its static shape."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise RequestError(400, f"the model has {len(inputs)} inputs {[i.name for i in inputs]}: the agent "
                                "measures models with exactly one input")
    tensor = inputs[0].type.tensor_type
    if not inputs[0].type.HasField("tensor_type") or tensor.elem_type != onnx.TensorProto.FLOAT:
        raise RequestError(400, f"the model's input {inputs[0].name!r} is not a float32 tensor: the agent "
                                "feeds random float32 data; export the model with a float input")
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim]
    if text is None:
        if not tensor.HasField("shape") or None in dims:
            raise RequestError(400, f"the model's input {inputs[0].name!r} has dynamic dimensions {dims}: "
                                    "pass shape=, e.g. shape=1,3,224,224")
        return check_elements(tuple(d for d in dims if d is not None))
    shape = parse_shape(text)
    if tensor.HasField("shape"):
        _match_shape(shape, dims, inputs[0].name)
    return shape


def _match_shape(shape: tuple[int, ...], dims: list[int | None], name: str) -> None:
    if len(shape) != len(dims):
        raise RequestError(400, f"shape {list(shape)} has rank {len(shape)} but the model's input {name!r} has "
                                f"rank {len(dims)} {dims}: pass one size per dimension")
    wrong = [i for i, (s, d) in enumerate(zip(shape, dims, strict=True)) if d is not None and s != d]
    if wrong:
        raise RequestError(400, f"shape {list(shape)} does not fit the model's input {name!r} {dims} at "
                                f"dimension(s) {wrong}: static sizes must match the model")


def parse_shape(text: str) -> tuple[int, ...]:
    """`1,3,224,224` (brackets and spaces allowed) as sizes >= 1, at most MAX_RANK of them and MAX_ELEMENTS."""
    fix = "write the input shape as comma-separated positive integers, e.g. shape=1,3,224,224"
    parts = [p.strip() for p in text.strip().strip("()[]").split(",")]
    if len(parts) > MAX_RANK:
        raise RequestError(400, f"shape {quote(text)} has more than {MAX_RANK} dimensions: {fix}")
    bad = [p for p in parts if not re.fullmatch(r"[0-9]{1,9}", p) or int(p) < 1]
    if bad:
        raise RequestError(400, f"shape {quote(text)}: {quote(bad[0])} is not a "
                                f"positive integer: {fix}")
    return check_elements(tuple(int(p) for p in parts))


def check_elements(shape: tuple[int, ...]) -> tuple[int, ...]:
    """`shape`, or a 400 where it holds more than MAX_ELEMENTS elements."""
    if math.prod(shape) > MAX_ELEMENTS:
        raise RequestError(400, f"shape {list(shape)} has {math.prod(shape):,} elements, over the agent's cap of "
                                f"{MAX_ELEMENTS:,}: measure with a smaller input")
    return shape
