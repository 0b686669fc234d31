"""Channel-level bypass (NetAdaptV2): a residual branch whose width reaches 0 disappears.

A *branch* of a residual add `A = add(b, s)` is every node that `b` depends on and `s` does
not: the layers of the block's non-skip path. It is *closed* when nothing outside it reads
it (except `A`, through `b`) and no output is in it; removing a closed branch leaves a valid
network in which `A` passes `s` through: the block becomes its shortcut (the identity, or a
downsampling conv). An add of two closed branches has no shortcut to fall back on: neither is
removed. A channel group is *bypassable* when every node that makes, carries or
reads its channels lies in one closed branch (the smallest, where branches nest); at width 0
that branch is removed. Structural facts, computed once per structure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from netopt.ir.groups import INPUT, Analysis
from netopt.ir.node import Node
from netopt.ir.ops import NoAttrs, OpKind, ScalarAttrs

__all__ = ["Branch", "branches", "reduce"]


@dataclass(frozen=True)
class Branch:
    """The layers of one residual add's non-skip path: `nodes`, whose last is `operand`.
    Without them, the add `add` passes its other input `skip` through."""

    add: str
    operand: str
    skip: str
    nodes: frozenset[str]


def _residual(node: Node) -> bool:
    return node.op is OpKind.ADD and len(node.inputs) == 2 and not (
        isinstance(node.attrs, ScalarAttrs) and node.attrs.scalar is not None)


def branches(nodes: Sequence[Node], outputs: Sequence[str], analysis: Analysis) -> dict[str, Branch]:
    """The closed branch each bypassable prunable group lies in, by group id."""
    names = [INPUT, *(n.name for n in nodes)]
    bit = {name: 1 << k for k, name in enumerate(names)}
    ancestors: dict[str, int] = {INPUT: 0}
    readers: dict[str, list[str]] = {name: [] for name in names}
    for node in nodes:
        ancestors[node.name] = 0
        for i in node.inputs:
            ancestors[node.name] |= ancestors[i] | bit[i]
            readers[i].append(node.name)
    outs = set(outputs)
    closed: list[tuple[int, Branch]] = []
    for node in nodes:
        if not _residual(node) or node.inputs[0] == node.inputs[1]:
            continue
        sides = []
        for b, s in (node.inputs, node.inputs[::-1]):
            inside = (ancestors[b] | bit[b]) & ~(ancestors[s] | bit[s]) & ~bit[INPUT]
            members = frozenset(n for n in names if inside & bit[n])
            if b == INPUT or not members or _channels(analysis, s) != _channels(analysis, node.name):
                continue
            if any(m in outs for m in members) or any(
                    r not in members and (r != node.name or m != b) for m in members for r in readers[m]):
                continue
            sides.append((len(members), Branch(node.name, b, s, members)))
        if len(sides) == 1:  # two closed branches and no shortcut: not a residual block, nothing to pass through
            closed += sides
    closed.sort(key=lambda c: c[0])
    carriers: dict[str, set[str]] = {}
    for name, layout in analysis.layouts.items():
        for seg in layout:
            carriers.setdefault(seg.group, set()).add(name)
    found: dict[str, Branch] = {}
    for gid in analysis.prunable:
        info = analysis.info[gid]
        touched = carriers.get(gid, set()) | set(info.producers) | set(info.consumers)
        for _, branch in closed:
            if touched <= branch.nodes:
                found[gid] = branch
                break
    return found


def _channels(analysis: Analysis, name: str) -> tuple[int, ...]:
    """Full-width channels and spatial size of a node's output."""
    return (analysis.channels(analysis.layouts[name], {}), *analysis.spatial[name])


def reduce(nodes: Sequence[Node], gone: Sequence[Branch]) -> tuple[Node, ...]:
    """The nodes without the removed branches; each of their adds passes its skip input through."""
    dropped = frozenset().union(*(b.nodes for b in gone))
    passes = {b.add: b.skip for b in gone if b.add not in dropped}
    out = []
    for node in nodes:
        if node.name in dropped:
            continue
        out.append(Node(node.name, OpKind.IDENTITY, (passes[node.name],), NoAttrs())
                   if node.name in passes else node)
    return tuple(out)
