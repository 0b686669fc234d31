"""fx -> IR for vision transformers: tokens, class tokens, position embeddings and attention heads.

A token tensor (B, N, C) is marked like a channels-last map (`CHANNELS_LAST`): its channels are its
last dim, and the IR sees it as (C, N). The steps of an attention block that only rearrange are
*stages* (meta `STAGE`), not IR nodes: `flatten(2)` before the transpose that makes tokens, the
reshape of a qkv projection to (B, N, parts, heads, dim) and its permute and unbind, `k.transpose`,
`q @ k^T`, a relative position bias added to it, its softmax and dropout. Tensors split into heads
(B, heads, N, dim) are IR token tensors with meta `HEADS` (the shape the IR sees); so are the heads
of a map that 1x1 convs made (B, heads, dim, H*W: Ultralytics' PSA), whose IR tensor is the map.
The pattern ends in one ATTENTION node, at `F.scaled_dot_product_attention` or at the `@ v` of the
explicit form; the IR reads which projections it splits into heads off that structure
(`netopt.ir.heads`). What does not fit is refused in one line naming the node and the opaque=[...] fix.
Windows, patches and flattened tokens are netopt.bridge.windows'; the shared stage machinery is
netopt.bridge.stages'; the op that ends the pattern is read by netopt.bridge.attention_match.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from torch import fx

from netopt.bridge import xca
from netopt.bridge.attention_match import FUNCTIONS, METHODS, attention
from netopt.bridge.convert import CHANNELS_LAST, SHAPE, Converted, param_path
from netopt.bridge.stages import (
    BOUND_TO,
    HEADS,
    HEADS_LAST,
    STAGE,
    WINDOWED,
    Stage,
    dim_arg,
    dims_of,
    enclosing,
    first_input,
    heads_on_map,
    is_heads,
    is_tokens,
    mark_tokens,
    node_name,
    on_dim0,
    piece_bounds,
    refuse,
    second_arg,
    shape_of,
    split_dim,
    stage_of,
    to_heads,
    token_shape,
)
from netopt.bridge.window_maps import convert as window_map_convert
from netopt.bridge.window_maps import window_map_stage
from netopt.bridge.windows import (
    flatten_tokens,
    follow_windows,
    patch_layout,
    patch_stage,
    roll_back,
    subsample,
    unflatten_tokens,
    window_layout,
    window_mask,
    window_stage,
)
from netopt.ir import OpKind
from netopt.ir.ops import (
    ClassTokenAttrs,
    HeadSliceAttrs,
    MapAttrs,
    MeanAttrs,
    NoAttrs,
    SliceAttrs,
    TokenSelectAttrs,
)

__all__ = ["STAGE", "HEADS", "BOUND_TO", "Stage", "stage", "matmul_stage", "convert", "FUNCTIONS", "METHODS",
           "token_shape", "bound_parameter", "check_heads", "is_tokens", "HEAD_OPS"]


HEAD_OPS = frozenset({OpKind.IDENTITY, OpKind.DROPOUT, OpKind.MUL, OpKind.ATTENTION, OpKind.HEAD_SLICE,
                      OpKind.TO_MAP, OpKind.RELU})
"""Ops that may read a tensor split into heads (q/k norms that are identities, a scalar factor)."""


# --- stages ---------------------------------------------------------------------------------


def stage(node: fx.Node) -> Stage | None:
    """The stage `node` is at, or None when it is an IR op (or nothing of this module's)."""
    name, x = node_name(node), first_input(node)
    if (found := xca.stage(node, name, x)) is not None:
        return found  # cross-covariance attention (xca.py)
    if node.op == "call_module" and stage_of(x) is not None and stage_of(x).kind == "probs":  # type: ignore[union-attr]
        return stage_of(x)  # attention dropout
    scores = stage_of(x)
    if node.op == "call_module" and scores is not None and scores.kind == "scores" and _softmax_last(node):
        return replace(scores, kind="probs")
    if name is None or not isinstance(x, fx.Node):
        return None
    before, after, st = shape_of(x), shape_of(node), stage_of(x)
    if name in ("matmul", "bmm"):
        return matmul_stage(node)
    if name == "permute" and is_heads(x) and x.meta.get(HEADS_LAST) and dims_of(node, 4) == (0, 2, 3, 1):
        return Stage("t", x)  # LeViT's k cut from (B, N, heads, dim) and transposed at once
    if (found := window_stage(node, name, x, st)) is not None:
        return found
    if (found := window_map_stage(node, name, x, st)) is not None:
        return found
    if (found := linear_stage(node, name, x, st)) is not None:
        return found
    if (found := patch_stage(node, name, x, st)) is not None:
        return found
    if name == "getitem" and x.op == "get_attr" and _bias_lookup(node):
        return Stage("bias", x)
    if name == "add" and st is not None and st.kind == "bias" and window_mask(second_arg(node), after):
        return replace(st, masked=True)  # Swin: the bias plus the mask of shifted windows (a buffer)
    if name in ("view", "reshape", "permute", "contiguous", "unsqueeze") and st is not None and st.kind == "bias":
        return st  # Swin's table lookup laid out as (1, heads, N, N)
    if name == "getitem" and st is not None and st.kind == "bias" and st.row < 0 and isinstance(node.args[1], int):
        return replace(st, row=node.args[1])  # one head's row (EfficientViT-M: an attention a head)
    if name == "add" and st is not None and st.kind == "bias":
        other = stage_of(second_arg(node))
        return replace(other, bias=x) if other is not None and other.kind == "scores" else None
    plain_map = st is None and len(before) == 4 and not x.meta.get(CHANNELS_LAST) and not is_heads(x)
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
    if name == "flatten" and plain_map and start == 2 and end in (-1, 3):
        return Stage("flat", x)
    if name in ("reshape", "view") and plain_map and after == (*before[:2], before[2] * before[3]):
        return Stage("flat", x)  # x.reshape(B, C, -1): as flatten(2)
    if name in ("reshape", "view") and plain_map and len(after) == 4 and after[1] * after[2] == before[1] \
            and after[3] == before[2] * before[3]:
        return Stage("cf_split", x, heads=after[1], dim=after[2])  # a 1x1 conv's map to heads (B, h, unit, N)
    if name in ("reshape", "view") and is_tokens(x) and len(after) in (4, 5) and after[:2] == before[:2]:
        parts = after[2] if len(after) == 5 else 1
        return Stage("split", x, parts, after[-2], after[-1])
    if st is not None:
        return _next_stage(node, name, st, after)
    if name in ("split", "chunk") and is_heads(x) and not heads_on_map(x) and split_dim(node) == 3:
        return Stage("t_parts", x, dim=before[3], bounds=piece_bounds(node, 3))  # q, k, v side by side in each head
    if name == "transpose" and is_heads(x) and sorted(dims_of(node, 4)) == [2, 3]:
        return Stage("t", x)
    if name == "transpose" and is_heads(x) and sorted(dims_of(node, 4)) == [1, 2]:
        return Stage("merged", x)
    if (name == "transpose" and is_tokens(x) and sorted(dims_of(node, 3)) == [1, 2]) \
            or (name == "permute" and is_tokens(x) and dims_of(node, 3) == (0, 2, 1)):
        return Stage("chw", x)
    return None


def _next_stage(node: fx.Node, name: str, st: Stage, after: tuple[int, ...]) -> Stage | None:
    if name == "permute" and st.kind == "split" and st.parts > 1 and dims_of(node, 5) == (2, 0, 3, 1, 4):
        return replace(st, kind="parts")
    if name == "unbind" and st.kind == "parts" and on_dim0(node):
        return replace(st, kind="unbound")
    if name == "add" and st.kind == "scores" and window_mask(second_arg(node), after):
        return replace(st, masked=True)  # Swin's mask of shifted windows, added per window
    if name in ("view", "reshape") and st.kind == "scores":
        return st  # the scores viewed per window to add the mask, and back
    if name == "add" and st.kind == "scores" and st.bias is None:
        bias = stage_of(second_arg(node))
        return replace(st, bias=second_arg(node)) if bias is not None and bias.kind == "bias" else None
    if name == "softmax" and st.kind == "scores" and dim_arg(node) % len(after) == len(after) - 1:
        return replace(st, kind="probs")
    if name == "transpose" and st.kind == "probs" and sorted(dims_of(node, len(after)))[-2:] == [len(after) - 2,
                                                                                            len(after) - 1]:
        return replace(st, kind="probs_t")
    if name in ("split", "chunk") and st.kind == "split" and st.parts == 1 and split_dim(node) == 3:
        return replace(st, kind="pre_parts", bounds=piece_bounds(node, 3))  # TinyViT: q, k, v cut before the permute
    if name in ("split", "chunk") and st.kind == "cf_split" and split_dim(node) == 2:
        return replace(st, kind="cf_parts", bounds=piece_bounds(node, 2))
    if name == "dropout" and st.kind == "probs":
        return st
    if name == "maybe_add_mask" and st.kind == "scores" and SHAPE not in getattr(second_arg(node), "meta", {}):
        return st  # timm's mask hook with no mask: the scores unchanged
    if name == "transpose" and st.kind == "flat" and st.scale != 1.0 and sorted(dims_of(node, 3)) == [1, 2]:
        return replace(st, kind="flat_t")  # q.flatten(2) scaled, transposed: q^T of one head on a map
    if name in ("mul", "truediv", "div") and st.kind in ("scores", "flat"):
        factor = second_arg(node)
        if isinstance(factor, int | float) and not isinstance(factor, bool):
            return replace(st, scale=st.scale * (float(factor) if name == "mul" else 1 / float(factor)))
    return None


def linear_stage(node: fx.Node, name: str, x: fx.Node, st: Stage | None) -> Stage | None:
    """A step of ReLU linear attention (EfficientViT): v padded with a column of ones, the last
    column of q (k^T [v, 1]) split off as the normalizer and offset by eps."""
    if st is not None and st.kind in ("ones", "kv", "linear") and name in ("float", "to", "contiguous"):
        return st  # fp32 casts of fp32 tensors
    if name == "pad" and is_heads(x) and not heads_on_map(x) and tuple(second_arg(node) or ()) == (0, 1) \
            and node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None) == 1.0:
        return Stage("ones", x)
    index = node.args[1] if name == "getitem" and len(node.args) > 1 else None
    if st is not None and st.kind == "linear" and isinstance(index, tuple) and len(index) == 2 \
            and index[0] is Ellipsis and isinstance(index[1], slice) and index[1].step is None:
        if (index[1].start, index[1].stop) == (None, -1):
            return replace(st, kind="numerator")
        if (index[1].start, index[1].stop) == (-1, None):
            return replace(st, kind="normalizer")
    eps = second_arg(node)
    if name == "add" and st is not None and st.kind == "normalizer" and isinstance(eps, float) and not st.eps:
        return replace(st, eps=eps)
    return None


