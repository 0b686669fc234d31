"""Single-head softmax attention whose q, k and v channels shrink inside the head.

Attention of several heads shrinks by whole heads (`netopt.ir.heads`). An attention of one head
(EfficientViT-M's cascade: an ATTENTION node a head, each with its own qkv conv) has no head to
lose, but its channels can go: q and k pair channel by channel in q k^T, and v's channels are
the output's. So the projection q, k and v are slices of is cut into three pieces, one group each
(`netopt.ir.pieces`' walker), the attention couples q's with k's, and at the current widths the
one head has the channels that are left (`head_dims`). Read off the structure, so nothing enters
the projection's attributes or the network's JSON.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise

from netopt.ir.node import Node
from netopt.ir.ops import RULES, AttentionAttrs, Conv2dAttrs, Role, SliceAttrs
from netopt.ir.pieces import Piece, out_channels

__all__ = ["single_head_pieces", "head_dims"]


def head_dims(attrs: AttentionAttrs, q_channels: int, v_channels: int) -> tuple[int, int, int]:
    """(heads, qk_dim, v_dim) of an attention at the current widths: whole heads of the attributes'
    dims, or one head that lost channels.

    >>> attrs = AttentionAttrs(qk_dim=16, v_dim=16, scale=0.25)
    >>> head_dims(attrs, 32, 32), head_dims(attrs, 8, 16)
    ((2, 16, 16), (1, 8, 16))
    """
    heads = q_channels // attrs.qk_dim
    return (heads, attrs.qk_dim, attrs.v_dim) if heads else (1, q_channels, v_channels)


def single_head_pieces(nodes: Sequence[Node]) -> dict[str, tuple[Piece, ...]]:
    """The pieces (q, k, v; all free) of every dense projection a single-head attention reads.

    >>> from netopt.ir import Builder, OpKind
    >>> b = Builder((4, 2, 8))
    >>> qkv = b.conv(b.input, 4 + 4 + 8, 1)
    >>> q, k, v = b.slice(qkv, 0, 4), b.slice(qkv, 4, 8), b.slice(qkv, 8, 16)
    >>> out = b.add(OpKind.ATTENTION, [q, k, v], AttentionAttrs(qk_dim=4, v_dim=8, scale=0.5))
    >>> single_head_pieces(b.nodes)
    {'conv2d0': ((4, False), (4, False), (8, False))}
    """
    index = {n.name: n for n in nodes}
    found: dict[str, tuple[Piece, ...]] = {}
    for node in nodes:
        attrs = node.attrs
        if isinstance(attrs, AttentionAttrs) and not (attrs.linear or attrs.talking or attrs.channels):
            cut = _cut(index, node.inputs, (attrs.qk_dim, attrs.qk_dim, attrs.v_dim))
            if cut is not None:
                found.setdefault(*cut)
    return found


def _cut(index: Mapping[str, Node], inputs: Sequence[str], dims: tuple[int, ...]
         ) -> tuple[str, tuple[Piece, ...]] | None:
    """The projection q, k and v are one head's slices of, when they tile its output."""
    slices = [_slice(index, name) for name in inputs]
    if any(s is None for s in slices) or len({s[0] for s in slices if s is not None}) != 1:
        return None
    ranges = [s[1] for s in slices if s is not None]
    if [stop - start for start, stop in ranges] != list(dims):
        return None
    ordered = sorted(ranges)
    out = out_channels(index[slices[0][0]])  # type: ignore[index]
    if ordered[0][0] != 0 or ordered[-1][1] != out or any(a[1] != b[0] for a, b in pairwise(ordered)):
        return None
    return slices[0][0], tuple((stop - start, False) for start, stop in ordered)  # type: ignore[index]


def _slice(index: Mapping[str, Node], name: str) -> tuple[str, tuple[int, int]] | None:
    """(projection, channel range) of a SLICE of a dense projection (and the channel-wise ops after
    it), through channel-wise ops and depthwise convs of one filter a channel (EfficientViT-M's q)."""
    node, depthwise = index.get(name), []
    while node is not None and len(node.inputs) == 1 and (RULES[node.op].role is Role.FOLLOW or (
            isinstance(node.attrs, Conv2dAttrs) and node.attrs.groups == node.attrs.out_channels)):
        if isinstance(node.attrs, Conv2dAttrs):
            depthwise.append(node.attrs.out_channels)
        node = index.get(node.inputs[0])
    if node is None or not isinstance(node.attrs, SliceAttrs):
        return None
    source = index.get(node.inputs[0])
    while source is not None and RULES[source.op].role is Role.FOLLOW and len(source.inputs) == 1:
        source = index.get(source.inputs[0])  # the projection's BatchNorm, a view of it
    width = node.attrs.stop - node.attrs.start
    if source is None or out_channels(source) is None or any(c != width for c in depthwise):
        return None
    return source.name, (node.attrs.start, node.attrs.stop)
