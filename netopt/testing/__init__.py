"""Test helpers for users and for netopt itself, each loaded on first use.

- `netopt.testing.strategies`: Hypothesis strategies for random valid networks, widths, budgets
  and constraints (needs hypothesis; torch-free).
- `netopt.testing.contract`: the contract every Strategy keeps: `StrategyContract`, a test class
  to subclass, overriding one fixture (`make_strategy`).
- `netopt.testing.backends`: the same for measurement backends and estimators (`BackendContract`,
  `EstimatorContract`).
- `netopt.testing.problems`: small, cheap problems for such tests.
- `netopt.testing.torch_checks`: equivalence checks between a torch model and its IR.
- `netopt.testing.peers`: timm and torchvision, importable beside the CPU torch, and the
  coverage list of real architectures.
- `netopt.testing.imports`: netopt's own import graph and its cycles.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

MODULES = frozenset({"strategies", "contract", "problems", "torch_checks", "peers", "imports"})


def __getattr__(name: str) -> ModuleType:
    if name in MODULES:
        return import_module(f"netopt.testing.{name}")
    raise AttributeError(f"module 'netopt.testing' has no attribute {name!r}")