def _linear_attention(node: fx.Node) -> Converted | None:
    """numerator / normalizer of linear attention: the ATTENTION node (linear)."""
    num, den = stage_of(first_input(node)), stage_of(second_arg(node))
    if num is None or den is None or num.kind != "numerator" or den.kind != "normalizer" or num.src is not den.src \
            or num.v is None or num.k is None:
        return None
    kind, attrs, inputs = attention(node, num.src, num.k, num.v, 1.0)
    return kind, replace(attrs, linear=True, eps=den.eps), inputs


def _softmax_last(node: fx.Node) -> bool:
    """An nn.Softmax over the last dim (Swin's `self.softmax`)."""
    module = node.graph.owning_module.get_submodule(str(node.target))  # type: ignore[union-attr]
    return isinstance(module, torch.nn.Softmax) and module.dim in (-1, 3)


def _bias_lookup(node: fx.Node) -> bool:
    """`attention_biases[:, attention_bias_idxs]`: a parameter indexed by a buffer of the same module
    (or Swin's `relative_position_bias_table[relative_position_index.view(-1)]`)."""
    index = node.args[1]
    if isinstance(index, fx.Node) and str(node.args[0].target).endswith(".relative_position_bias_table"):  # type: ignore[union-attr]
        return param_path(index) is not None  # the index buffer, or fx's constant of its view
    return isinstance(index, tuple) and len(index) == 2 and index[0] == slice(None) \
        and isinstance(index[1], fx.Node) and index[1].op == "get_attr"


