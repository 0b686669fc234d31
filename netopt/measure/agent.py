"""`netopt agent`: a small HTTP service that measures ONNX models on the device it runs on.

Protocol v1. Every request carries `Authorization: Bearer <token>`; every answer is JSON, an
error is `{"error": "..."}` saying what is wrong and how to fix it.

- `GET /v1/info[?threads=&optimization=]`: the agent version, the platform's fingerprint
  fields for those ONNX Runtime settings, and the agent's limits.
- `POST /v1/measure`: body = the ONNX model (`Content-Type: application/octet-stream`);
  parameters in the query string or as `X-Netopt-<Name>` headers (`X-Netopt-Min-Seconds`):
  `shape` (e.g. `1,3,224,224`; optional when the model's input is static), `threads`,
  `optimization`, `warmup`, `runs`, `min_seconds`, `max_runs`. Answer: `Measurement.to_dict()`
  plus `platform` (fingerprint fields), `agent`, `shape` and `settings`.

Safety: a token is required and compared in constant time; the body size is checked from
Content-Length before a byte of it is read; the agent listens on loopback unless told
otherwise; the body is only ever parsed as an ONNX protobuf (`onnx.checker` first, external
data refused), never unpickled. One measurement runs at a time so timings do not disturb
each other. A malformed request gets a 4xx and the agent keeps serving.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import json
import math
import platform
import re
import secrets
import socket
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import onnx

from netopt import __version__
from netopt.errors import ConfigError, first_line
from netopt.measure.base import Fingerprint, MeasureSettings, NoisyMeasurementWarning, settings_from
from netopt.measure.onnxrt import OnnxRuntimeCPU

__all__ = ["AGENT_VERSION", "DEFAULT_MAX_BYTES", "DEFAULT_PORT", "AgentServer", "make_server", "serve"]

AGENT_VERSION = f"netopt-agent/{__version__}"
DEFAULT_PORT = 8470
DEFAULT_MAX_BYTES = 64 << 20
MAX_ELEMENTS = 1 << 25
"""Largest input the agent will allocate: 32 Mi float32 elements (128 MiB)."""
MAX_RANK = 8
CAPS: Mapping[str, float] = {"warmup": 10_000, "runs": 100_000, "max_runs": 100_000, "min_seconds": 60.0}
"""Upper bounds on the measurement settings, so one request cannot hold the agent for hours."""
READ_TIMEOUT = 30.0
LINGER_SECONDS = 2.0
MIN_TOKEN_CHARS = 16

ORT_PARAMS = ("threads", "optimization")
SETTING_PARAMS = ("warmup", "runs", "min_seconds", "max_runs")
ROUTES: Mapping[str, tuple[str, str, tuple[str, ...]]] = {
    "/v1/info": ("GET", "_info", ORT_PARAMS),
    "/v1/measure": ("POST", "_measure", ("shape", *ORT_PARAMS, *SETTING_PARAMS)),
}
HEADER_PREFIX = "x-netopt-"
ONNX_TYPE = "application/octet-stream"
FIX_TOKEN = "send 'Authorization: Bearer <token>' with the token the agent was started with"


class RequestError(Exception):
    """A request the agent refuses: an HTTP status and a message that says how to fix it."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, dict(headers or {})


@dataclass(frozen=True)
class AgentConfig:
    """What every request handler shares: the token, the limits, default settings, the lock."""

    token: bytes
    max_bytes: int
    settings: MeasureSettings
    lock: threading.Lock = field(default_factory=threading.Lock)


