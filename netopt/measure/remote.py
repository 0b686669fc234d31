"""`RemoteBackend`: latency measured on another device by its `netopt agent` (netopt.measure.agent).

The artifact the remote runtime takes is made here (an ONNX model, at int8 the static QDQ one;
an ExecuTorch program) and timed there by ONNX Runtime, OpenVINO or ExecuTorch; the
fingerprint is the remote device's for that backend and precision (fetched once from
`/v1/info`) plus this side's torch, exporter (and quantizer) and `remote: True`.
Requests go straight to the agent: no proxies from the environment, no redirects (the token
never travels anywhere but the URL given). Over a network, prefer an SSH tunnel to plain http.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import urllib.error
import urllib.request
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import torch
from torch import nn

from netopt.errors import ConfigError, MeasurementError
from netopt.measure.agent_runtimes import DEFAULT_BACKEND, SERVED
from netopt.measure.base import (
    Backend,
    Fingerprint,
    Measurement,
    MeasureSettings,
    NoisyMeasurementWarning,
    settings_from,
)
from netopt.measure.onnxrt import OrtSettings, export_onnx, export_qdq
from netopt.measure.precision import Precision, check_representative
from netopt.measure.qdq import quantizer_version
from netopt.measure.registry import BACKENDS

if TYPE_CHECKING:
    from netopt.measure.executorch import ExecuTorch

__all__ = ["RemoteBackend"]

FIXES: Mapping[int, str] = {
    400: "fix the request as the agent says",
    401: "give RemoteBackend the agent's token (its --token/--token-file, or the one it printed)",
    404: "give the agent's base URL, e.g. http://127.0.0.1:8470, and check that a netopt agent answers there",
    405: "give the agent's base URL; the agent and this netopt may speak different protocol versions",
    413: "measure a smaller model, or restart the agent with a larger --max-mb",
    422: "check that the model runs locally with onnxruntime (OnnxRuntimeCPU)",
}
"""What to do about each refusal; any other 4xx: fix the request; 5xx: read the agent's log."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """The agent never redirects; following one would send the token to another address."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class RemoteBackend(Backend):
    """Latency (ms) of the module run by `backend` (onnxruntime, openvino or executorch) on an
    agent's device, at `precision` (int8: quantized here on `representative` inputs).

    >>> RemoteBackend("http://127.0.0.1:8470", "0123456789abcdef", backend="openvino")
    RemoteBackend('http://127.0.0.1:8470', backend='openvino', threads=1)
    >>> RemoteBackend("http://127.0.0.1:8470", "0123456789abcdef", precision="int8")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    netopt.errors.ConfigError: RemoteBackend(precision='int8') needs representative inputs to quantize with: ...
    """

    unit = "ms"

    def __init__(self, url: str, token: str, threads: int = 1, settings: MeasureSettings | None = None,
                 timeout: float = 300.0, backend: str = DEFAULT_BACKEND, precision: Precision = "fp32",
                 representative: Sequence[torch.Tensor] | None = None, **ort: Any) -> None:
        self.url = _check_url(url)
        self._token = _check_token(token)
        self.backend = _check_backend(backend, ort)
        check_representative("RemoteBackend", precision, representative)
        self.precision: Precision = precision
        self.representative = list(representative or ())
        self.ort: OrtSettings = settings_from(OrtSettings, {"threads": threads, **ort}, "RemoteBackend")
        self.settings = settings or MeasureSettings()
        if not timeout > 0:
            raise ConfigError(f"RemoteBackend: timeout={timeout!r} must be a positive number of seconds")
        self.timeout = float(timeout)
        self._info: dict[str, Any] | None = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
        self._lowerer = _lowerer(precision, self.representative) if self.artifact_kind != "onnx" else None

    def __repr__(self) -> str:
        chosen = f", backend={self.backend!r}" if self.backend != DEFAULT_BACKEND else ""
        chosen += f", precision={self.precision!r}" if self.precision != "fp32" else ""
        ort = f", optimization={self.ort.optimization!r}" if self.backend == DEFAULT_BACKEND else ""
        return f"RemoteBackend({self.url!r}{chosen}, threads={self.ort.threads}{ort})"

    @property
    def artifact_kind(self) -> str:
        """What the remote runtime takes: "onnx" or "executorch-program"."""
        return SERVED[self.backend].artifact

    def info(self) -> dict[str, Any]:
        """The agent's `/v1/info` for this backend and its settings (asked once, then cached)."""
        if self._info is None:
            reply = self._call("GET", "/v1/info", self._runtime_params())
            if not isinstance(reply.get("platform"), dict) or not isinstance(reply.get("limits"), dict):
                raise MeasurementError(f"{self.url}/v1/info answered without 'platform' and 'limits': is it a "
                                       "netopt agent of the same version? check the URL")
            self._info = reply
        return self._info

    @property
    def fingerprint(self) -> Fingerprint:
        info = self.info()
        here: dict[str, Any] = {"torch": torch.__version__.split("+")[0]}
        if self.artifact_kind == "onnx":
            here["exporter"] = self.ort.exporter
            if self.precision == "int8":
                here["quantizer"] = quantizer_version()
        return Fingerprint({**info["platform"], **here, "remote": True})

    def artifact(self, module: nn.Module, example_input: torch.Tensor) -> bytes:
        """`module` as the remote runtime takes it: ONNX (int8: QDQ), or an ExecuTorch program."""
        if self._lowerer is not None:
            return self._lowerer.lower(module, example_input)
        if self.precision == "int8":
            return export_qdq(module, example_input, self.representative, self.ort.exporter)
        return export_onnx(module, example_input, self.ort.exporter)

    def measure(self, module: nn.Module, example_input: torch.Tensor) -> Measurement:
        what = type(module).__name__
        shape = tuple(example_input.shape)
        return self._send(self.artifact(module, example_input), shape if self._lowerer is None else None, what)

    def measure_onnx(self, model: bytes, input_shape: tuple[int, ...], what: str = "onnx model") -> Measurement:
        """Time an ONNX model (bytes; at int8 the QDQ model) there, on a random input of `input_shape`."""
        self._expect("onnx", "measure_program")
        return self._send(model, input_shape, what)

    def measure_program(self, program: bytes, what: str = "program") -> Measurement:
        """Time an ExecuTorch program (`.pte` bytes, `ExecuTorch.lower`) on the agent's device."""
        self._expect("executorch-program", "measure_onnx")
        return self._send(program, None, what)

    def _expect(self, kind: str, other: str) -> None:
        if self.artifact_kind != kind:
            raise ConfigError(f"RemoteBackend(backend={self.backend!r}) sends {self.artifact_kind} artifacts, not "
                              f"{kind}: use {other}, or measure(module, example_input)")

    def _send(self, artifact: bytes, input_shape: tuple[int, ...] | None, what: str) -> Measurement:
        info = self.info()
        limit = int(info["limits"].get("max_bytes", len(artifact)))
        if len(artifact) > limit:
            raise MeasurementError(f"{what}: the {self.artifact_kind} artifact is {len(artifact)} bytes, over the "
                                   f"limit of {limit} bytes of the agent at {self.url}: {FIXES[413]}")
        shape = {} if input_shape is None else {"shape": ",".join(str(s) for s in input_shape)}
        params = {**shape, **self._runtime_params(), **self.settings.model_dump()}
        reply = self._call("POST", "/v1/measure", params, artifact)
        if reply.get("platform") != info["platform"] or reply.get("backend", DEFAULT_BACKEND) != self.backend:
            diff = Fingerprint(reply.get("platform") or {}).diff(Fingerprint(info["platform"]))
            raise MeasurementError(f"the agent at {self.url} now reports another platform ({'; '.join(diff)}): "
                                   "its numbers would not compare with earlier ones; create a new RemoteBackend")
        return self._measurement(reply, what)

    def _measurement(self, reply: Mapping[str, Any], what: str) -> Measurement:
        try:
            m = Measurement.from_dict(reply)
        except (KeyError, TypeError, ValueError) as exc:
            raise MeasurementError(f"the agent at {self.url} answered a malformed measurement ({exc!r}): "
                                   "update netopt on both sides to the same version") from None
        m = dataclasses.replace(m, fingerprint=self.fingerprint.key)
        if m.noisy:
            warnings.warn(f"{what} on {self.url}: IQR/median is {m.iqr_ratio:.0%}; the device is busy or the "
                          "workload too short: quote the minimum, or measure again with more runs",
                          NoisyMeasurementWarning, stacklevel=3)
        return m

    def _runtime_params(self) -> dict[str, Any]:
        """The backend's settings as the agent takes them; defaults left out, so that ONNX Runtime at
        fp32 speaks the protocol of agents that serve nothing else."""
        params: dict[str, Any] = {"threads": self.ort.threads}
        if self.backend == DEFAULT_BACKEND:
            params["optimization"] = self.ort.optimization
        else:
            params["backend"] = self.backend
        if self.precision != "fp32":
            params["precision"] = self.precision
        return params

    def _call(self, method: str, path: str, params: Mapping[str, Any], body: bytes | None = None) -> dict[str, Any]:
        """One request to the agent; every failure becomes a one-line MeasurementError."""
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
        where = f"{method} {self.url}{path}"
        request = urllib.request.Request(f"{self.url}{path}?{urlencode(params)}", body, headers, method=method)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise MeasurementError(_refusal(where, exc)) from None
        except (OSError, http.client.HTTPException) as exc:
            raise MeasurementError(self._unreachable(where, exc)) from None
        return _decode(where, raw)

    def _unreachable(self, where: str, exc: BaseException) -> str:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, TimeoutError):
            return (f"{where}: no answer within {self.timeout:g} s: raise RemoteBackend(timeout=...) or lower "
                    "the measurement settings (runs, min_seconds)")
        text = reason if isinstance(reason, str) else _one_line(str(reason) or type(reason).__name__)
        return (f"{where}: cannot reach the agent ({text}): start `netopt agent` on the device and check the "
                "host and port (another machine: --allow-remote there, or an SSH tunnel)")