def matmul_stage(node: fx.Node) -> Stage | None:
    """`q @ k^T` of token heads, `q^T @ k` of heads on maps (B, h, dim, N): the scores stage."""
    a, b = node.args[0], second_arg(node)
    sa, sb = stage_of(a), stage_of(b)
    if is_heads(a) and sb is not None and sb.kind == "t" and not heads_on_map(a):
        return Stage("scores", a, k=sb.src)  # type: ignore[arg-type]
    if sa is not None and sa.kind == "t" and not heads_on_map(sa.src) and sb is not None and sb.kind == "ones":
        return Stage("kv", sa.src, k=sa.src, v=sb.src)  # linear attention: k^T [v, 1]
    if is_heads(a) and not heads_on_map(a) and sb is not None and sb.kind == "kv":
        return replace(sb, kind="linear", src=a)  # type: ignore[arg-type]  # q (k^T [v, 1])
    if sa is not None and sa.kind == "t" and heads_on_map(sa.src) and is_heads(b) and heads_on_map(b):
        return Stage("scores", sa.src, k=b)  # type: ignore[arg-type]
    if sa is not None and sa.kind == "flat_t" and sb is not None and sb.kind == "flat" and sb.scale == 1.0:
        return Stage("scores", sa.src, k=sb.src, scale=sa.scale)  # (q.flatten(2) * scale)^T @ k.flatten(2)
    flat = stage_of(a.args[0]) if isinstance(a, fx.Node) and a.args else None
    if flat is not None and flat.kind == "flat" and sb is not None and sb.kind == "flat":
        return Stage("scores", flat.src, k=sb.src)  # one head on a map: q.flatten(2)^T @ k.flatten(2)
    return None


