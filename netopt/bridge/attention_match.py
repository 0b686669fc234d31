"""fx -> IR for attention itself: `F.scaled_dot_product_attention` and the explicit
softmax(q @ k^T * scale) @ v, each one ATTENTION node over tensors split into heads.

The stages that lead up to it (the qkv reshape, `k.transpose`, the scores, a relative position
bias, the softmax) are netopt.bridge.tokens' and netopt.bridge.stages'; this module reads them at
the op that ends the pattern, checks what netopt can model and refuses the rest in one line.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from netopt.bridge.convert import Converted
from netopt.bridge.stages import (
    BOUND_TO,
    HEADS,
    heads_on_map,
    is_heads,
    node_name,
    refuse,
    second_arg,
    shape_of,
    stage_of,
    to_heads,
    token_shape,
)
from netopt.bridge.windows import window_attrs
from netopt.ir import OpKind
from netopt.ir.ops import AttentionAttrs

__all__ = ["FUNCTIONS", "METHODS", "attention"]


def _sdpa(node: fx.Node) -> Converted:
    q, k, v = (node.args[i] if len(node.args) > i else node.kwargs[n] for i, n in enumerate("qkv"))
    extra: dict[str, Any] = {n: node.kwargs.get(n) for n in ("attn_mask", "dropout_p", "is_causal", "enable_gqa")}
    mask = stage_of(extra["attn_mask"])  # a relative position bias (and Swin's mask) added to the scores
    bias = extra["attn_mask"] if mask is not None and mask.kind == "bias" else None
    if len(node.args) > 3 or (extra["attn_mask"] is not None and bias is None) or extra["is_causal"] \
            or extra["dropout_p"] or extra["enable_gqa"] or not all(is_heads(t) for t in (q, k, v)):
        raise refuse(node, "scaled_dot_product_attention with a mask, causal, dropout, grouped queries or inputs "
                            "not split into heads from tokens")
    scale = node.kwargs.get("scale")
    masked = mask is not None and mask.masked
    return attention(node, q, k, v, 1 / math.sqrt(shape_of(q)[-1]) if scale is None else float(scale),  # type: ignore[arg-type]
                      bias, masked)


def _matmul(node: fx.Node) -> Converted:
    """`probs @ v` (tokens) or `v @ probs^T` (maps) ends the explicit attention; other matmuls are refused."""
    a: Any = node.args[0]
    b: Any = second_arg(node)
    sa, sb = stage_of(a), stage_of(b)
    st, v = (sa, b) if sa is not None and sa.kind == "probs" else (sb, a)
    flat = stage_of(v)
    if flat is not None and flat.kind == "flat" and flat.scale == 1.0:
        v = flat.src  # one head on a map: v.flatten(2) @ probs^T
    on_map = heads_on_map(v) or (not is_heads(v) and len(shape_of(v)) == 4)
    if st is None or st.k is None or st.kind != ("probs_t" if on_map else "probs") \
            or not (is_heads(v) or on_map) or heads_on_map(st.src) != heads_on_map(v):
        raise refuse(node, "a matmul that is not softmax(q @ k^T) @ v of tensors split into heads")
    return attention(node, st.src, st.k, v, st.scale, st.bias, st.masked)


def attention(node: fx.Node, q: fx.Node, k: fx.Node, v: fx.Node, scale: float,
               bias: fx.Node | None = None, masked: bool = False) -> Converted:
    if heads_on_map(q):  # (B, h, dim, N) of the map q's IR tensor is
        dq, dv, heads = shape_of(q)[2], shape_of(v)[2], shape_of(q)[1]
        b, _, *hw = q.meta[HEADS]
        to_heads(node, (b, heads * dv, *hw))
    elif not is_heads(q):  # one head on maps (B, C, H, W)
        dq, dv, heads = shape_of(q)[1], shape_of(v)[1], 1
        b, _, *hw = shape_of(q)
        to_heads(node, (b, dv, *hw))
    else:
        dq, dv, heads = shape_of(q)[-1], shape_of(v)[-1], shape_of(q)[1]
        b, n = token_shape(q)[:2]
        to_heads(node, (b, n, heads * dv))
    positions = _bias_positions(node, bias, heads) if bias is not None else 0
    row = max(stage_of(bias).row, 0) if stage_of(bias) is not None else 0  # type: ignore[union-attr]
    attrs = AttentionAttrs(qk_dim=dq, v_dim=dv, scale=scale, bias_positions=positions, bias_row=row)
    return OpKind.ATTENTION, window_attrs(node, q, attrs, masked), (q, k, v)


def _bias_positions(node: fx.Node, bias: fx.Node, heads: int) -> int:
    """The positions R of a (heads, R) relative position bias, bound to the module holding it."""
    row = stage_of(bias).row if stage_of(bias) is not None else -1  # type: ignore[union-attr]
    while node_name(bias) != "getitem" or isinstance(bias.args[1], int):  # back to its lookup (from a head's row)
        bias = bias.args[0]  # type: ignore[assignment]
    table: Any = bias.args[0]
    owner, _, name = str(table.target).rpartition(".")
    if name == "relative_position_bias_table" and shape_of(table)[1] == heads:
        node.meta[BOUND_TO] = owner  # Swin's (R, heads) table
        return shape_of(table)[0]
    idxs: Any = bias.args[1][1] if isinstance(bias.args[1], tuple) else bias.args[1]  # type: ignore[index]
    if name != "attention_biases" or str(idxs.target) != f"{owner}.attention_bias_idxs" \
            or (shape_of(table)[0] != heads if row < 0 else shape_of(table)[0] < row + heads):
        raise refuse(node, f"attention scores plus {table.target!r}[:, {idxs.target!r}]; a relative position bias "
                            "is modelled as attention_biases[:, attention_bias_idxs] of one module, a row per head")
    node.meta[BOUND_TO] = owner
    return shape_of(table)[1]


FUNCTIONS: dict[Any, Any] = {
    F.scaled_dot_product_attention: _sdpa,
    operator.matmul: _matmul,
    torch.matmul: _matmul,
    torch.bmm: _matmul,
}
"""Functions whose only meaning netopt models is attention's."""

METHODS: dict[str, Any] = {"matmul": _matmul, "bmm": _matmul}
