"""Cut a network into the units a runtime executes as one kernel, and name each by a signature.

A unit is a head op (conv, linear, pooling, add, mul, concat, ...) and the channel-wise ops
that follow it alone (BatchNorm, activation, dropout), which ONNX Runtime fuses into the
head's kernel (Conv+BN folding, Conv+ReLU/Clip/HardSigmoid fusion). Measuring units, not
single ops, is the first half of the calibration: the layer sum sees the fusions the
runtime does. Views (flatten, identity, dropout alone) cost nothing and form no unit.

An opaque block's IR node says only its class name, shapes and counts: the signature of a unit
it heads also holds what the block's module computes (`netopt.lut.probe.describe_block`), so
that two models sharing one table share an entry only for the same computation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from netopt.ir import INPUT, Network, Node, OpKind
from netopt.ir.ops import CONVOLUTIONS, RULES, Fusion, attrs_to_dict

__all__ = ["Unit", "units", "sign", "FUSABLE"]

FUSABLE = frozenset(k for k, rule in RULES.items() if rule.fusion in (Fusion.FUSED, Fusion.VIEW))
"""Ops absorbed into the unit of the op before them when that op is their only producer and
they its only reader."""

FREE = frozenset(k for k, rule in RULES.items() if rule.fusion in (Fusion.VIEW, Fusion.FREE))
"""Views at inference: no kernel runs."""


@dataclass(frozen=True)
class Unit:
    """A head node, the nodes fused after it, and the shapes it runs at (current widths)."""

    nodes: tuple[Node, ...]
    input_shapes: tuple[tuple[int, ...], ...]
    output_shape: tuple[int, ...]
    conv_groups: int

    @property
    def head(self) -> Node:
        return self.nodes[0]

    @property
    def opaque(self) -> bool:
        """Headed by a block kept whole: its cost depends on a module the IR does not hold."""
        return self.head.op is OpKind.OPAQUE

    def describe(self, block: Mapping[str, object] | None = None) -> dict[str, object]:
        """Everything that decides the unit's cost, and nothing else: no names, no full widths;
        for an opaque unit, `block`: what its module computes (`probe.describe_block`)."""
        described: dict[str, object] = {
            "ops": [[n.op.value, _cost_attrs(n)] for n in self.nodes],
            "inputs": [list(s) for s in self.input_shapes],
            "output": list(self.output_shape),
            "groups": self.conv_groups,
            "dtype": "float32",
        }
        if block is not None:  # only here: the entries of other units keep their signatures
            described["block"] = dict(block)
        return described

    @property
    def signature(self) -> str:
        """A stable hash of `describe()`: units with equal signatures cost the same (an opaque
        unit's needs its block: `UnitCosts.signature`)."""
        return sign(self.describe())


def sign(description: Mapping[str, object]) -> str:
    """The stable hash a unit's description is kept under in a table."""
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:24]


_WIDTH_ATTRS = frozenset({"out_channels", "out_features", "groups"})


def _cost_attrs(node: Node) -> dict[str, object]:
    """The node's attributes less those that describe full width (the shapes say the current)."""
    return {k: v for k, v in attrs_to_dict(node.attrs).items() if k not in _WIDTH_ATTRS}  # as stored: keys stay


def _readers(net: Network) -> dict[str, list[str]]:
    readers: dict[str, list[str]] = {INPUT: []}
    for node in net.nodes:
        readers[node.name] = []
        for i in node.inputs:
            readers[i].append(node.name)
    return readers


def units(net: Network) -> list[Unit]:
    """The network's units in execution order, at its current widths (removed branches have none)."""
    net = net.reduced()
    readers = _readers(net)
    absorbed: set[str] = set()
    out: list[Unit] = []
    for node in net.nodes:
        if node.name in absorbed or node.op in FREE:
            continue
        chain = [node]
        while len(readers[chain[-1].name]) == 1 and chain[-1].name not in net.outputs:
            nxt = net.node(readers[chain[-1].name][0])
            if nxt.op not in FUSABLE:
                break
            chain.append(nxt)
            absorbed.add(nxt.name)
        groups = net.conv_groups(node.name) if node.op in CONVOLUTIONS else 1
        shapes = tuple(net.shape(i) for i in node.inputs)
        out.append(Unit(tuple(chain), shapes, net.shape(chain[-1].name), groups))
    return out