# --- converters -----------------------------------------------------------------------------


def _transpose(node: fx.Node) -> Converted | None:
    """flatten(2).transpose(1, 2): a map's tokens; a (B, N, heads, dim) view transposed: heads."""
    x = first_input(node)
    st = stage_of(x)
    if is_heads(x) and x.meta.get(HEADS_LAST) and node_name(node) == "permute" and dims_of(node, 4) == (0, 2, 1, 3):
        to_heads(node, x.meta[HEADS])
        return OpKind.IDENTITY, NoAttrs(), (x,)
    swapped = sorted(dims_of(node, len(shape_of(x)))) == [1, 2] if node_name(node) == "transpose" \
        else dims_of(node, len(shape_of(x))) in ((0, 2, 1), (0, 2, 1, 3))
    if st is not None and st.kind == "flat" and st.scale == 1.0 and swapped:
        mark_tokens(node, True)
        return OpKind.TOKENS, NoAttrs(), (st.src,)
    if st is not None and st.kind == "split" and st.parts == 1 and swapped and len(shape_of(x)) == 4:
        to_heads(node, shape_of(st.src))
        return OpKind.IDENTITY, NoAttrs(), (st.src,)
    if st is not None and st.kind == "cf_split" and node_name(node) == "transpose" \
            and sorted(dims_of(node, 4)) == [2, 3]:
        b, c, *hw = shape_of(st.src)  # a 1x1 conv's map as token heads (B, h, H*W, unit): multi-query's q
        to_heads(node, (b, math.prod(hw), c))
        return OpKind.TOKENS, NoAttrs(), (st.src,)
    return None


def _unsqueeze(node: fx.Node) -> Converted | None:
    """Tokens (B, M, dim) as one head (B, 1, M, dim): the k or v every query head shares (multi-query)."""
    x = first_input(node)
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if not is_tokens(x) or is_heads(x) or not isinstance(dim, int) or dim % 4 != 1:
        return None
    to_heads(node, shape_of(x))
    return OpKind.IDENTITY, NoAttrs(), (x,)


