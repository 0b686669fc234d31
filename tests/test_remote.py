"""Remote measurement against a real `netopt agent` process on loopback."""

from __future__ import annotations

import http.client
import json
import os
import pickle
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnx.helper
import onnxruntime
import pytest
import torch
from agenthost import Agent, start_agent, stop_agent
from torch import nn

from netopt.errors import ConfigError, MeasurementError
from netopt.measure.agent import make_server
from netopt.measure.base import MeasureSettings
from netopt.measure.onnxrt import export_onnx
from netopt.measure.platform import cpu_model
from netopt.measure.registry import BACKENDS
from netopt.measure.remote import RemoteBackend
from netopt.testing.backends import BackendContract

pytestmark = pytest.mark.filterwarnings("ignore::netopt.measure.base.NoisyMeasurementWarning")

TOKEN = "test-token-0123456789abcdef"
MAX_BYTES = 1 << 20
TINY = MeasureSettings(warmup=1, runs=5, min_seconds=0.0)
AGENT = (
    "import os\n"
    "from netopt.measure.agent import serve\n"
    "from netopt.measure.base import MeasureSettings\n"
    "serve('127.0.0.1', 0, os.environ['NETOPT_TEST_TOKEN'], int(os.environ['NETOPT_TEST_MAX_BYTES']),\n"
    "      settings=MeasureSettings(warmup=1, runs=5, min_seconds=0.0))\n"
)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    log = tmp_path_factory.mktemp("agent") / "agent.log"
    env = {**os.environ, "NETOPT_TEST_TOKEN": TOKEN, "NETOPT_TEST_MAX_BYTES": str(MAX_BYTES)}
    running = start_agent(AGENT, env, log)
    try:
        assert running.host == "127.0.0.1" and running.port
        yield running
    finally:
        stop_agent(running)


def small_conv() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    return model, torch.randn(1, 3, 16, 16)


@pytest.fixture(scope="module")
def onnx_bytes() -> bytes:
    return export_onnx(*small_conv())


def request(agent: Agent, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
            token: str | None = TOKEN) -> tuple[int, dict[str, Any], http.client.HTTPResponse]:
    """One request with http.client; the status, the JSON answer and the response."""
    all_headers = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
    if body is not None:
        all_headers.setdefault("Content-Type", "application/octet-stream")
    connection = http.client.HTTPConnection(agent.host, agent.port, timeout=30)
    try:
        connection.request(method, path, body, all_headers)
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    return response.status, (json.loads(raw) if raw else {}), response


def measure(agent: Agent, body: bytes, query: str = "", headers: dict[str, str] | None = None,
            **kw: Any) -> tuple[int, dict[str, Any]]:
    status, reply, _ = request(agent, "POST", f"/v1/measure{query}", body, headers, **kw)
    return status, reply