def _refusal(where: str, exc: urllib.error.HTTPError) -> str:
    """'<where>: HTTP <status> <reason>: <agent's error>; <what to do>'."""
    try:
        text = str(json.loads(exc.read())["error"])
    except Exception:
        text = "(no error message: is this a netopt agent?)"
    fix = FIXES.get(exc.code) or ("read the agent's log" if exc.code >= 500 else FIXES[400])
    return f"{where}: HTTP {exc.code} {exc.reason}: {_one_line(text)}; {fix}"


def _decode(where: str, raw: bytes) -> dict[str, Any]:
    try:
        reply = json.loads(raw)
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        raise MeasurementError(f"{where}: the answer is not a JSON object ({raw[:60]!r}): is the URL a netopt agent?")
    return reply


def _one_line(text: str) -> str:
    return " ".join(text.split())[:500]


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/") or parts.query:
        raise ConfigError(f"RemoteBackend: url {url!r} is not an agent's base URL: give http://host:port, "
                          "e.g. http://127.0.0.1:8470 (what `netopt agent` prints)")
    return url.rstrip("/")


def _check_backend(backend: str, ort: Mapping[str, Any]) -> str:
    """`backend` if an agent can serve it, with only the keywords its artifact takes."""
    if backend not in SERVED:
        raise ConfigError(f"RemoteBackend: backend={backend!r} is not one an agent serves; give one of "
                          f"{', '.join(SERVED)}")
    takes = {"onnxruntime": set(ort), "openvino": {"exporter"}}.get(backend, set())
    alien = sorted(set(ort) - takes)
    if alien:
        raise ConfigError(f"RemoteBackend(backend={backend!r}): {alien[0]}= is an ONNX Runtime setting it does not "
                          "take; drop it, or measure with backend='onnxruntime'")
    return backend


def _lowerer(precision: Precision, representative: Sequence[torch.Tensor]) -> ExecuTorch:
    """An ExecuTorch backend that lowers modules to programs here (its runtime is the agent's)."""
    reason = BACKENDS["executorch"].missing()
    if reason is not None:
        raise ConfigError(f"RemoteBackend(backend='executorch') lowers programs on this side: {reason}")
    from netopt.measure.executorch import ExecuTorch

    return ExecuTorch(precision=precision, threads=1, representative=representative or None)


def _check_token(token: str) -> str:
    if not isinstance(token, str) or not token or not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError("RemoteBackend: the token must be the agent's token, printable ASCII without spaces; "
                          "copy it from the agent's --token/--token-file or from what it printed")
    return token