def _reshape(node: fx.Node) -> Converted | None:
    """Heads merged back to tokens, or tokens folded back into a feature map."""
    x = first_input(node)
    st, after = stage_of(x), shape_of(node)
    if st is not None and st.kind in ("win_t", "win4", "unwin_t", "s2d"):
        return window_layout(node, st, after)
    if st is not None and st.kind in ("unfold_pnc", "fold_t"):
        return patch_layout(node, st, after)
    if st is not None and st.kind == "t" and not heads_on_map(st.src) and len(after) == 4 \
            and after[1] == token_shape(st.src)[2] and after[2] * after[3] == token_shape(st.src)[1]:
        mark_tokens(node, False)  # heads (B, h, dim, N) straight into a map (B, h * dim, H, W)
        return OpKind.TO_MAP, MapAttrs(height=after[2], width=after[3]), (st.src,)
    if st is not None and st.kind == "merged" and len(after) == 3:
        mark_tokens(node, True)
        if WINDOWED in st.src.meta:
            node.meta[WINDOWED] = st.src.meta[WINDOWED]
        return OpKind.IDENTITY, NoAttrs(), (st.src,)
    if st is not None and st.kind == "merged" and len(after) == 4 and after[1] * after[2] == token_shape(st.src)[1]:
        mark_tokens(node, True)  # heads merged straight into a channels-last map (B, H, W, C)
        return OpKind.TO_MAP, MapAttrs(height=after[1], width=after[2]), (st.src,)
    if heads_on_map(x) and after == tuple(x.meta[HEADS]):  # heads of a map viewed as the map again
        return OpKind.IDENTITY, NoAttrs(), (x,)
    before = shape_of(x)
    if st is None and x.meta.get(CHANNELS_LAST) and len(before) == 4 and after == (before[0], before[1] * before[2],
                                                                                  before[3]):
        mark_tokens(node, True)  # a channels-last map (B, H, W, C) as tokens (B, H*W, C)
        return OpKind.TOKENS, NoAttrs(), (x,)
    if is_tokens(x) and len(after) == 4 and after[1] * after[2] == before[1] and after[3] == before[2] \
            and after[1] != before[1]:
        mark_tokens(node, True)  # tokens as a channels-last map (B, H, W, C)
        return OpKind.TO_MAP, MapAttrs(height=after[1], width=after[2]), (x,)
    if st is not None and st.kind == "chw" and len(after) == 4 and after[1] == shape_of(st.src)[2]:
        mark_tokens(node, False)
        return OpKind.TO_MAP, MapAttrs(height=after[2], width=after[3]), (st.src,)
    return None