class AgentServer(ThreadingHTTPServer):
    """The HTTP server, one thread a connection; `url` is where it listens."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], config: AgentConfig) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.config = config
        super().__init__(address, AgentHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = str(host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _quote(text: str, limit: int = 80) -> str:
    """Untrusted text for an error message: printable, quoted, cut to `limit` characters."""
    shown = _printable(text)
    return f"'{shown[:limit]}...'" if len(shown) > limit else f"'{shown}'"


class AgentHandler(BaseHTTPRequestHandler):
    """Routes, authenticates and validates each request; refuses anything malformed with JSON."""

    server_version = AGENT_VERSION
    timeout = READ_TIMEOUT
    _body_pending = False

    @property
    def config(self) -> AgentConfig:
        return cast(AgentServer, self.server).config

    def _dispatch(self) -> None:
        if self.request_version == "HTTP/0.9":
            self.send_error(505, "HTTP/0.9 requests are not served")
            return
        length = self.headers.get("Content-Length", "0").strip()
        self._body_pending = length != "0" or "Transfer-Encoding" in self.headers
        try:
            self._route()
        except RequestError as exc:
            self._send_json(exc.status, {"error": exc.message}, exc.headers)
        except Exception as exc:
            self.log_error("internal error: %s", traceback.format_exc())
            self._send_json(500, {"error": f"the agent failed: {first_line(exc)}; this is a bug in the agent "
                                           "(it keeps serving); see its log"})
        finally:
            self._linger()

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _dispatch

    def _route(self) -> None:
        url = urlsplit(self.path)
        route = ROUTES.get(url.path)
        if route is None:
            raise RequestError(404, f"no endpoint {_quote(url.path)}: the agent serves GET /v1/info and "
                                    "POST /v1/measure; check the URL")
        method, handler, allowed = route
        if self.command != method:
            raise RequestError(405, f"{self.command} is not allowed on {url.path}: use {method}", {"Allow": method})
        self._authenticate()
        getattr(self, handler)(self._params(url.query, allowed))

    def _authenticate(self) -> None:
        header = self.headers.get("Authorization")
        challenge = {"WWW-Authenticate": 'Bearer realm="netopt-agent"'}
        if header is None:
            raise RequestError(401, f"no token: {FIX_TOKEN}", challenge)
        scheme, _, given = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("latin-1", "replace"), self.config.token
        ):
            raise RequestError(401, f"wrong token: {FIX_TOKEN}", challenge)

    def _params(self, query: str, allowed: tuple[str, ...]) -> dict[str, str]:
        """Parameters from the query string and X-Netopt-* headers; unknown or repeated ones are refused."""
        try:
            pairs = [(k, v) for k, vs in parse_qs(query, keep_blank_values=True, max_num_fields=32).items()
                     for v in vs]
        except ValueError as exc:
            raise RequestError(400, f"unreadable query string: {first_line(exc)}") from None
        pairs += [(k[len(HEADER_PREFIX):].lower().replace("-", "_"), v) for k, v in self.headers.items()
                  if k.lower().startswith(HEADER_PREFIX)]
        params: dict[str, str] = {}
        for name, value in pairs:
            if name not in allowed:
                raise RequestError(400, f"unknown parameter {_quote(name)}: valid parameters here are "
                                        f"{list(allowed)}, in the query string or as X-Netopt-<Name> headers")
            if name in params:
                raise RequestError(400, f"parameter {name!r} given twice: give it once, in the query string "
                                        "or as a header")
            params[name] = value
        return params

    def _backend(self, params: Mapping[str, str], settings: MeasureSettings) -> OnnxRuntimeCPU:
        ort: dict[str, Any] = {k: params[k] for k in ORT_PARAMS if k in params}
        try:
            return OnnxRuntimeCPU(settings=settings, **ort)
        except ConfigError as exc:
            raise RequestError(400, str(exc)) from None

    def _settings(self, params: Mapping[str, str]) -> MeasureSettings:
        """The agent's default settings overridden by the request's, within CAPS."""
        values = {**self.config.settings.model_dump(), **{k: params[k] for k in SETTING_PARAMS if k in params}}
        try:
            settings: MeasureSettings = settings_from(MeasureSettings, values, "netopt agent")
        except ConfigError as exc:
            raise RequestError(400, str(exc)) from None
        for name, cap in CAPS.items():
            value = getattr(settings, name)
            if not value <= cap:
                raise RequestError(400, f"setting {name}={value} is over the agent's cap of {cap}: lower it")
        return settings

    def _info(self, params: Mapping[str, str]) -> None:
        backend = self._backend(params, self.config.settings)
        self._send_json(200, {
            "agent": AGENT_VERSION, "protocol": 1, "platform": platform_fields(backend),
            "limits": {"max_bytes": self.config.max_bytes, "max_elements": MAX_ELEMENTS, "max_rank": MAX_RANK,
                       "caps": dict(CAPS)},
            "defaults": self.config.settings.model_dump(),
        })

    def _measure(self, params: Mapping[str, str]) -> None:
        settings = self._settings(params)
        backend = self._backend(params, settings)
        body = self._read_body()
        shape = input_shape(parse_onnx(body), params.get("shape"))
        with self.config.lock, warnings.catch_warnings():
            warnings.simplefilter("ignore", NoisyMeasurementWarning)
            try:
                m = backend.measure_onnx(body, shape, "remote model")
            except Exception as exc:
                raise RequestError(422, f"ONNX Runtime could not run the model on shape {list(shape)}: "
                                        f"{first_line(exc)}; check the model runs locally with onnxruntime") from None
        fields = platform_fields(backend)
        m = dataclasses.replace(m, fingerprint=Fingerprint(fields).key)
        self._send_json(200, {**m.to_dict(), "platform": fields, "agent": AGENT_VERSION, "shape": list(shape),
                              "settings": settings.model_dump()})

    def _read_body(self) -> bytes:
        """Exactly Content-Length bytes of an octet-stream, after checking the length against the limit."""
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != ONNX_TYPE:
            raise RequestError(415, f"Content-Type {_quote(ctype)} is not accepted: send the ONNX model's "
                                    f"bytes as {ONNX_TYPE}")
        n = self._content_length()
        try:
            body = self.rfile.read(n)
        except TimeoutError:
            raise RequestError(408, f"the body did not arrive within {READ_TIMEOUT:.0f} s: send all "
                                    "Content-Length bytes") from None
        self._body_pending = False
        if len(body) != n:
            raise RequestError(400, f"the body was cut short: {len(body)} of the {n} bytes Content-Length "
                                    "announced; send the whole model")
        return body

    def _content_length(self) -> int:
        if "Transfer-Encoding" in self.headers:
            raise RequestError(411, "chunked bodies are not accepted: send the model with a Content-Length")
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            raise RequestError(411, "no Content-Length: send the model's size in a Content-Length header")
        text = lengths[0].strip()
        if len(set(lengths)) > 1 or not re.fullmatch(r"[0-9]{1,20}", text):
            raise RequestError(400, f"bad Content-Length {_quote(', '.join(lengths))}: send one "
                                    "non-negative integer")
        n, limit = int(text), self.config.max_bytes
        if n > limit:
            raise RequestError(413, f"the body is {n} bytes, over the agent's limit of {limit} bytes "
                                    f"({limit / 2**20:g} MiB): measure a smaller model or restart the agent "
                                    "with a larger --max-mb")
        if n == 0:
            raise RequestError(400, f"empty body: send the ONNX model's bytes as {ONNX_TYPE}")
        return n

    def _send_json(self, status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.close_connection = True
        try:
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", "Content-Length": str(len(body)),
                                "Connection": "close", **(headers or {})}.items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:
            pass

    def _linger(self) -> None:
        """Drain a body we did not read (for up to LINGER_SECONDS), so the client sees our answer, not a reset."""
        if not self._body_pending:
            return
        deadline, left = time.monotonic() + LINGER_SECONDS, self.config.max_bytes
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(LINGER_SECONDS / 4)
            while left > 0 and time.monotonic() < deadline:
                chunk = self.rfile.read1(min(left, 1 << 16))  # type: ignore[attr-defined]
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (bad request line, unknown method, huge headers) as JSON."""
        text = message or HTTPStatus(code).phrase
        if self.request_version == "HTTP/0.9":  # unparsed request line: still answer with a status line
            self.request_version = "HTTP/1.0"
        self._send_json(code, {"error": f"{_printable(text)[:200]}: send a well-formed HTTP/1.x request "
                                        "(GET /v1/info, POST /v1/measure)"})

    def version_string(self) -> str:
        return AGENT_VERSION  # not the Python version

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.address_string()} [{self.log_date_time_string()}] {_printable(format % args)[:500]}\n")


