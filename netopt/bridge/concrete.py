"""What is concrete while netopt traces: Python values read off shapes, dtypes and devices.

netopt's tracer runs every op on the example input (trace.py). An op whose result is a plain
Python value computed from shapes and constants (`x.numel()`, `x.dtype == y.dtype`,
`x.device.type`) becomes that value rather than a node, so code may branch on it and tensors made
from it (`torch.arange(h)`) are constants. A value read off tensor *data* (`.item()`) and all
that follows from it stays a node, so branching on it is still refused.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import fx

from netopt.bridge.convert import SHAPES

__all__ = ["DATA", "DATA_READS", "one_input_and_defaults", "plain", "read_off_metadata", "reads_data", "value_kind"]

DATA = "netopt_data"
"""fx node meta key: a Python value that depends on tensor values (`.item()` and what follows)."""

DATA_READS = frozenset({"item", "tolist", "numpy", "equal", "allclose", "is_nonzero", "__bool__", "__int__",
                         "__float__", "__index__"})
"""Ops whose Python result depends on tensor values: they stay nodes (and fail as control flow)."""


def plain(v: Any) -> bool:
    """A Python value that shapes, dtypes and devices are made of (ints, flags, torch.Size, ...)."""
    if isinstance(v, tuple | list):
        return all(plain(x) for x in v)
    return isinstance(v, bool | int | float | str | torch.dtype | torch.device | torch.memory_format | None)


def reads_data(node: fx.Node, kind: str, target: Any) -> bool:
    """Whether a node's value depends on tensor values: a data read, or computed from one."""
    name = target if kind == "call_method" else getattr(target, "__name__", "")
    return name in DATA_READS or any(DATA in n.meta for n in node.all_input_nodes)


def read_off_metadata(kind: str, target: Any, value: Any) -> bool:
    """Whether an op's result is a Python value computed from shapes and constants (so concrete)."""
    if kind not in ("call_function", "call_method") or target is getattr:
        return False  # getattr: an fx Attribute (a method about to be called) needs its node
    name = target if kind == "call_method" else getattr(target, "__name__", "")
    return value is not None and name not in DATA_READS and plain(value)  # None: setitem, _assert stay nodes


def value_kind(node: fx.Node) -> str:
    """What a node returned, in words, for a refusal."""
    shapes = node.meta.get(SHAPES)
    return f"several values (tensors of shapes {list(shapes)})" if shapes else "a value that is no tensor"


def one_input_and_defaults(fn: Callable[..., Any]) -> bool:
    """`fn(self, x, ...)` whose parameters after x all have defaults or are *args/**kwargs."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    rest = [p for p in params[1:] if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return len(params) > 1 and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD) \
        and all(p.default is not p.empty for p in rest)
