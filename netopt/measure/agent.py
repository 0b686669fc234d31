"""`netopt agent`: a small HTTP service that measures networks on the device it runs on, with
every runtime installed there (ONNX Runtime, OpenVINO, ExecuTorch: `agent_runtimes`).

Protocol v1. Every request carries `Authorization: Bearer <token>`; every answer is JSON, an
error is `{"error": "..."}` saying what is wrong and how to fix it.

- `GET /v1/info[?backend=&threads=&precision=&optimization=]`: the agent version, the
  fingerprint fields of `backend` (ONNX Runtime by default) for those settings as `platform`,
  every installed backend under `backends` (version, precisions, artifact, fingerprint
  fields), the absent ones under `missing`, and the agent's limits.
- `POST /v1/measure`: body = the artifact `backend` takes (`Content-Type:
  application/octet-stream`): an ONNX model for onnxruntime and openvino (at int8 the QDQ model),
  an ExecuTorch program for executorch. Parameters in the query string or as `X-Netopt-<Name>`
  headers (`X-Netopt-Min-Seconds`): `backend` (default onnxruntime), `shape` (e.g.
  `1,3,224,224`; optional when the input is static), `threads`, `precision`, `optimization`
  (onnxruntime only), `warmup`, `runs`, `min_seconds`, `max_runs`. Answer:
  `Measurement.to_dict()` plus `backend`, `platform` (fingerprint fields), `agent`, `shape`
  and `settings`.

Safety: a token is required and compared in constant time; the body size is checked from
Content-Length before a byte of it is read; the agent listens on loopback unless told
otherwise; an ONNX body is only ever parsed as an ONNX protobuf (`onnx.checker` first, external
data refused), a program only by ExecuTorch's runtime with its verification on, in a forked
child; nothing is unpickled. One measurement runs at a time so timings do not disturb each
other. A malformed request gets a 4xx and the agent keeps serving.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import json
import re
import secrets
import socket
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from netopt import __version__
from netopt.errors import ConfigError, first_line
from netopt.measure.agent_runtimes import (  # noqa: F401 - importable from here, as before
    MAX_ELEMENTS,
    MAX_RANK,
    RequestError,
    Runtimes,
    Served,
    check_elements,
    input_shape,
    parse_onnx,
    parse_shape,
    platform_fields,
    printable,
    quote,
)
from netopt.measure.base import Backend, Fingerprint, MeasureSettings, NoisyMeasurementWarning, settings_from

__all__ = ["AGENT_VERSION", "DEFAULT_MAX_BYTES", "DEFAULT_PORT", "AgentServer", "make_server", "serve"]

AGENT_VERSION = f"netopt-agent/{__version__}"
DEFAULT_PORT = 8470
DEFAULT_MAX_BYTES = 64 << 20
CAPS: Mapping[str, float] = {"warmup": 10_000, "runs": 100_000, "max_runs": 100_000, "min_seconds": 60.0}
"""Upper bounds on the measurement settings, so one request cannot hold the agent for hours."""
READ_TIMEOUT = 30.0
LINGER_SECONDS = 2.0
MIN_TOKEN_CHARS = 16

RUNTIME_PARAMS = ("backend", "threads", "precision", "optimization")
SETTING_PARAMS = ("warmup", "runs", "min_seconds", "max_runs")
ROUTES: Mapping[str, tuple[str, str, tuple[str, ...]]] = {
    "/v1/info": ("GET", "_info", RUNTIME_PARAMS),
    "/v1/measure": ("POST", "_measure", ("shape", *RUNTIME_PARAMS, *SETTING_PARAMS)),
}
HEADER_PREFIX = "x-netopt-"
BODY_TYPE = "application/octet-stream"
FIX_TOKEN = "send 'Authorization: Bearer <token>' with the token the agent was started with"


@dataclass(frozen=True)
class AgentConfig:
    """What every request handler shares: the token, the limits, default settings, the lock."""

    token: bytes
    max_bytes: int
    settings: MeasureSettings
    lock: threading.Lock = field(default_factory=threading.Lock)
    runtimes: Runtimes = field(default_factory=Runtimes)


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

    def server_close(self) -> None:
        """Close the socket and stop the ExecuTorch worker, if one was started."""
        super().server_close()
        self.config.runtimes.close()


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
            raise RequestError(404, f"no endpoint {quote(url.path)}: the agent serves GET /v1/info and "
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
                raise RequestError(400, f"unknown parameter {quote(name)}: valid parameters here are "
                                        f"{list(allowed)}, in the query string or as X-Netopt-<Name> headers")
            if name in params:
                raise RequestError(400, f"parameter {name!r} given twice: give it once, in the query string "
                                        "or as a header")
            params[name] = value
        return params

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
        runtimes, settings = self.config.runtimes, self.config.settings
        served = runtimes.served(params, explicit=False)
        chosen = {} if served is None else {
            "backend": served.name, "platform": platform_fields(runtimes.backend(served, params, settings))}
        self._send_json(200, {
            "agent": AGENT_VERSION, "protocol": 1, **chosen, **runtimes.describe(params, settings),
            "limits": {"max_bytes": self.config.max_bytes, "max_elements": MAX_ELEMENTS, "max_rank": MAX_RANK,
                       "caps": dict(CAPS)},
            "defaults": settings.model_dump(),
        })

    def _measure(self, params: Mapping[str, str]) -> None:
        settings = self._settings(params)
        runtimes = self.config.runtimes
        served = cast(Served, runtimes.served(params))
        backend: Backend = runtimes.backend(served, params, settings)
        body = self._read_body()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoisyMeasurementWarning)
            m, shape = runtimes.measure(served, backend, body, params, self.config.lock)
        fields = platform_fields(backend)
        m = dataclasses.replace(m, fingerprint=Fingerprint(fields).key)
        self._send_json(200, {**m.to_dict(), "backend": served.name, "platform": fields, "agent": AGENT_VERSION,
                              "shape": list(shape), "settings": settings.model_dump()})

    def _read_body(self) -> bytes:
        """Exactly Content-Length bytes of an octet-stream, after checking the length against the limit."""
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != BODY_TYPE:
            raise RequestError(415, f"Content-Type {quote(ctype)} is not accepted: send the model's (or "
                                    f"program's) bytes as {BODY_TYPE}")
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
            raise RequestError(400, f"bad Content-Length {quote(', '.join(lengths))}: send one "
                                    "non-negative integer")
        n, limit = int(text), self.config.max_bytes
        if n > limit:
            raise RequestError(413, f"the body is {n} bytes, over the agent's limit of {limit} bytes "
                                    f"({limit / 2**20:g} MiB): measure a smaller model or restart the agent "
                                    "with a larger --max-mb")
        if n == 0:
            raise RequestError(400, f"empty body: send the model's (or program's) bytes as {BODY_TYPE}")
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
        self._send_json(code, {"error": f"{printable(text)[:200]}: send a well-formed HTTP/1.x request "
                                        "(GET /v1/info, POST /v1/measure)"})

    def version_string(self) -> str:
        return AGENT_VERSION  # not the Python version

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"{self.address_string()} [{self.log_date_time_string()}] {printable(format % args)[:500]}\n")


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
