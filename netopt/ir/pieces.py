"""Projections whose output separable attention cuts into pieces that shrink apart.

MobileViT v2's qkv is one 1x1 conv of 1 + 2d channels split [1, d, d] into q, k and v. A slice
that cuts a producer's group fixes it, so the channel-group walker gives such a projection one
group per piece instead: q's piece is fixed (one channel of scores), k's and v's are free (the
SEPARABLE_ATTENTION reading them couples them). Read off the structure, like attention heads
(`netopt.ir.heads`), so nothing enters the projection's attributes or the network's JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise

from netopt.ir.node import Node
from netopt.ir.ops import RULES, Conv2dAttrs, LinearAttrs, OpKind, Role, SliceAttrs

__all__ = ["Piece", "split_projections", "out_channels"]

Piece = tuple[int, bool]
"""(channels, fixed) of one piece of a projection's output, in channel order."""


def split_projections(nodes: Sequence[Node]) -> dict[str, tuple[Piece, ...]]:
    """The pieces of every dense projection whose output a separable attention reads as q, k, v.

    >>> from netopt.ir import Builder, OpKind
    >>> from netopt.ir.ops import NoAttrs
    >>> b = Builder((4, 2, 8))
    >>> qkv = b.conv(b.input, 1 + 2 * 6, 1)
    >>> q, k, v = b.slice(qkv, 0, 1), b.slice(qkv, 1, 7), b.slice(qkv, 7, 13)
    >>> out = b.add(OpKind.SEPARABLE_ATTENTION, [q, k, v], NoAttrs())
    >>> split_projections(b.nodes)
    {'conv2d0': ((1, True), (6, False), (6, False))}
    """
    index = {n.name: n for n in nodes}
    found: dict[str, tuple[Piece, ...]] = {}
    for node in nodes:
        if node.op is OpKind.SEPARABLE_ATTENTION:
            cut = _cut(index, node.inputs)
            if cut is not None:
                found.setdefault(*cut)
    return found


def _cut(index: Mapping[str, Node], inputs: Sequence[str]) -> tuple[str, tuple[Piece, ...]] | None:
    """The projection q, k and v are slices of, and its pieces, when the slices tile its output."""
    slices = [_slice(index, name) for name in inputs]
    if any(s is None for s in slices) or len({s[0] for s in slices if s is not None}) != 1:
        return None
    source = index[slices[0][0]]  # type: ignore[index]
    out = out_channels(source)
    (_, q), (_, k), (_, v) = slices  # type: ignore[misc]
    ranges = sorted((q, k, v))
    tiled = ranges[0][0] == 0 and ranges[-1][1] == out and all(a[1] == b[0] for a, b in pairwise(ranges))
    if not tiled or k[1] - k[0] != v[1] - v[0]:
        return None
    return source.name, tuple((stop - start, (start, stop) == q) for start, stop in ranges)


def _slice(index: Mapping[str, Node], name: str) -> tuple[str, tuple[int, int]] | None:
    """(projection, channel range) of a SLICE of a dense projection, through channel-wise ops."""
    node = index.get(name)
    while node is not None and node.op is not OpKind.SLICE and RULES[node.op].role is Role.FOLLOW \
            and len(node.inputs) == 1:
        node = index.get(node.inputs[0])
    if node is None or not isinstance(node.attrs, SliceAttrs):
        return None
    source = index.get(node.inputs[0])
    if source is None or out_channels(source) is None:
        return None
    return source.name, (node.attrs.start, node.attrs.stop)


def out_channels(node: Node) -> int | None:
    """Output channels of a linear layer or a dense (groups 1) convolution, else None."""
    if isinstance(node.attrs, LinearAttrs):
        return node.attrs.out_features
    if isinstance(node.attrs, Conv2dAttrs) and node.attrs.groups == 1 and node.op is OpKind.CONV2D:
        return node.attrs.out_channels
    return None
