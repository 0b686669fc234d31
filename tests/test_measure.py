"""Latency backends and the measurement protocol."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import nn

from netopt.errors import ConfigError, MeasurementError
from netopt.measure import (
    Backend,
    Estimator,
    MeasureSettings,
    NoisyMeasurementWarning,
    OnnxRuntimeCPU,
    TorchEager,
    onnxrt,
)
from netopt.measure.base import summarize
from netopt.measure.onnxrt import export_onnx
from netopt.measure.registry import BACKENDS, QUICK
from netopt.measure.timing import time_calls
from netopt.testing.backends import BackendContract, EstimatorContract, check_backend, small_model


def _example(name: str) -> Any:
    """The registered backend's contract example, or a skip that says why it cannot run here."""
    entry = BACKENDS[name]
    reason = entry.missing()
    if reason is not None:
        pytest.skip(reason)
    assert entry.example is not None, f"{name} is registered without a contract example"
    try:
        return entry.make(**entry.example)
    except MeasurementError as exc:  # the platform lacks what it measures (RAPL counters)
        pytest.skip(f"{name}: {exc}")


@pytest.mark.filterwarnings("ignore::netopt.measure.base.NoisyMeasurementWarning")
class TestEveryRegisteredBackend(BackendContract):
    runs_at_least = QUICK.runs

    @pytest.fixture(params=[e.name for e in BACKENDS if e.measures])
    def backend(self, request: pytest.FixtureRequest) -> Backend:
        return _example(request.param)  # type: ignore[no-any-return]


class TestEveryRegisteredEstimator(EstimatorContract):
    @pytest.fixture(params=[e.name for e in BACKENDS if not e.measures])
    def estimator(self, request: pytest.FixtureRequest) -> Estimator:
        return _example(request.param)  # type: ignore[no-any-return]


def test_every_registered_backend_has_a_contract_example() -> None:
    assert [e.name for e in BACKENDS if e.example is None] == [], "give each registration an example"


def test_the_contract_helper_checks_a_backend_in_one_call() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoisyMeasurementWarning)
        check_backend(OnnxRuntimeCPU(threads=1, settings=QUICK), runs_at_least=10)


@pytest.mark.filterwarnings("ignore::netopt.measure.base.NoisyMeasurementWarning")
def test_protocol_warms_up_then_times_until_runs_and_seconds_both_suffice() -> None:
    calls = []
    settings = MeasureSettings(warmup=10, runs=50, min_seconds=0.05)
    m = time_calls(lambda: calls.append(1), settings)
    assert len(calls) == 10 + len(m.samples)
    assert len(m.samples) > 50  # 50 runs of nothing take far less than 0.05 s: time decides
    m = time_calls(lambda: calls.append(1), MeasureSettings(warmup=1, runs=60, min_seconds=0.0))
    assert len(m.samples) == 60


def test_summary_statistics_and_the_noise_warning() -> None:
    steady = summarize([1.0] * 20 + [1.02] * 20, "ms")
    assert (steady.min, steady.median, steady.noisy) == (1.0, 1.01, False)
    with pytest.warns(NoisyMeasurementWarning, match="IQR/median is"):
        noisy = summarize([1.0, 1.5, 2.0, 2.5, 3.0], "ms")
    assert noisy.iqr == pytest.approx(1.0) and noisy.p90 == pytest.approx(2.8)


def test_fingerprint_names_the_platform_and_changes_with_settings() -> None:
    one, two = OnnxRuntimeCPU(threads=1).fingerprint, OnnxRuntimeCPU(threads=2, spinning=True).fingerprint
    assert {"backend", "onnxruntime", "cpu", "threads"} <= set(one.fields)
    assert one.key != two.key and one.diff(two) == ["threads: 1 != 2"]


def test_threads_beyond_the_cores_wait_without_spinning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnxrt, "cores", lambda: 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spinning = OnnxRuntimeCPU(threads=2)
    with pytest.warns(NoisyMeasurementWarning, match=r"^OnnxRuntimeCPU\(threads=4\) on 2 cores: .* at most 2 threads"):
        quiet, forced = OnnxRuntimeCPU(threads=4), OnnxRuntimeCPU(threads=4, spinning=True)
    assert (spinning.ort.spins, quiet.ort.spins, forced.ort.spins) == (True, False, True)
    assert not OnnxRuntimeCPU(threads=2, spinning=False).ort.spins
    # a table measured spinning keeps its key; one measured quiet is another platform
    assert "spinning" not in spinning.fingerprint.fields
    assert quiet.fingerprint.diff(forced.fingerprint) == ["spinning: False != None"]
    model = export_onnx(nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8))
    entry = "session.intra_op.allow_spinning"
    assert quiet.session(model).get_session_options().get_session_config_entry(entry) == "0"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # ORT's default: spin
        spinning.session(model).get_session_options().get_session_config_entry(entry)


def test_bad_settings_are_one_line_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"setting thread=2 is invalid.*valid settings"):
        OnnxRuntimeCPU(thread=2)
    with pytest.raises(ConfigError, match="optimization='fast'"):
        OnnxRuntimeCPU(optimization="fast")
    with pytest.raises(ValueError, match="max_runs=5 is below runs=50"):
        MeasureSettings(max_runs=5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(MeasurementError, match="no CUDA device"):
        TorchEager(device="cuda")


class Unexportable(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft2(x).abs()


def test_a_model_that_fails_to_export_says_so() -> None:
    with pytest.raises(MeasurementError, match=r"exporting Unexportable to ONNX failed.*TorchEager"):
        OnnxRuntimeCPU(settings=QUICK).measure(Unexportable(), torch.randn(1, 3, 8, 8))


def test_eager_restores_threads_and_mode() -> None:
    model, x = small_model()
    model.train()
    before = torch.get_num_threads()
    TorchEager(threads=1, settings=QUICK).measure(model, x)
    assert torch.get_num_threads() == before and model.training
