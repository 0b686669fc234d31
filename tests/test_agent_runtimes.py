"""The agent serves every runtime it has: ONNX Runtime, OpenVINO and ExecuTorch, over loopback,
against the real runtimes (nothing mocked), and refuses what it lacks in a 4xx naming what it has."""

from __future__ import annotations

import http.client
import json
import os
import pickle
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from agenthost import Agent, start_agent, stop_agent
from torch import nn

pytest.importorskip("openvino", reason="the OpenVINO runtime is not installed: pip install 'netopt[openvino]'")
pytest.importorskip("executorch", reason="the executorch extra is not installed: pip install 'netopt[executorch]'")

from netopt.errors import ConfigError, MeasurementError
from netopt.measure.base import MeasureSettings
from netopt.measure.executorch import ExecuTorch
from netopt.measure.onnxrt import export_onnx, export_qdq
from netopt.measure.remote import RemoteBackend

pytestmark = [pytest.mark.filterwarnings("ignore::netopt.measure.base.NoisyMeasurementWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

TOKEN = "test-token-runtimes-0123456789"
TINY = MeasureSettings(warmup=1, runs=5, min_seconds=0.0)
AGENT = (
    "import os, sys\n"
    "if os.environ.get('NETOPT_TEST_HIDE'):\n"
    "    sys.modules[os.environ['NETOPT_TEST_HIDE']] = None  # as if it were not installed\n"
    "from netopt.measure.agent import serve\n"
    "from netopt.measure.base import MeasureSettings\n"
    "serve('127.0.0.1', 0, os.environ['NETOPT_TEST_TOKEN'], 1 << 20,\n"
    "      settings=MeasureSettings(warmup=1, runs=5, min_seconds=0.0))\n"
)


def _start(log: Path, hide: str = "") -> Agent:
    return start_agent(AGENT, {**os.environ, "NETOPT_TEST_TOKEN": TOKEN, "NETOPT_TEST_HIDE": hide}, log)


_stop = stop_agent


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    started = _start(tmp_path_factory.mktemp("agent") / "agent.log")
    yield started
    _stop(started)


@pytest.fixture(scope="module")
def without_executorch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    started = _start(tmp_path_factory.mktemp("agent") / "agent.log", hide="executorch")
    yield started
    _stop(started)


def small_conv() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    return model, torch.randn(1, 3, 16, 16)


@pytest.fixture(scope="module")
def program() -> bytes:
    return ExecuTorch().lower(*small_conv())


@pytest.fixture(scope="module")
def onnx_bytes() -> bytes:
    return export_onnx(*small_conv())


def call(agent: Agent, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """One request; the status and the JSON answer."""
    all_headers = {"Authorization": f"Bearer {TOKEN}", **({"Content-Type": "application/octet-stream"} if body
                                                          is not None else {}), **(headers or {})}
    connection = http.client.HTTPConnection(agent.host, agent.port, timeout=60)
    try:
        connection.request(method, path, body, all_headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


# ---------------------------------------------------------------------------------------- /v1/info


def test_info_lists_every_installed_runtime_and_keeps_ort_where_clients_read_it(agent: Agent) -> None:
    status, info = call(agent, "GET", "/v1/info?threads=1&optimization=all")
    assert status == 200, info
    listed = info["backends"]
    assert set(listed) == {"onnxruntime", "openvino", "executorch"} and info["missing"] == {}
    assert {n: e["artifact"] for n, e in listed.items()} == {
        "onnxruntime": "onnx", "openvino": "onnx", "executorch": "executorch-program"}
    for name, entry in listed.items():
        assert entry["precisions"] == ["fp32", "int8"] and entry["version"], name
        assert entry["platform"]["threads"] == 1 and "torch" not in entry["platform"], name
    assert info["platform"] == listed["onnxruntime"]["platform"] and info["backend"] == "onnxruntime"
    assert info["platform"]["backend"] == "onnxruntime-cpu" and "precision" not in info["platform"]
    assert listed["executorch"]["platform"]["delegate"] == "xnnpack"


def test_info_gives_the_fields_of_the_settings_asked_for(agent: Agent) -> None:
    status, info = call(agent, "GET", "/v1/info?backend=openvino&precision=int8&threads=2")
    assert status == 200, info
    assert info["backend"] == "openvino" and info["platform"]["precision"] == "int8"
    assert info["platform"]["threads"] == 2 and info["platform"] == info["backends"]["openvino"]["platform"]
    assert info["backends"]["executorch"]["platform"]["precision"] == "int8"


# ---------------------------------------------------------------------------------------- measured remotely


def test_openvino_fp32_is_measured_remotely(agent: Agent) -> None:
    backend = RemoteBackend(agent.url, TOKEN, settings=TINY, backend="openvino")
    m = backend.measure(*small_conv())
    assert m.unit == "ms" and len(m.samples) >= 5 and m.median > 0
    fields = backend.fingerprint.fields
    assert fields["backend"] == "openvino" and fields["precision"] == "fp32" and fields["remote"] is True
    assert m.fingerprint == backend.fingerprint.key
    assert backend.fingerprint.key != RemoteBackend(agent.url, TOKEN, settings=TINY).fingerprint.key


def test_onnxruntime_int8_is_measured_remotely_on_the_qdq_model_made_here(agent: Agent) -> None:
    representative = [torch.randn(4, 3, 16, 16)]
    backend = RemoteBackend(agent.url, TOKEN, settings=TINY, precision="int8", representative=representative)
    m = backend.measure(*small_conv())
    assert len(m.samples) >= 5 and m.median > 0
    fields = backend.fingerprint.fields
    assert fields["backend"] == "onnxruntime-cpu" and fields["precision"] == "int8"
    assert fields["quantization"].startswith("qdq") and fields["quantizer"].startswith("onnxruntime-")
    fp32 = RemoteBackend(agent.url, TOKEN, settings=TINY).fingerprint
    assert "precision" not in fp32.fields and fp32.key != backend.fingerprint.key
    qdq = export_qdq(*small_conv(), representative)
    assert backend.measure_onnx(qdq, (1, 3, 16, 16)).median > 0


def test_executorch_fp32_is_measured_remotely(agent: Agent, program: bytes) -> None:
    backend = RemoteBackend(agent.url, TOKEN, settings=TINY, backend="executorch")
    m = backend.measure(*small_conv())
    assert m.unit == "ms" and len(m.samples) >= 5 and m.median > 0
    fields = backend.fingerprint.fields
    assert (fields["backend"], fields["delegate"], fields["precision"]) == ("executorch", "xnnpack", "fp32")
    assert "exporter" not in fields and fields["remote"] is True
    assert backend.measure_program(program).fingerprint == backend.fingerprint.key
    with pytest.raises(ConfigError, match="measure_program"):
        backend.measure_onnx(b"onnx", (1, 3, 16, 16))


def test_the_answer_names_the_backend_that_measured(agent: Agent, program: bytes, onnx_bytes: bytes) -> None:
    status, reply = call(agent, "POST", "/v1/measure?backend=executorch", program)
    assert status == 200 and reply["backend"] == "executorch" and reply["shape"] == [1, 3, 16, 16], reply
    assert reply["platform"]["backend"] == "executorch"
    status, reply = call(agent, "POST", "/v1/measure", onnx_bytes, {"X-Netopt-Backend": "openvino"})
    assert status == 200 and reply["backend"] == "openvino" and reply["platform"]["backend"] == "openvino"


def test_a_client_of_todays_protocol_still_measures_on_onnx_runtime(agent: Agent, onnx_bytes: bytes) -> None:
    status, reply = call(agent, "POST", "/v1/measure?shape=1,3,16,16&threads=1&optimization=all&runs=5",
                         onnx_bytes)
    assert status == 200 and reply["backend"] == "onnxruntime", reply
    _, info = call(agent, "GET", "/v1/info?threads=1&optimization=all")
    assert reply["platform"] == info["platform"]
    fields = RemoteBackend(agent.url, TOKEN).fingerprint.fields
    assert set(fields) == set(info["platform"]) | {"torch", "exporter", "remote"}


# ---------------------------------------------------------------------------------------- refusals


def test_a_runtime_the_agent_lacks_is_a_4xx_naming_those_it_has(without_executorch: Agent, program: bytes,
                                                                 onnx_bytes: bytes) -> None:
    status, reply = call(without_executorch, "POST", "/v1/measure?backend=executorch", program)
    assert 400 <= status < 500 and "onnxruntime, openvino" in reply["error"], reply
    assert "netopt[executorch]" in reply["error"]
    status, reply = call(without_executorch, "POST", "/v1/measure?backend=tensorrt", onnx_bytes)
    assert 400 <= status < 500 and "'tensorrt'" in reply["error"] and "onnxruntime, openvino" in reply["error"]
    status, info = call(without_executorch, "GET", "/v1/info")
    assert status == 200 and set(info["backends"]) == {"onnxruntime", "openvino"}
    assert "executorch" in info["missing"]["executorch"]
    with pytest.raises(MeasurementError, match=r"HTTP 400.*onnxruntime, openvino"):
        RemoteBackend(without_executorch.url, TOKEN, backend="executorch").measure(*small_conv())
    assert call(without_executorch, "POST", "/v1/measure", onnx_bytes)[0] == 200


@pytest.mark.parametrize(("query", "body", "words"), [
    ("?backend=openvino&optimization=all", "onnx", "does not apply to backend 'openvino'"),
    ("?precision=int8", "onnx", "no QuantizeLinear"),
    ("?precision=int4", "onnx", "precision"),
    ("?backend=executorch", "onnx", "not an ExecuTorch program"),
    ("?backend=executorch&shape=1,3,8,8", "program", "does not fit the program's input"),
    ("?backend=executorch&optimization=basic", "program", "does not apply"),
    ("?backend=openvino", "program", "not an ONNX model"),
    ("?backend=", "onnx", "is not one the agent serves"),
])
def test_wrong_artifacts_and_parameters_are_400(agent: Agent, program: bytes, onnx_bytes: bytes, query: str,
                                                body: str, words: str) -> None:
    status, reply = call(agent, "POST", f"/v1/measure{query}", program if body == "program" else onnx_bytes)
    assert status == 400 and words in reply["error"], reply


def test_a_pickle_sent_as_a_program_is_never_unpickled(agent: Agent, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    body = pickle.dumps({"program": _Boom(marker)})
    status, reply = call(agent, "POST", "/v1/measure?backend=executorch", body)
    assert status == 400 and "ExecuTorch program" in reply["error"]
    assert not marker.exists()


class _Boom:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_damaged_programs_are_refused_and_the_agent_keeps_measuring(agent: Agent, program: bytes) -> None:
    """Bit flips, overwrites and cuts: some crash ExecuTorch's runtime, in a child, never the agent."""
    rng = random.Random(30)
    statuses = []
    for _ in range(40):
        damaged = bytearray(program)
        how = rng.choice(["flip", "overwrite", "cut"])
        if how == "cut":
            damaged = damaged[:rng.randrange(len(damaged))]
        for _ in range(rng.choice([1, 3, 10]) if how != "cut" else 0):
            at = rng.randrange(len(damaged))
            damaged[at] = damaged[at] ^ 0xFF if how == "flip" else rng.randrange(256)
        statuses.append(call(agent, "POST", "/v1/measure?backend=executorch", bytes(damaged))[0])
    assert set(statuses) <= {200, 400, 422}, statuses
    assert statuses.count(200) < len(statuses)
    assert agent.process.poll() is None
    assert call(agent, "POST", "/v1/measure?backend=executorch", program)[0] == 200
    assert "Traceback" not in agent.log.read_text(errors="replace")


def test_remote_backend_refuses_what_no_agent_can_serve() -> None:
    url = "http://127.0.0.1:1"
    with pytest.raises(ConfigError, match="onnxruntime, openvino, executorch"):
        RemoteBackend(url, TOKEN, backend="tensorrt")
    with pytest.raises(ConfigError, match="optimization"):
        RemoteBackend(url, TOKEN, backend="openvino", optimization="basic")
    with pytest.raises(ConfigError, match="representative"):
        RemoteBackend(url, TOKEN, backend="executorch", precision="int8")
    with pytest.raises(ConfigError, match="precision"):
        RemoteBackend(url, TOKEN, precision="int4")  # type: ignore[arg-type]
    assert "precision='int8'" in repr(RemoteBackend(url, TOKEN, backend="openvino", precision="int8",
                                                    representative=[torch.randn(1, 3, 8, 8)]))


def test_the_agent_imports_no_torch_while_it_serves_onnx_runtimes() -> None:
    """A device may have no torch: only the ExecuTorch worker (a process of its own) imports it."""
    code = (
        "import sys, threading, http.client\n"
        "from netopt.measure.agent import make_server\n"
        f"server = make_server('127.0.0.1', 0, {TOKEN!r})\n"
        "threading.Thread(target=server.serve_forever, daemon=True).start()\n"
        "c = http.client.HTTPConnection(*server.server_address[:2], timeout=120)\n"
        f"c.request('GET', '/v1/info?backend=openvino', headers={{'Authorization': 'Bearer {TOKEN}'}})\n"
        "assert c.getresponse().status == 200\n"
        "server.shutdown(); server.server_close()\n"
        "print('torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-500:]