def _getitem(node: fx.Node) -> Converted | None:
    """q, k or v of an unbound qkv; `x[:, 0]` (a token as a vector) or `x[:, a:b]` of tokens."""
    x: Any
    index: Any
    x, index = node.args
    st = stage_of(x)
    if st is not None and st.kind == "t_parts" and isinstance(index, int):
        start, stop = st.bounds[index]
        b, n, c = st.src.meta[HEADS]
        to_heads(node, (b, n, c // st.dim * (stop - start)))
        return OpKind.HEAD_SLICE, HeadSliceAttrs(unit=st.dim, start=start, stop=stop), (st.src,)
    if st is not None and st.kind == "pre_parts" and isinstance(index, int):
        start, stop = st.bounds[index]
        b, n, c = token_shape(st.src)
        to_heads(node, (b, n, c // st.dim * (stop - start)))
        node.meta[HEADS_LAST] = True  # (B, N, heads, dim) until its permute(0, 2, 1, 3)
        return OpKind.HEAD_SLICE, HeadSliceAttrs(unit=st.dim, start=start, stop=stop), (st.src,)
    if st is not None and st.kind == "cf_parts" and isinstance(index, int):
        start, stop = st.bounds[index]
        b, c, *hw = shape_of(st.src)
        to_heads(node, (b, c // st.dim * (stop - start), *hw))
        return OpKind.HEAD_SLICE, HeadSliceAttrs(unit=st.dim, start=start, stop=stop), (st.src,)
    if st is not None and st.kind in ("unbound", "parts") and isinstance(index, int):  # unbind(0) or qkv[i]
        width = st.heads * st.dim
        to_heads(node, (*token_shape(st.src)[:2], width))
        return OpKind.SLICE, SliceAttrs(start=index * width, stop=(index + 1) * width), (st.src,)
    if (found := subsample(node, x, index)) is not None:
        return found
    if not is_tokens(x) or not isinstance(index, tuple) or len(index) != 2 or index[0] != slice(None):
        return None
    n = shape_of(x)[1]
    if isinstance(index[1], int):
        mark_tokens(node, False)
        return OpKind.TOKEN_SELECT, TokenSelectAttrs(start=index[1] % n), (x,)
    if isinstance(index[1], slice) and index[1].step in (None, 1):
        start, stop, _ = index[1].indices(n)
        return OpKind.TOKEN_SELECT, TokenSelectAttrs(start=start, stop=stop), (x,)
    return None


def _cat(node: fx.Node) -> Converted | None:
    """`cat([cls.expand(B, -1, -1), x], dim=1)` of tokens: a class token, bound to its parameter."""
    items: Any = node.args[0] if node.args else node.kwargs.get("tensors")
    dim: Any = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if not isinstance(items, list | tuple) or len(items) != 2 or not is_tokens(items[1]) or dim % 3 != 1:
        return None
    cls, x = items
    if param_path(cls) is None or shape_of(cls)[2:] != shape_of(x)[2:]:
        raise refuse(node, "a concatenation of tokens that is not a learned token before the others")
    mark_tokens(node, True)
    return OpKind.CLASS_TOKEN, ClassTokenAttrs(tokens=shape_of(cls)[1]), (x,)


def _add(node: fx.Node) -> Converted | None:
    """`x + pos_embed` with a (1, N, C) parameter on tokens: a position embedding."""
    a: Any = node.args[0]
    b: Any = second_arg(node)
    for x, p in ((a, b), (b, a)):
        if is_tokens(x) and param_path(p) is not None and shape_of(p) == (1, *shape_of(x)[1:]):
            mark_tokens(node, True)
            return OpKind.POS_EMBED, NoAttrs(), (x,)
    return None


def _mean(node: fx.Node) -> Converted | None:
    """The mean over the tokens (`x.mean(1)`, timm's global_pool='avg'): a vector, or with keepdim one token."""
    x: Any = first_input(node)
    dims: Any = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = tuple(dims) if isinstance(dims, list | tuple) else (dims,)
    if not is_tokens(x) or len(dims) != 1 or not isinstance(dims[0], int) or dims[0] % 3 != 1:
        return None
    keepdim = bool(node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False))
    mark_tokens(node, keepdim)
    return OpKind.MEAN, MeanAttrs(keepdim=keepdim), (x,)


def convert(node: fx.Node) -> Converted | None:
    """The IR op of a token layout step, class token, position embedding or heads view; None when
    `node` is none of them (the general converters then decide)."""
    name = node_name(node)
    if (found := window_map_convert(node, name)) is not None:
        return found
    if (found := xca.convert(node)) is not None:
        return found
    scores = [st for a in node.args if (st := stage_of(a)) is not None and st.kind in ("scores", "probs", "probs_t")]
    if scores and name not in ("matmul", "bmm"):
        raise refuse(node, f"{name} of attention scores; netopt models them only as softmax(q @ k^T * scale) @ v")
    converter = {"transpose": _transpose, "permute": _transpose, "reshape": _reshape, "view": _reshape,
                 "getitem": _getitem, "cat": _cat, "concat": _cat, "add": _add, "iadd": _add,
                 "mean": _mean, "unsqueeze": _unsqueeze,
                 "roll": roll_back, "flatten": flatten_tokens, "truediv": _linear_attention,
                 "div": _linear_attention, "reshape_as": unflatten_tokens}.get(name or "")
    return converter(node) if converter is not None else None


# --- helpers for the tracer ----------------------------------------------------------------


def bound_parameter(node: fx.Node) -> str:
    """The parameter a class token or position embedding reads."""
    args = [a for arg in (*node.args, *node.kwargs.values())
            for a in (arg if isinstance(arg, list | tuple) else (arg,))]
    return next(p for a in args if (p := param_path(a)) is not None)


def check_heads(node: fx.Node, kind: OpKind, inputs: tuple[fx.Node, ...]) -> None:
    """Only identities, scalar factors and attention may read a tensor split into heads. Per-token
    ops keep tokens in windows (the IR sees the grid's tokens); a roll back waits through views."""
    follow_windows(node, kind, inputs)
    if not any(is_heads(i) for i in inputs) or kind is OpKind.ATTENTION:
        return
    if kind not in HEAD_OPS or len(inputs) != 1:
        raise refuse(node, f"a {kind.value} on a tensor split into attention heads (B, heads, N, dim); pass "
                            f"opaque=[{enclosing(node)!r}] to keep the module that does it whole at full width")
    if shape_of(node) == shape_of(inputs[0]):  # still split (a merge back is an identity too)
        node.meta[HEADS] = inputs[0].meta[HEADS]


