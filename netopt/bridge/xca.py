"""fx -> IR for cross-covariance attention (XCA: timm's XCiT and EdgeNeXt `CrossCovarianceAttn`).

The form: `qkv(x).reshape(B, N, 3, heads, d).permute(2, 0, 3, 4, 1).unbind(0)` gives q, k and v as
(B, heads, d, N), channel-major; `F.normalize(q or k, dim=-1)` over the tokens; `(q^ @ k^^T) *
temperature` (a (heads, 1, 1) parameter), softmax, dropout, `@ v`; `permute(0, 3, 1, 2)` and a
reshape back to (B, N, C) tokens. The rearranging steps are stages (netopt.bridge.stages), q, k
and v are SLICEs of the qkv projection marked as heads (meta `XCA`: laid out (B, heads, d, N)),
and `@ v` is one ATTENTION node with `channels`, bound to the module holding the temperature.
Heads are independent, so they shrink whole through qkv, the temperature and the output
projection, exactly; a channel inside a head would change its (d x d) softmax, so heads keep d.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import fx, nn

from netopt.bridge.convert import Converted
from netopt.bridge.stages import (
    BOUND_TO,
    Stage,
    dim_arg,
    dims_of,
    is_heads,
    node_name,
    on_dim0,
    refuse,
    shape_of,
    stage_of,
    to_heads,
    token_shape,
)
from netopt.ir import OpKind
from netopt.ir.ops import AttentionAttrs, SliceAttrs

__all__ = ["XCA", "stage", "convert"]

XCA = "netopt_xca"
"""fx node meta key: a tensor split into heads laid out (B, heads, d, N), the channels of a head before its tokens."""


def stage(node: fx.Node, name: str | None, x: Any) -> Stage | None:
    """The XCA stage `node` is at, or None."""
    st = stage_of(x)
    if node.op == "call_module" and st is not None and st.kind == "x_probs" and _dropout(node):
        return st
    if name is None or not isinstance(x, fx.Node):
        return None
    if name == "permute" and st is not None and st.kind == "split" and st.parts > 1 \
            and dims_of(node, 5) == (2, 0, 3, 4, 1):
        return replace(st, kind="x_parts")
    if name == "unbind" and st is not None and st.kind == "x_parts" and on_dim0(node):
        return replace(st, kind="x_unbound")
    if name == "normalize" and x.meta.get(XCA) and _over_tokens(node):
        return Stage("x_norm", x)
    if name == "transpose" and st is not None and st.kind == "x_norm" and sorted(dims_of(node, 4)) == [2, 3]:
        return replace(st, kind="x_norm_t")
    if name == "permute" and x.meta.get(XCA) and is_heads(x) and dims_of(node, 4) == (0, 3, 1, 2):
        return Stage("merged", x)  # (B, N, heads, d): reshaped to tokens by netopt.bridge.tokens
    return _scores(node, name)


def _scores(node: fx.Node, name: str) -> Stage | None:
    """q^ @ k^^T, times the temperature, its softmax and dropout."""
    a, b = (*node.args, None, None)[:2]
    sa, sb = stage_of(a), stage_of(b)
    if name == "matmul" and sa is not None and sb is not None and (sa.kind, sb.kind) == ("x_norm", "x_norm_t"):
        return Stage("x_scores", sa.src, k=sb.src)
    if name == "mul" and (sa is None or sa.kind != "x_scores"):
        sa, b = sb, a  # temperature * scores
    if name == "mul" and sa is not None and sa.kind == "x_scores" and sa.temperature is None \
            and isinstance(b, fx.Node) and b.op == "get_attr" and shape_of(b) == (shape_of(sa.src)[1], 1, 1):
        return replace(sa, temperature=b)
    if name == "softmax" and sa is not None and sa.kind == "x_scores" and sa.temperature is not None \
            and dim_arg(node, -1) % 4 == 3:
        return replace(sa, kind="x_probs")
    if name == "dropout" and sa is not None and sa.kind == "x_probs":
        return sa
    return None


def _dropout(node: fx.Node) -> bool:
    module = node.graph.owning_module.get_submodule(str(node.target))  # type: ignore[union-attr]
    return isinstance(module, nn.Dropout)


def _over_tokens(node: fx.Node) -> bool:
    """`F.normalize(x, dim=-1)` (L2, default eps) of (B, heads, d, N): each channel over the tokens."""
    args: dict[str, Any] = dict(zip(("input", "p", "dim", "eps"), node.args, strict=False)) | dict(node.kwargs)
    return float(args.get("p", 2.0)) == 2.0 and int(args.get("dim", 1)) % 4 == 3 \
        and float(args.get("eps", 1e-12)) == 1e-12


def convert(node: fx.Node) -> Converted | None:
    """q, k or v cut from the qkv projection (a SLICE), or `probs @ v`: the ATTENTION node."""
    name = node_name(node)
    a, b = (*node.args, None, None)[:2]
    st = stage_of(a)
    if name == "getitem" and st is not None and st.kind == "x_unbound" and isinstance(b, int):
        width = st.heads * st.dim
        to_heads(node, (*token_shape(st.src)[:2], width))
        node.meta[XCA] = True
        return OpKind.SLICE, SliceAttrs(start=b * width, stop=(b + 1) * width), (st.src,)
    if name in ("matmul", "bmm") and st is not None and st.kind == "x_probs":
        return _attention(node, st, b)
    return None


def _attention(node: fx.Node, st: Stage, v: Any) -> Converted:
    q, k, temperature = st.src, st.k, st.temperature
    owner, _, attr = str(temperature.target).rpartition(".")  # type: ignore[union-attr]
    if not is_heads(v) or not v.meta.get(XCA) or k is None or attr != "temperature" \
            or shape_of(v) != shape_of(q) or shape_of(k) != shape_of(q):
        raise refuse(node, "cross-covariance scores times a tensor that is not v of the same qkv, or a temperature "
                            "that is no module's `temperature`; netopt models XCA as timm's CrossCovarianceAttn")
    heads, d = shape_of(q)[1:3]
    b, n = token_shape(q)[:2]
    to_heads(node, (b, n, heads * d))
    node.meta[XCA] = True
    node.meta[BOUND_TO] = owner
    return OpKind.ATTENTION, AttentionAttrs(qk_dim=d, v_dim=d, scale=1.0, channels=True), (q, k, v)
