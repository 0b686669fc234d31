"""ExecuTorch with the XNNPACK delegate, against the real runtime (nothing mocked; tiny sizes)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("executorch", reason="the executorch extra is not installed: pip install 'netopt[executorch]'")

import netopt
from netopt.errors import ConfigError, MeasurementError
from netopt.lut import LookupTable
from netopt.measure.executorch import ExecuTorch, PortableOpsWarning
from netopt.measure.registry import BACKENDS, QUICK
from netopt.testing.backends import BackendContract, small_model

pytestmark = pytest.mark.filterwarnings("ignore::netopt.measure.base.NoisyMeasurementWarning")

REPRESENTATIVE = [torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))]


class TestInt8KeepsTheContract(BackendContract):
    runs_at_least = QUICK.runs

    @pytest.fixture
    def backend(self) -> ExecuTorch:
        return ExecuTorch(precision="int8", settings=QUICK, representative=REPRESENTATIVE)


class Cumulative(nn.Module):
    """A convolution XNNPACK takes, then a cumulative sum it does not: the portable kernel runs it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cumsum(self.conv(x), dim=1)


class Sorted(Cumulative):
    """A sort: neither XNNPACK nor the runtime's portable kernels have it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sort(self.conv(x), dim=1).values


class Branching(nn.Module):
    """Control flow on the input's values: torch.export cannot capture it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum() > 0 else x


def test_fp32_and_int8_measure_and_int8_is_really_quantized() -> None:
    model, x = small_model(width=64, size=16)
    fp32 = ExecuTorch(settings=QUICK)
    int8 = ExecuTorch(precision="int8", settings=QUICK, representative=[torch.randn(8, 3, 16, 16)])
    programs = {}
    for backend in (fp32, int8):
        programs[backend.et.precision] = backend.lower(model, x)
        assert backend.delegation is not None and backend.delegation.complete, backend.delegation
        m = backend.measure_program(programs[backend.et.precision], x)
        assert m.min > 0 and len(m.samples) >= QUICK.runs and m.fingerprint == backend.fingerprint.key
    quantized = {op for op in int8.delegation.delegated if op.startswith("quantized_decomposed.")}  # type: ignore[union-attr]
    assert {"quantized_decomposed.quantize_per_tensor.default",
            "quantized_decomposed.dequantize_per_channel.default"} <= quantized  # per-channel weights
    assert not any(op.startswith("quantized_decomposed.") for op in fp32.delegation.delegated)  # type: ignore[union-attr]
    assert len(programs["int8"]) < 0.5 * len(programs["fp32"])  # int8 weights: a quarter of the bytes


def test_the_fingerprint_names_runtime_delegate_precision_threads_and_cpu() -> None:
    fp32 = ExecuTorch(settings=QUICK).fingerprint
    int8 = ExecuTorch(precision="int8", settings=QUICK, representative=REPRESENTATIVE).fingerprint
    assert {"backend", "executorch", "delegate", "precision", "threads", "cpu"} <= set(fp32.fields)
    assert fp32.fields["backend"] == "executorch" and fp32.key != int8.key
    assert fp32.diff(int8) == ["precision: 'fp32' != 'int8'"]
    assert fp32.key != BACKENDS["onnxruntime"].make(threads=1).fingerprint.key


def test_int8_without_representative_inputs_is_one_config_error_line() -> None:
    with pytest.raises(ConfigError, match=r"^ExecuTorch\(precision='int8'\) needs representative inputs") as info:
        ExecuTorch(precision="int8")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="delegate='coreml' is invalid"):
        ExecuTorch(delegate="coreml")


def test_ops_left_to_the_portable_kernels_are_reported_and_warned_once() -> None:
    backend, x = ExecuTorch(settings=QUICK), torch.randn(1, 3, 8, 8)
    with pytest.warns(PortableOpsWarning, match=r"^ExecuTorch: Cumulative runs aten\.cumsum\.default outside"):
        assert backend.measure(Cumulative().eval(), x).min > 0
    delegation = backend.delegation
    assert delegation is not None and not delegation.complete
    assert dict(delegation.portable) == {"aten.cumsum.default": 1}
    assert delegation.delegated == {"aten.convolution.default": 1}
    assert delegation.summary() == "1 ops delegated, 1 on the portable kernels: aten.cumsum.default x1"
    with warnings.catch_warnings():
        warnings.simplefilter("error", PortableOpsWarning)
        backend.measure(Cumulative().eval(), x)  # the same module again: warned already


@pytest.mark.filterwarnings("ignore::netopt.measure.executorch.PortableOpsWarning")
def test_a_module_it_cannot_export_or_run_is_one_line_naming_the_op_and_the_fix() -> None:
    backend, x = ExecuTorch(settings=QUICK), torch.randn(1, 3, 8, 8)
    with pytest.raises(MeasurementError, match=r"^exporting Branching with torch\.export for ExecuTorch failed: .*"
                                               r"measure it with OnnxRuntimeCPU or TorchEager$") as exported:
        backend.measure(Branching(), x)
    with pytest.raises(MeasurementError, match=r"^ExecuTorch could not load Sorted: its runtime has no kernel for "
                                               r"aten::sort\.values; replace that op") as loaded:
        backend.measure(Sorted().eval(), x)
    with pytest.raises(MeasurementError, match=r"^ExecuTorch could not load program: .*\(ExecuTorch\.lower\)$"):
        backend.measure_program(b"not a program" * 10, x)
    assert "\n" not in str(exported.value) + str(loaded.value)


def test_a_module_exported_alike_is_lowered_once_and_changed_weights_lower_again() -> None:
    backend = ExecuTorch(settings=QUICK)
    model, x = small_model()
    first = backend.lower(model, x)
    assert backend.lower(small_model()[0], x) is first  # another module, the same graph and (seeded) weights
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert backend.lower(model, x) != first
    backend.close()


def test_side_by_side_interleaves_and_the_thread_pool_is_not_resized_under_a_loaded_program() -> None:
    one, two = ExecuTorch(settings=QUICK), ExecuTorch(threads=2, settings=QUICK)
    model, x = small_model()
    assert one.interleaves
    figures = one.measure_together([(model, x), small_model(width=32, size=32)])
    assert len(figures) == 2 and figures[0].min < figures[1].min
    program = one.lower(model, x)  # lowered above already: kept
    held = one.prepared(program, x)
    with pytest.raises(MeasurementError, match=r"^ExecuTorch\(threads=2\): ExecuTorch has one thread pool per process"):
        two.measure_program(program, x)
    held()
    del held
    assert two.measure_program(program, x).min > 0  # resized once nothing is loaded
    assert one.measure_program(program, x).min > 0


def test_a_lookup_table_on_executorch_estimates_after_calibration(tmp_path: Path) -> None:
    model, x = small_model(width=16, size=16)
    traced = netopt.trace(model, x)
    lut = LookupTable.open(tmp_path / "lut.sqlite", ExecuTorch(settings=QUICK))
    calibration = lut.calibrate(traced, max_networks=2)
    assert len(calibration.points) == 2
    estimate = lut.estimate(traced.network)
    assert estimate > 0 and lut.fingerprint.fields["backend"] == "executorch"
    smaller = traced.network.with_widths({g.id: g.min_width for g in traced.network.groups})
    assert 0 < lut.estimate(smaller) <= estimate
    lut.close()