def platform_fields(backend: OnnxRuntimeCPU) -> dict[str, Any]:
    """The fingerprint fields of this device for `backend`'s settings (the client adds its exporter's)."""
    fields = {k: v for k, v in backend.fingerprint.fields.items() if k not in ("torch", "exporter")}
    return {**fields, "os": platform.system(), "machine": platform.machine()}


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
        return check_elements(tuple(cast(list[int], dims)))
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
        raise RequestError(400, f"shape {_quote(text)} has more than {MAX_RANK} dimensions: {fix}")
    bad = [p for p in parts if not re.fullmatch(r"[0-9]{1,9}", p) or int(p) < 1]
    if bad:
        raise RequestError(400, f"shape {_quote(text)}: {_quote(bad[0])} is not a "
                                f"positive integer: {fix}")
    return check_elements(tuple(int(p) for p in parts))


def check_elements(shape: tuple[int, ...]) -> tuple[int, ...]:
    if math.prod(shape) > MAX_ELEMENTS:
        raise RequestError(400, f"shape {list(shape)} has {math.prod(shape):,} elements, over the agent's cap of "
                                f"{MAX_ELEMENTS:,}: measure with a smaller input")
    return shape


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0])).is_loopback for info in infos)


def _check_token(token: str | None) -> bytes:
    if not token:
        raise ConfigError("the agent needs a token: pass --token/--token-file (or call serve() without one to "
                          "have it generate and print one)")
    if len(token) < MIN_TOKEN_CHARS or not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError(f"the agent's token must be at least {MIN_TOKEN_CHARS} printable ASCII characters "
                          "without spaces: generate one with python -c \"import secrets; "
                          "print(secrets.token_urlsafe())\"")
    return token.encode()


