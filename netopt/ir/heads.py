"""Which linear projections attention splits into heads, read off the network's structure.

A projection feeds an ATTENTION node's q, k or v directly, or through identities, a scalar factor
and one aligned slice (q, k, v of a fused qkv). Its output then holds `parts` equal pieces of
heads x `unit` channels, and its channel group counts heads. The structure says it, so nothing
is stored in the linear layer's attributes (and a network's JSON, and the identity hashes taken
over it, stay those of a network without heads).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from netopt.ir.node import Node
from netopt.ir.ops import AttentionAttrs, LinearAttrs, OpKind, SliceAttrs

__all__ = ["head_projections"]

_PASS = frozenset({OpKind.IDENTITY, OpKind.DROPOUT, OpKind.MUL})


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
                    marks.setdefault(found[0], (dim, found[1]))
    return marks


def _projection(index: Mapping[str, Node], name: str) -> tuple[str, int] | None:
    """The linear layer a head input comes from and how many equal parts its output holds, or None."""
    width = None
    node = index.get(name)
    while node is not None and ((node.op in _PASS and len(node.inputs) == 1) or node.op is OpKind.SLICE):
        if isinstance(node.attrs, SliceAttrs):
            if width is not None:
                return None
            width = node.attrs.stop - node.attrs.start
            if node.attrs.start % width:
                return None
        node = index.get(node.inputs[0])
    if node is None or not isinstance(node.attrs, LinearAttrs):
        return None
    out = node.attrs.out_features
    if width is None:
        return node.name, 1
    return (node.name, out // width) if out % width == 0 else None