def raw_exchange(agent: Agent, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes on a fresh socket, close our side, and read the answer until EOF or timeout."""
    with socket.create_connection((agent.host, agent.port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        chunks: list[bytes] = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except OSError:
            pass
    return b"".join(chunks)


def status_of(answer: bytes) -> int | None:
    head = answer.split(b"\r\n", 1)[0].split()
    return int(head[1]) if len(head) >= 2 and head[0].startswith(b"HTTP/") and head[1].isdigit() else None


def assert_alive(agent: Agent, onnx_bytes: bytes) -> None:
    assert agent.process.poll() is None, "the agent process died"
    status, reply = measure(agent, onnx_bytes)
    assert status == 200, reply
    assert len(reply["samples"]) >= 5


# ---------------------------------------------------------------------------------------- RemoteBackend


def test_remote_backend_measures_a_conv_model(agent: Agent) -> None:
    backend = RemoteBackend(agent.url, TOKEN, settings=TINY)
    m = backend.measure(*small_conv())
    assert m.unit == "ms" and len(m.samples) >= 5
    assert 0 < m.min <= m.median <= max(m.samples) and m.min <= m.p90 and m.iqr >= 0
    assert m.fingerprint == backend.fingerprint.key
    status, info, _ = request(agent, "GET", "/v1/info?threads=1&optimization=all")
    assert status == 200
    fields = backend.fingerprint.fields
    assert {k: fields[k] for k in info["platform"]} == info["platform"]
    assert fields["remote"] is True and info["agent"].startswith("netopt-agent/")
    assert fields["cpu"] == cpu_model() and fields["onnxruntime"] == onnxruntime.__version__
    assert fields["threads"] == 1 and fields["exporter"] == "legacy"


class TestRemoteBackendContract(BackendContract):
    """The remote client keeps the Backend contract (it is built from an agent, not registered by name)."""

    runs_at_least = TINY.runs

    @pytest.fixture
    def backend(self, agent: Agent) -> RemoteBackend:
        return RemoteBackend(agent.url, TOKEN, settings=TINY)


def test_fingerprint_is_cached_and_follows_the_settings(agent: Agent) -> None:
    one, two = RemoteBackend(agent.url, TOKEN), RemoteBackend(agent.url, TOKEN, threads=2, optimization="basic")
    assert one.info() is one.info()
    assert one.fingerprint == one.fingerprint
    assert two.fingerprint.fields["threads"] == 2 and two.fingerprint.fields["optimization"] == "basic"
    assert one.fingerprint.key != two.fingerprint.key


def test_concurrent_measurements_all_succeed(agent: Agent, onnx_bytes: bytes) -> None:
    backend = RemoteBackend(agent.url, TOKEN, settings=TINY)
    results: list[object] = []

    def run() -> None:  # measure_onnx: torch.onnx.export itself is not thread-safe
        try:
            results.append(backend.measure_onnx(onnx_bytes, (1, 3, 16, 16)))
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 4 and all(not isinstance(r, Exception) for r in results), results


def test_wrong_token_is_a_measurement_error_naming_401(agent: Agent) -> None:
    with pytest.raises(MeasurementError, match="401") as info:
        RemoteBackend(agent.url, "not-the-token-at-all", settings=TINY).measure(*small_conv())
    assert agent.url in str(info.value) and "token" in str(info.value)
    assert "\n" not in str(info.value) and TOKEN not in str(info.value)


def test_missing_or_wrong_token_on_the_wire_is_401(agent: Agent, onnx_bytes: bytes) -> None:
    for token in (None, "wrong-token-0123456789"):
        status, reply = measure(agent, onnx_bytes, token=token)
        assert status == 401 and "token" in reply["error"]
    status, reply, response = request(agent, "GET", "/v1/info", headers={"Authorization": f"Basic {TOKEN}"},
                                      token=None)
    assert status == 401 and response.getheader("WWW-Authenticate")


def test_unreachable_agent_is_a_measurement_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(MeasurementError, match="cannot reach the agent") as info:
        RemoteBackend(url, TOKEN, timeout=5).info()
    assert url in str(info.value)


def test_remote_backend_refuses_bad_configuration() -> None:
    for url in ("ftp://127.0.0.1:1", "http://127.0.0.1:1/v1/measure", "127.0.0.1:8470", "http://:8470"):
        with pytest.raises(ConfigError, match="base URL"):
            RemoteBackend(url, TOKEN)
    for token in ("", "with space", "line\nbreak"):
        with pytest.raises(ConfigError, match="token"):
            RemoteBackend("http://127.0.0.1:1", token)
    with pytest.raises(ConfigError, match="threads"):
        RemoteBackend("http://127.0.0.1:1", TOKEN, threads=0)
    with pytest.raises(ConfigError, match="timeout"):
        RemoteBackend("http://127.0.0.1:1", TOKEN, timeout=0)
    assert TOKEN not in repr(RemoteBackend("http://127.0.0.1:1", TOKEN))


# ---------------------------------------------------------------------------------------- the agent's refusals


def test_oversized_payload_is_413_before_the_body_is_read(agent: Agent, onnx_bytes: bytes) -> None:
    head = (f"POST /v1/measure HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: 1000000000000\r\n\r\n").encode()
    with socket.create_connection((agent.host, agent.port), timeout=5) as sock:
        sock.sendall(head + b"only a few bytes")  # the rest never comes: the answer must come anyway
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert status_of(answer) == 413 and b"limit" in answer
    status, reply = measure(agent, b"\0" * (MAX_BYTES + 1))
    assert status == 413 and "--max-mb" in reply["error"]
    assert_alive(agent, onnx_bytes)


def test_remote_backend_checks_the_size_limit_itself(agent: Agent) -> None:
    backend = RemoteBackend(agent.url, TOKEN, settings=TINY)
    with pytest.raises(MeasurementError, match="over the limit"):
        backend.measure_onnx(b"\0" * (MAX_BYTES + 1), (1, 3, 16, 16))


class Boom:
    """Unpickling this creates a marker file: the test proves the agent never unpickles."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_non_onnx_bodies_are_refused_and_nothing_is_unpickled(agent: Agent, onnx_bytes: bytes,
                                                              tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    bodies = {
        "pickle": pickle.dumps({"model": Boom(marker)}),
        "random": random.Random(0).randbytes(4096),
        "json": b'{"model": "resnet"}',
        "truncated onnx": onnx_bytes[: len(onnx_bytes) // 2],
    }
    for name, body in bodies.items():
        status, reply = measure(agent, body)
        assert status == 400 and "ONNX" in reply["error"], (name, reply)
    status, reply = measure(agent, b"")
    assert status == 400 and "empty body" in reply["error"]
    status, reply = measure(agent, onnx_bytes, headers={"Content-Type": "application/python-pickle"})
    assert status == 415 and "application/octet-stream" in reply["error"]
    assert not marker.exists()
    assert_alive(agent, onnx_bytes)


def relu_model(*inputs: onnx.ValueInfoProto, domain: str = "", initializer: onnx.TensorProto | None = None) -> bytes:
    """A one-node ONNX model (Relu of the first input) built by hand."""
    node = onnx.helper.make_node("Relu" if not domain else "Mystery", [inputs[0].name], ["y"], domain=domain)
    output = onnx.ValueInfoProto()
    output.CopyFrom(inputs[0])
    output.name = "y"
    graph = onnx.helper.make_graph([node], "g", list(inputs), [output], [initializer] if initializer else [])
    opsets = [onnx.helper.make_opsetid("", 17), *([onnx.helper.make_opsetid(domain, 1)] if domain else [])]
    return onnx.helper.make_model(graph, opset_imports=opsets).SerializeToString()


def float_input(name: str, dims: list[Any], kind: int = onnx.TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return onnx.helper.make_tensor_value_info(name, kind, dims)


def test_dynamic_inputs_need_a_shape(agent: Agent) -> None:
    model = relu_model(float_input("x", ["batch", 8]))
    status, reply = measure(agent, model)
    assert status == 400 and "dynamic" in reply["error"] and "shape=" in reply["error"]
    status, reply = measure(agent, model, "?shape=2,8")
    assert status == 200 and reply["shape"] == [2, 8], reply


def test_models_the_agent_cannot_feed_are_400_or_422(agent: Agent) -> None:
    two = relu_model(float_input("a", [1, 8]), float_input("b", [1, 8]))
    assert measure(agent, two)[0] == 400
    ints = relu_model(float_input("x", [1, 8], onnx.TensorProto.INT64))
    status, reply = measure(agent, ints)
    assert status == 400 and "float32" in reply["error"]
    status, reply = measure(agent, relu_model(float_input("x", [1, 8]), domain="com.example"))
    assert status == 422 and "ONNX Runtime" in reply["error"], reply


def test_external_data_is_refused_before_anything_reads_it(agent: Agent) -> None:
    weight = onnx.helper.make_tensor("w", onnx.TensorProto.FLOAT, [1], [0.0])
    weight.ClearField("float_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    entry = weight.external_data.add()
    entry.key, entry.value = "location", "../../../../etc/passwd"
    status, reply = measure(agent, relu_model(float_input("x", [1, 8]), initializer=weight))
    assert status == 400 and "external data" in reply["error"]


@pytest.mark.parametrize(("shape", "words"), [
    ("1,3,abc,16", "'abc' is not a positive integer"),
    ("1,3,-16,16", "is not a positive integer"),
    ("1,3,16", "rank 3"),
    ("1,4,16,16", "does not fit"),
    ("1,3,100000,100000", "cap"),
    ("", "is not a positive integer"),
    ("1,1,1,1,1,1,1,1,1", "more than 8"),
])
def test_bad_shapes_are_400(agent: Agent, onnx_bytes: bytes, shape: str, words: str) -> None:
    status, reply = measure(agent, onnx_bytes, f"?shape={shape}")
    assert status == 400 and "shape" in reply["error"] and words in reply["error"], reply


@pytest.mark.parametrize(("query", "headers", "field"), [
    ("?warmpu=3", {}, "warmpu"),
    ("", {"X-Netopt-Bogus": "1"}, "bogus"),
    ("?runs=2", {}, "runs"),
    ("?runs=five", {}, "runs"),
    ("?min_seconds=1e9", {}, "min_seconds"),
    ("?threads=0", {}, "threads"),
    ("?optimization=max", {}, "optimization"),
    ("?exporter=dynamo", {}, "exporter"),
    ("?runs=5&runs=6", {}, "runs"),
    ("?runs=5", {"X-Netopt-Runs": "6"}, "runs"),
])
def test_bad_parameters_are_400_naming_the_field(agent: Agent, onnx_bytes: bytes, query: str,
                                                 headers: dict[str, str], field: str) -> None:
    status, reply = measure(agent, onnx_bytes, query, headers)
    assert status == 400 and field in reply["error"], reply


def test_parameters_in_headers_and_the_reply_format(agent: Agent, onnx_bytes: bytes) -> None:
    headers = {"X-Netopt-Shape": "1,3,16,16", "X-Netopt-Runs": "6", "X-Netopt-Min-Seconds": "0"}
    status, reply = measure(agent, onnx_bytes, "?threads=1&optimization=extended", headers)
    assert status == 200, reply
    assert len(reply["samples"]) >= 6 and reply["shape"] == [1, 3, 16, 16]
    assert reply["settings"]["runs"] == 6 and reply["platform"]["optimization"] == "extended"
    assert {"unit", "median", "min", "p90", "iqr", "fingerprint", "agent"} <= set(reply)


def test_unknown_path_is_404_and_wrong_method_405(agent: Agent) -> None:
    assert request(agent, "GET", "/v1/nothing")[0] == 404
    assert request(agent, "GET", "/")[0] == 404
    status, reply, response = request(agent, "GET", "/v1/measure")
    assert status == 405 and response.getheader("Allow") == "POST" and "use POST" in reply["error"]
    assert request(agent, "DELETE", "/v1/info")[0] == 405
    assert request(agent, "PUT", "/v1/measure", b"x")[0] == 405
    status, reply, _ = request(agent, "BREW", "/v1/info")
    assert status == 501 and "error" in reply


def test_make_server_refuses_unsafe_configurations() -> None:
    with pytest.raises(ConfigError, match="needs a token"):
        make_server("127.0.0.1", 0, None)
    with pytest.raises(ConfigError, match="at least 16"):
        make_server("127.0.0.1", 0, "short")
    with pytest.raises(ConfigError, match="allow_remote"):
        make_server("0.0.0.0", 0, TOKEN)
    with pytest.raises(ConfigError, match="max_bytes"):
        make_server("127.0.0.1", 0, TOKEN, max_bytes=0)


def test_make_server_serves_in_process() -> None:
    server = make_server("127.0.0.1", 0, TOKEN, settings=TINY)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        fields = RemoteBackend(server.url, TOKEN).fingerprint.fields
        assert fields["backend"] == "onnxruntime-cpu" and fields["remote"] is True
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


# ---------------------------------------------------------------------------------------- bounded fuzz


@dataclass
class Wire:
    """A request as parts, so the fuzzer can break one part at a time."""

    method: bytes
    target: bytes
    version: bytes
    headers: dict[bytes, bytes]
    body: bytes
    extra: list[bytes]

    def encode(self) -> bytes:
        lines = [b"%s %s%s" % (self.method, self.target, self.version)]
        lines += [k + b": " + v for k, v in self.headers.items()] + self.extra
        return b"\r\n".join(lines) + b"\r\n\r\n" + self.body


def _mutations(rng: random.Random, body: bytes) -> list[Any]:
    """Each breaks one part of a valid measure request (or of the request line)."""
    garbage = rng.randbytes

    def header(name: bytes, *values: bytes) -> Any:
        return lambda w: w.headers.__setitem__(name, rng.choice(values))

    return [
        lambda w: setattr(w, "method", rng.choice([b"GET", b"PUT", b"HEAD", b"BREW", b"", b"P\0ST", garbage(6)])),
        lambda w: setattr(w, "target", rng.choice([b"/", b"/v1/info", b"//v1/measure", b"*", b"/v1/measure?" +
                                                  garbage(16), b"/" + b"a" * 70000, b"/v1/measure?shape=" +
                                                  b"9" * 40, b"/v1/measure?shape=1,x", b"/v1/measure?runs=1",
                                                  b"/v1/measure?threads=%ff%00", b"/v1/measure?a=1&" * 40])),
        lambda w: setattr(w, "target", rng.choice([b"/v1/measure?backend=" + v for v in (
            b"openvino", b"executorch", b"onnxruntime", b"tensorrt", b"%00", b"", b"openvino&optimization=all",
            b"onnxruntime&backend=openvino", b"executorch&shape=1,3,8,8", b"openvino&precision=int8",
            b"executorch&precision=int4", b"x" * 300)] + [b"/v1/info?backend=" + garbage(8).hex().encode()])),
        lambda w: setattr(w, "version", rng.choice([b"", b" HTTP/9.9", b" HTTX/1.1", b" HTTP/1.1 x", b" HTTP/1"])),
        lambda w: w.headers.pop(rng.choice(list(w.headers)), None),
        header(b"Authorization", b"Bearer nope", b"Bearer", b"Basic " + TOKEN.encode(), garbage(12)),
        header(b"Content-Type", b"text/plain", b"application/json", b"\xff\xfe", b""),
        header(b"Content-Length", b"-1", b"abc", b"1e3", b"1000000000000000", b"2", b" 99999 ", b"0"),
        header(b"X-Netopt-Backend", b"executorch", b"openvino", b"onnxruntime", b"tensorrt", b"\xff", b""),
        lambda w: setattr(w, "body", rng.choice([b"", garbage(300), pickle.dumps({"a": 1}),
                                                b"\0\0\0\0ET12" + garbage(200),
                                                body[: rng.randint(0, len(body))],
                                                bytes(b ^ rng.choice([0] * 30 + [1, 255]) for b in body)])),
        lambda w: w.extra.append(rng.choice([b"Transfer-Encoding: chunked", b"Content-Length: 3", b"no colon",
                                             b"X-Netopt-Shape: 1,x", b"X-Netopt-Bogus: 1", b"\xff: \x00",
                                             b"X-Long: " + b"v" * 70000, b"Expect: 100-continue",
                                             *[b"X-Many: 1\r\n" * 120 + b"X-Many: 1"]])),
    ]


def _fuzz_request(rng: random.Random, onnx_bytes: bytes, program: bytes) -> bytes:
    """A valid measure request, of an ONNX model or (half the time) of an ExecuTorch program, with
    one to three random parts broken, sometimes cut short."""
    body, backend = rng.choice([(onnx_bytes, {}), (program, {b"X-Netopt-Backend": b"executorch"})])
    wire = Wire(b"POST", b"/v1/measure", b" HTTP/1.1", {
        b"Host": b"127.0.0.1", b"Authorization": b"Bearer " + TOKEN.encode(), **backend,
        b"Content-Type": b"application/octet-stream", b"Content-Length": str(len(body)).encode(),
    }, body, [])
    for mutate in rng.sample(_mutations(rng, body), rng.randint(1, 3)):
        mutate(wire)
    message = wire.encode()
    return message[: rng.randint(0, len(message))] if rng.random() < 0.1 else message


@pytest.fixture(scope="module")
def program() -> bytes:
    """A small network lowered to an ExecuTorch program (XNNPACK), for the agent's executorch backend
    (without ExecuTorch here, bytes that begin like one: the agent then refuses the backend)."""
    if BACKENDS["executorch"].missing() is not None:
        return b"\0\0\0\0ET12" + bytes(400)
    from netopt.measure.executorch import ExecuTorch

    return ExecuTorch().lower(*small_conv())


def test_bounded_fuzz_leaves_the_agent_serving(agent: Agent, onnx_bytes: bytes, program: bytes) -> None:
    rng = random.Random(20240611)
    statuses: list[int | None] = []
    assert request(agent, "GET", "/v1/info")[0] == 200  # the runtimes start before the clock does
    start = time.monotonic()
    for _ in range(200):
        assert time.monotonic() - start < 20.0, f"fuzzing took over 20 s after {len(statuses)} requests"
        statuses.append(status_of(raw_exchange(agent, _fuzz_request(rng, onnx_bytes, program), timeout=3.0)))
    refused = [s for s in statuses if s is not None and (400 <= s < 500 or s in (501, 505))]
    assert set(statuses) - set(refused) <= {200, None}, f"unexpected statuses (500: see the agent's log): {statuses}"
    assert len(refused) > 150, statuses
    assert_alive(agent, onnx_bytes)
    assert measure(agent, program, "?backend=executorch")[0] == (400 if BACKENDS["executorch"].missing() else 200)
    assert "Traceback" not in agent.log.read_text(errors="replace"), f"the agent logged an exception: {agent.log}"
