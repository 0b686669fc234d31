"""netopt: adapt a pretrained PyTorch network to a platform's resource budgets.

`netopt.ir` is importable without torch; the torch-facing names below load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from netopt.errors import NetoptError

if TYPE_CHECKING:
    from netopt import data
    from netopt.bridge import Traced, trace
    from netopt.cluster import DaskExecutor
    from netopt.constraints import (
        EnergyConstraint,
        LatencyConstraint,
        MACsConstraint,
        MemoryConstraint,
        ParamsConstraint,
        ReductionSchedule,
    )
    from netopt.lut import LookupTable
    from netopt.objectives import Accuracy, FunctionObjective, Trainer
    from netopt.runs import load
    from netopt.strategies import (
        GeometricProgram,
        MnasNetReward,
        NetAdaptV2,
        OptunaSearch,
        Problem,
        ProgressiveBarrier,
        RandomSearch,
        UniformWidth,
    )

__version__ = "0.1.0"
__all__ = [
    "Accuracy",
    "DaskExecutor",
    "EnergyConstraint",
    "FunctionObjective",
    "GeometricProgram",
    "LatencyConstraint",
    "LookupTable",
    "MACsConstraint",
    "MemoryConstraint",
    "MnasNetReward",
    "NetAdaptV2",
    "NetoptError",
    "OptunaSearch",
    "ParamsConstraint",
    "Problem",
    "ProgressiveBarrier",
    "RandomSearch",
    "ReductionSchedule",
    "Traced",
    "Trainer",
    "UniformWidth",
    "__version__",
    "data",
    "load",
    "trace",
]

_LAZY = {
    "trace": "netopt.bridge",
    "Traced": "netopt.bridge",
    "LookupTable": "netopt.lut",
    "LatencyConstraint": "netopt.constraints",
    "EnergyConstraint": "netopt.constraints",
    "MemoryConstraint": "netopt.constraints",
    "MACsConstraint": "netopt.constraints",
    "ParamsConstraint": "netopt.constraints",
    "ReductionSchedule": "netopt.constraints",
    "Accuracy": "netopt.objectives",
    "FunctionObjective": "netopt.objectives",
    "Trainer": "netopt.objectives",
    "Problem": "netopt.strategies",
    "ProgressiveBarrier": "netopt.strategies",
    "NetAdaptV2": "netopt.strategies",
    "MnasNetReward": "netopt.strategies",
    "UniformWidth": "netopt.strategies",
    "RandomSearch": "netopt.strategies",
    "OptunaSearch": "netopt.strategies",
    "GeometricProgram": "netopt.strategies",
    "load": "netopt.runs",
    "DaskExecutor": "netopt.cluster",
}


SUBPACKAGES = frozenset({
    "ir", "bridge", "measure", "lut", "constraints", "objectives", "strategies", "runs", "report", "testing", "zoo",
    "data", "compare", "errors", "cluster",
})
"""Reachable as attributes after a bare `import netopt` (`netopt.measure.OnnxRuntimeCPU`), loaded on first use."""


def __getattr__(name: str) -> Any:
    if name in SUBPACKAGES:
        return import_module(f"netopt.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'netopt' has no attribute {name!r}")
    return getattr(import_module(module), name)
