"""`RemoteBackend`: latency measured on another device by its `netopt agent` (netopt.measure.agent).

The model is exported to ONNX here and timed there by ONNX Runtime; the fingerprint is the
remote device's (fetched once from `/v1/info`) plus this side's exporter and `remote: True`.
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
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import torch
from torch import nn

from netopt.errors import ConfigError, MeasurementError
from netopt.measure.base import (
    Backend,
    Fingerprint,
    Measurement,
    MeasureSettings,
    NoisyMeasurementWarning,
    settings_from,
)
from netopt.measure.onnxrt import OrtSettings, export_onnx

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
    """Latency (ms) of the model exported to ONNX here and run by ONNX Runtime on an agent's device."""

    unit = "ms"

    def __init__(self, url: str, token: str, threads: int = 1, settings: MeasureSettings | None = None,
                 timeout: float = 300.0, **ort: Any) -> None:
        self.url = _check_url(url)
        self._token = _check_token(token)
        self.ort: OrtSettings = settings_from(OrtSettings, {"threads": threads, **ort}, "RemoteBackend")
        self.settings = settings or MeasureSettings()
        if not timeout > 0:
            raise ConfigError(f"RemoteBackend: timeout={timeout!r} must be a positive number of seconds")
        self.timeout = float(timeout)
        self._info: dict[str, Any] | None = None
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())

    def __repr__(self) -> str:
        return f"RemoteBackend({self.url!r}, threads={self.ort.threads}, optimization={self.ort.optimization!r})"

    def info(self) -> dict[str, Any]:
        """The agent's `/v1/info` for these ONNX Runtime settings (asked once, then cached)."""
        if self._info is None:
            reply = self._call("GET", "/v1/info", self._ort_params())
            if not isinstance(reply.get("platform"), dict) or not isinstance(reply.get("limits"), dict):
                raise MeasurementError(f"{self.url}/v1/info answered without 'platform' and 'limits': is it a "
                                       "netopt agent of the same version? check the URL")
            self._info = reply
        return self._info

    @property
    def fingerprint(self) -> Fingerprint:
        info = self.info()
        return Fingerprint({**info["platform"], "torch": torch.__version__.split("+")[0],
                            "exporter": self.ort.exporter, "remote": True})

    def measure(self, module: nn.Module, example_input: torch.Tensor) -> Measurement:
        model = export_onnx(module, example_input, self.ort.exporter)
        return self.measure_onnx(model, tuple(example_input.shape), type(module).__name__)

    def measure_onnx(self, model: bytes, input_shape: tuple[int, ...], what: str = "onnx model") -> Measurement:
        """Time an ONNX model (bytes) on the agent's device on a random input of `input_shape`."""
        info = self.info()
        limit = int(info["limits"].get("max_bytes", len(model)))
        if len(model) > limit:
            raise MeasurementError(f"{what}: the ONNX model is {len(model)} bytes, over the limit of {limit} bytes "
                                   f"of the agent at {self.url}: {FIXES[413]}")
        params = {"shape": ",".join(str(s) for s in input_shape), **self._ort_params(),
                  **self.settings.model_dump()}
        reply = self._call("POST", "/v1/measure", params, model)
        if reply.get("platform") != info["platform"]:
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

    def _ort_params(self) -> dict[str, Any]:
        return {"threads": self.ort.threads, "optimization": self.ort.optimization}

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


def _check_token(token: str) -> str:
    if not isinstance(token, str) or not token or not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError("RemoteBackend: the token must be the agent's token, printable ASCII without spaces; "
                          "copy it from the agent's --token/--token-file or from what it printed")
    return token