def make_server(host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                max_bytes: int = DEFAULT_MAX_BYTES, settings: MeasureSettings | None = None,
                allow_remote: bool = False) -> AgentServer:
    """A bound, not yet serving agent (`server.serve_forever()`); port 0 picks a free port (`server.url`)."""
    secret = _check_token(token)
    if not 1 <= max_bytes < 2**31:
        raise ConfigError(f"max_bytes={max_bytes} is out of range: an ONNX protobuf holds 1 byte to 2 GiB")
    if not _is_loopback(host):
        if not allow_remote:
            raise ConfigError(f"host {host!r} is not a loopback address: the agent would be reachable from the "
                              "network; pass allow_remote=True (--allow-remote), or keep 127.0.0.1 and use an "
                              "SSH tunnel")
        print(f"netopt agent: WARNING: listening on {host}, reachable from the network: anyone with the token "
              "can run models here, and the token and models travel unencrypted (prefer an SSH tunnel)",
              file=sys.stderr, flush=True)
    config = AgentConfig(secret, int(max_bytes), settings or MeasureSettings())
    try:
        return AgentServer((host, port), config)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --port or "
                          "--host") from None


def serve(host: str = "127.0.0.1", port: int = DEFAULT_PORT, token: str | None = None,
          max_bytes: int = DEFAULT_MAX_BYTES, *, allow_remote: bool = False,
          settings: MeasureSettings | None = None) -> None:
    """Run the agent until interrupted; prints the URL (and a generated token when none is given)."""
    if not token:
        token = secrets.token_urlsafe(24)
        print(f"netopt agent token (generated): {token}", flush=True)
    server = make_server(host, port, token, max_bytes, settings, allow_remote)
    print(f"netopt agent listening on {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
