"""Every measurement backend and estimator netopt ships, registered once, by name.

An entry names its class and settings model by `Ref` (imported only when asked for), the
resource it prices, whether it measures whole modules (a `Backend`) or estimates from the IR,
the modules its runtime needs and the pip extra that installs them, and the settings of a
quick contract run. `[lut] backend` in a config file and the constraints' estimator
factories read `BACKENDS`; the contract tests run every entry's example. Adding a backend
(ExecuTorch, OpenVINO, ...) is its module plus one `BackendEntry` here: a missing runtime is
then refused in one line that names the extra to install. A latency backend takes `threads`
(a config's `[lut] threads`) and `settings` (a `MeasureSettings`) as keywords.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib.util import find_spec
from types import MappingProxyType
from typing import Any, Literal

from netopt.errors import ConfigError
from netopt.measure.base import MeasureSettings
from netopt.measure.precision import PRECISIONS
from netopt.registry import Ref, Registry

__all__ = ["BACKENDS", "BackendEntry", "QUICK", "latency_backends"]

Resource = Literal["latency", "energy", "memory"]

QUICK = MeasureSettings(warmup=2, runs=10, min_seconds=0.0)
"""A contract run's protocol: a few warm-ups, ten timed runs, no minimum time."""


def _frozen(settings: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(settings or {}))


@dataclass(frozen=True)
class BackendEntry:
    """One backend: `name` (`[lut] backend`), its class and settings model, the resource it
    prices, whether it `measures` whole modules (else it estimates from the IR), the modules
    its runtime needs (`requires`) with the pip `extra` that installs them, and `example`, the
    keyword settings of a quick contract run.

    >>> entry = BACKENDS["memory"]
    >>> entry.make(bytes_per_element=2).unit, entry.settings_model()().bytes_per_element
    ('bytes', 4)
    """

    name: str
    target: Ref
    settings: Ref
    resource: Resource
    measures: bool
    requires: tuple[str, ...] = ()
    extra: str | None = None
    example: Mapping[str, Any] | None = None
    """The keyword settings of a quick contract run (None: none given, which a test refuses)."""
    precisions: tuple[str, ...] = ("fp32",)
    """The precisions it measures at (`precision=` and, for int8, `representative=` keywords)."""

    def missing(self) -> str | None:
        """Why this backend cannot run here (one line naming what to install), or None."""
        absent = [m for m in self.requires if find_spec(m) is None]
        if not absent:
            return None
        install = f"pip install 'netopt[{self.extra}]'" if self.extra else f"pip install {' '.join(absent)}"
        return (f"backend {self.name!r} needs {', '.join(absent)}, which is not installed here; {install}, or "
                "choose another backend")

    def _check(self) -> None:
        reason = self.missing()
        if reason is not None:
            raise ConfigError(reason)

    def load(self) -> type[Any]:
        """The backend's class, its runtime imported now (one ConfigError line if it is missing)."""
        self._check()
        return self.target.load()  # type: ignore[no-any-return]

    def settings_model(self) -> type[Any]:
        """The pydantic model of the backend's own settings (what its fingerprint records)."""
        self._check()
        return self.settings.load()  # type: ignore[no-any-return]

    def make(self, **settings: Any) -> Any:
        """A backend (or estimator) with these keyword settings."""
        return self.load()(**settings)


def _ort(name: str, cls: str, settings: str, resource: Resource, example: Mapping[str, Any],
         precisions: tuple[str, ...] = ("fp32",)) -> BackendEntry:
    """A backend that runs the exported model with ONNX Runtime on this CPU."""
    return BackendEntry(name, Ref(f"netopt.measure.{cls}"), Ref(f"netopt.measure.{settings}"), resource, True,
                        ("onnxruntime", "onnx"), None, _frozen(example), precisions)


BACKENDS: Registry[BackendEntry] = Registry("measurement backend", [
    _ort("onnxruntime", "onnxrt:OnnxRuntimeCPU", "onnxrt:OrtSettings", "latency",
         {"threads": 1, "settings": QUICK}, PRECISIONS),
    BackendEntry("torch-eager", Ref("netopt.measure.eager:TorchEager"), Ref("netopt.measure.eager:EagerSettings"),
                 "latency", True, ("torch",), None, _frozen({"threads": 1, "settings": QUICK})),
    BackendEntry("executorch", Ref("netopt.measure.executorch:ExecuTorch"),
                 Ref("netopt.measure.executorch:ExecuTorchSettings"), "latency", True, ("executorch",), "executorch",
                 _frozen({"threads": 1, "settings": QUICK}), PRECISIONS),
    _ort("rapl", "energy:RaplEnergy", "energy:RaplSettings", "energy", {"threads": 1, "settings": QUICK}),
    BackendEntry("energy-model", Ref("netopt.measure.energy:EnergyModel"), Ref("netopt.measure.energy:EnergyCosts"),
                 "energy", False, example=_frozen()),
    BackendEntry("memory", Ref("netopt.measure.memory:MemoryModel"), Ref("netopt.measure.memory:MemorySettings"),
                 "memory", False, example=_frozen()),
    BackendEntry("openvino", Ref("netopt.measure.openvino:OpenVINO"), Ref("netopt.measure.openvino:OpenVINOSettings"),
                 "latency", True, ("openvino",), "openvino", _frozen({"threads": 1, "settings": QUICK}), PRECISIONS),
], "register it in netopt/measure/registry.py")
"""The backends and estimators netopt ships. The remote agent's client (`RemoteBackend`) is not
here: it is built from an agent's URL and token (`netopt agent`), not chosen by name."""


def latency_backends() -> tuple[str, ...]:
    """The registered backends a latency lookup table can measure on.

    >>> latency_backends()
    ('onnxruntime', 'torch-eager', 'executorch', 'openvino')
    """
    return tuple(e.name for e in BACKENDS if e.measures and e.resource == "latency")
