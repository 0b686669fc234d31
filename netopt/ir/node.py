"""`Node`: one operation of the IR, the unit both the channel analysis and `Network` are made of."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from netopt.ir.ops import RULES, OpKind

__all__ = ["Node"]


@dataclass(frozen=True)
class Node:
    """One operation: its unique name, kind, the names of its tensor inputs, its attributes."""

    name: str
    op: OpKind
    inputs: tuple[str, ...]
    attrs: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "op", OpKind(self.op))
        object.__setattr__(self, "inputs", tuple(self.inputs))
        if self.attrs is None:
            object.__setattr__(self, "attrs", RULES[self.op].attrs())
