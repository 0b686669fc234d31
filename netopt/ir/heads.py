"""Which projections attention splits into heads, read off the network's structure.

A projection (a linear layer, or a dense 1x1 convolution on maps) feeds an ATTENTION node's q, k
or v directly, or through identities, a map made tokens, a BatchNorm, a ReLU (linear attention's
kernel), a scalar factor and one slice: an aligned range (q, k, v of a fused qkv: `parts` pieces
of heads x `unit` channels) or the same range of every head (a HEAD_SLICE: heads of `unit`
channels each holding q, k and v). Its channel group counts heads.
The structure says it, so nothing is stored in the projection's attributes (and a network's JSON,
and the identity hashes taken over it, stay those of a network without heads).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from netopt.ir.node import Node
from netopt.ir.ops import AttentionAttrs, Conv2dAttrs, HeadSliceAttrs, LinearAttrs, OpKind, SliceAttrs

__all__ = ["head_projections"]

_PASS = frozenset({OpKind.IDENTITY, OpKind.DROPOUT, OpKind.MUL, OpKind.BATCHNORM, OpKind.TOKENS, OpKind.RELU})


def head_projections(nodes: Sequence[Node]) -> dict[str, tuple[int, int]]:
    """(unit, parts) of every linear projection whose output attention splits into heads.

    >>> from netopt.ir import Builder, OpKind
    >>> from netopt.ir.ops import AttentionAttrs
    >>> b = Builder((8, 4, 4))
    >>> qkv = b.linear(b.add(OpKind.TOKENS, [b.input]), 3 * 2 * 4)
    >>> q, k, v = (b.slice(qkv, 8 * i, 8 * (i + 1)) for i in range(3))
    >>> out = b.add(OpKind.ATTENTION, [q, k, v], AttentionAttrs(qk_dim=4, v_dim=4, scale=0.5))
    >>> head_projections(b.nodes)
    {'linear0': (4, 3)}
    """
    index = {n.name: n for n in nodes}
    marks: dict[str, tuple[int, int]] = {}
    for node in nodes:
        if isinstance(node.attrs, AttentionAttrs):
            dims = (node.attrs.qk_dim, node.attrs.qk_dim, node.attrs.v_dim)
            for name, dim in zip(node.inputs, dims, strict=True):
                found = _projection(index, name)
                if found is not None:
                    marks.setdefault(found[0], (found[2] or dim, found[1]))
    return marks


_SLICES = frozenset({OpKind.SLICE, OpKind.HEAD_SLICE})


def _projection(index: Mapping[str, Node], name: str) -> tuple[str, int, int] | None:
    """The projection a head input comes from, how many equal parts its output holds and the
    channels of each of its heads (0: the attention's head dim), or None."""
    width, unit, sliced = None, 0, False
    node = index.get(name)
    while node is not None and ((node.op in _PASS and len(node.inputs) == 1) or node.op in _SLICES):
        if isinstance(node.attrs, SliceAttrs | HeadSliceAttrs):
            if sliced:
                return None
            sliced = True
            if isinstance(node.attrs, HeadSliceAttrs):
                unit = node.attrs.unit
            else:
                width = node.attrs.stop - node.attrs.start
                if node.attrs.start % width:
                    return None
        node = index.get(node.inputs[0])
    out = _out_channels(node)
    if node is None or out is None:
        return None
    if width is None:
        return node.name, 1, unit
    return (node.name, out // width, unit) if out % width == 0 else None


def _out_channels(node: Node | None) -> int | None:
    """Output channels of a linear layer or a dense 1x1 convolution, else None."""
    if node is not None and isinstance(node.attrs, LinearAttrs):
        return node.attrs.out_features
    if node is not None and isinstance(node.attrs, Conv2dAttrs) and node.attrs.groups == 1 \
            and node.attrs.kernel_size == (1, 1) and node.attrs.stride == (1, 1):
        return node.attrs.out_channels
    return None
