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
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from netopt.bridge.convert import CHANNELS_LAST, SHAPE, SHAPES, Converted, param_path
from netopt.errors import UnsupportedOpError
from netopt.ir import OpKind
from netopt.ir.ops import (
    AttentionAttrs,
    ClassTokenAttrs,
    HeadSliceAttrs,
    MapAttrs,
    MeanAttrs,
    NoAttrs,
    PoolAttrs,
    SliceAttrs,
    SpaceToDepthAttrs,
    TokenSelectAttrs,
)

__all__ = ["STAGE", "HEADS", "BOUND_TO", "Stage", "stage", "matmul_stage", "convert", "FUNCTIONS", "METHODS",
           "token_shape", "bound_parameter", "check_heads", "is_tokens", "HEAD_OPS"]

STAGE = "netopt_token_stage"
"""fx node meta key: the `Stage` an attention or layout step is at (the node is no IR node)."""
BOUND_TO = "netopt_bound_to"
"""fx node meta key: the module holding the parameter an attention node reads (its position bias)."""
HEADS = "netopt_heads"
"""fx node meta key: the (B, N, C) token shape of a tensor split into heads (B, heads, N, dim)."""
WINDOWED = "netopt_windowed"
"""fx node meta key: ((B, N, C), (H, W, wh, ww, sh, sw)) of tokens in windows (B * windows, wh * ww, C):
the token shape the IR sees (the grid's, row-major) and the grid, window and shift they came from."""
HEADS_LAST = "netopt_heads_last"
"""fx node meta key: a heads tensor still laid out (B, N, heads, dim), before its permute(0, 2, 1, 3)."""
FLAT = "netopt_flat"
"""fx node meta key: (B, C, N) of tokens flattened to (B * N, C) for a BatchNorm1d (LeViT), as the IR sees them."""
ROLLED = "netopt_rolled"
"""fx node meta key: the shift (sh, sw) a map merged from shifted windows still has to be rolled back by."""

HEAD_OPS = frozenset({OpKind.IDENTITY, OpKind.DROPOUT, OpKind.MUL, OpKind.ATTENTION, OpKind.HEAD_SLICE,
                      OpKind.TO_MAP, OpKind.RELU})
"""Ops that may read a tensor split into heads (q/k norms that are identities, a scalar factor)."""


@dataclass(frozen=True)
class Stage:
    """A rearranging step: `kind` says which, `src` the IR tensor (or heads tensor) it reads."""

    kind: str  # flat, split, parts, unbound, t, scores, probs, probs_t, merged, chw, cf_split, cf_parts
    src: fx.Node
    parts: int = 1
    heads: int = 0
    dim: int = 0
    k: fx.Node | None = None
    scale: float = 1.0
    bounds: tuple[tuple[int, int], ...] = ()
    bias: fx.Node | None = None  # the `attention_biases[:, attention_bias_idxs]` lookup added to the scores
    window: tuple[int, ...] = ()  # (H, W, wh, ww, sh, sw) of a window partition or merge under way
    masked: bool = False  # a position bias plus Swin's mask of shifted windows
    v: fx.Node | None = None  # linear attention's v (k^T [v, 1] and what follows)
    eps: float = 0.0  # linear attention's normalizer offset


def _name(node: fx.Node) -> str | None:
    if node.op == "call_method":
        return str(node.target)
    if node.op == "call_function":
        return getattr(node.target, "__name__", None)
    return None


def _x(node: fx.Node) -> Any:
    return node.args[0] if node.args else node.kwargs.get("input")


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(x.meta.get(SHAPE, ())) if isinstance(x, fx.Node) else ()


def is_tokens(x: Any) -> bool:
    """A (B, N, C) token tensor, not split into heads."""
    return isinstance(x, fx.Node) and bool(x.meta.get(CHANNELS_LAST)) and len(_shape(x)) == 3


def _stage(x: Any) -> Stage | None:
    return x.meta.get(STAGE) if isinstance(x, fx.Node) else None


def _heads(x: Any) -> bool:
    return isinstance(x, fx.Node) and HEADS in x.meta


def _dims(node: fx.Node, rank: int) -> tuple[int, ...]:
    args: Any = node.args[1:]
    if len(args) == 1 and isinstance(args[0], list | tuple):
        args = args[0]
    args = args or node.kwargs.get("dims", ()) or (node.kwargs.get("dim0"), node.kwargs.get("dim1"))
    return tuple(d % rank for d in args if isinstance(d, int))


def _enclosing(node: fx.Node) -> str:
    """The qualified name of the innermost module whose forward made `node` ('' at the top)."""
    paths = [v[0] for v in (node.meta.get("nn_module_stack") or {}).values() if v and v[0]]
    return str(node.target) if node.op == "call_module" else (paths[-1] if paths else "")


def _refuse(node: fx.Node, what: str) -> UnsupportedOpError:
    return UnsupportedOpError(f"node {node.name!r}: {what}")


# --- stages ---------------------------------------------------------------------------------


def stage(node: fx.Node) -> Stage | None:
    """The stage `node` is at, or None when it is an IR op (or nothing of this module's)."""
    name, x = _name(node), _x(node)
    if node.op == "call_module" and _stage(x) is not None and _stage(x).kind == "probs":  # type: ignore[union-attr]
        return _stage(x)  # attention dropout
    scores = _stage(x)
    if node.op == "call_module" and scores is not None and scores.kind == "scores" and _softmax_last(node):
        return replace(scores, kind="probs")
    if name is None or not isinstance(x, fx.Node):
        return None
    before, after, st = _shape(x), _shape(node), _stage(x)
    if name in ("matmul", "bmm"):
        return matmul_stage(node)
    if name == "permute" and _heads(x) and x.meta.get(HEADS_LAST) and _dims(node, 4) == (0, 2, 3, 1):
        return Stage("t", x)  # LeViT's k cut from (B, N, heads, dim) and transposed at once
    if (found := window_stage(node, name, x, st)) is not None:
        return found
    if (found := linear_stage(node, name, x, st)) is not None:
        return found
    if (found := patch_stage(node, name, x, st)) is not None:
        return found
    if name == "getitem" and x.op == "get_attr" and _bias_lookup(node):
        return Stage("bias", x)
    if name == "add" and st is not None and st.kind == "bias" and _window_mask(_arg1(node), after):
        return replace(st, masked=True)  # Swin: the bias plus the mask of shifted windows (a buffer)
    if name in ("view", "reshape", "permute", "contiguous", "unsqueeze") and st is not None and st.kind == "bias":
        return st  # Swin's table lookup laid out as (1, heads, N, N)
    if name == "add" and st is not None and st.kind == "bias":
        other = _stage(_arg1(node))
        return replace(other, bias=x) if other is not None and other.kind == "scores" else None
    plain_map = st is None and len(before) == 4 and not x.meta.get(CHANNELS_LAST) and not _heads(x)
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
    if name in ("split", "chunk") and _heads(x) and not _on_map(x) and _split_dim(node) == 3:
        return Stage("t_parts", x, dim=before[3], bounds=_bounds(node, 3))  # q, k, v side by side in each head
    if name == "transpose" and _heads(x) and sorted(_dims(node, 4)) == [2, 3]:
        return Stage("t", x)
    if name == "transpose" and _heads(x) and sorted(_dims(node, 4)) == [1, 2]:
        return Stage("merged", x)
    if (name == "transpose" and is_tokens(x) and sorted(_dims(node, 3)) == [1, 2]) \
            or (name == "permute" and is_tokens(x) and _dims(node, 3) == (0, 2, 1)):
        return Stage("chw", x)
    return None


def _next_stage(node: fx.Node, name: str, st: Stage, after: tuple[int, ...]) -> Stage | None:
    if name == "permute" and st.kind == "split" and st.parts > 1 and _dims(node, 5) == (2, 0, 3, 1, 4):
        return replace(st, kind="parts")
    if name == "unbind" and st.kind == "parts" and _dim0(node):
        return replace(st, kind="unbound")
    if name == "add" and st.kind == "scores" and _window_mask(_arg1(node), after):
        return replace(st, masked=True)  # Swin's mask of shifted windows, added per window
    if name in ("view", "reshape") and st.kind == "scores":
        return st  # the scores viewed per window to add the mask, and back
    if name == "add" and st.kind == "scores" and st.bias is None:
        bias = _stage(_arg1(node))
        return replace(st, bias=_arg1(node)) if bias is not None and bias.kind == "bias" else None
    if name == "softmax" and st.kind == "scores" and _dim(node) % len(after) == len(after) - 1:
        return replace(st, kind="probs")
    if name == "transpose" and st.kind == "probs" and sorted(_dims(node, len(after)))[-2:] == [len(after) - 2,
                                                                                            len(after) - 1]:
        return replace(st, kind="probs_t")
    if name in ("split", "chunk") and st.kind == "split" and st.parts == 1 and _split_dim(node) == 3:
        return replace(st, kind="pre_parts", bounds=_bounds(node, 3))  # TinyViT: q, k, v cut before the permute
    if name in ("split", "chunk") and st.kind == "cf_split" and _split_dim(node) == 2:
        return replace(st, kind="cf_parts", bounds=_bounds(node, 2))
    if name == "dropout" and st.kind == "probs":
        return st
    if name == "maybe_add_mask" and st.kind == "scores" and SHAPE not in getattr(_arg1(node), "meta", {}):
        return st  # timm's mask hook with no mask: the scores unchanged
    if name in ("mul", "truediv", "div") and st.kind == "scores":
        factor = _arg1(node)
        if isinstance(factor, int | float) and not isinstance(factor, bool):
            return replace(st, scale=st.scale * (float(factor) if name == "mul" else 1 / float(factor)))
    return None


def window_stage(node: fx.Node, name: str, x: fx.Node, st: Stage | None) -> Stage | None:
    """A step of a window partition (a channels-last map (B, H, W, C), perhaps rolled by -shift,
    viewed as (B * windows, wh * ww, C)) or of the merge back (windowed tokens to the map)."""
    before, after = _shape(x), _shape(node)
    if name == "roll" and st is None and _map_last(x) and _roll(node)[1] == (1, 2) \
            and max(_roll(node)[0], default=1) <= 0:
        return Stage("rolled", x, window=(0, 0, 0, 0, *(-s for s in _roll(node)[0])))
    if name == "pad" and st is not None and st.kind == "rolled" and not any(_arg1(node) or ()):
        return st  # no padding: the windows tile the map
    if name in ("view", "reshape") and len(after) == 6 and ((st is None and _map_last(x)) or
                                                             (st is not None and st.kind == "rolled")):
        b, h, w, c = before
        if after == (b, h // after[2], after[2], w // after[4], after[4], c) and not h % after[2] + w % after[4]:
            shift = st.window[4:] if st is not None else (0, 0)
            return Stage("win6", st.src if st is not None else x, window=(h, w, after[2], after[4], *shift))
    if st is not None and st.kind == "win6" and name == "permute" and _dims(node, 6) == (0, 1, 3, 4, 2, 5) \
            and st.window[2] == st.window[3] and not any(st.window[4:]):
        return replace(st, kind="s2d")  # Swin's patch merging: (B, H/2, W/2, 2 (w), 2 (h), C), then flatten(3)
    if st is not None and st.kind in ("win6", "unwin6") and _swaps_windows(node, name):
        return replace(st, kind="win_t" if st.kind == "win6" else "unwin_t")
    if name == "contiguous" and st is not None and st.kind in ("win_t", "unwin_t", "win4", "unwin4"):
        return st
    if name in ("view", "reshape") and st is not None and st.kind == "win_t" and len(after) == 4:
        return replace(st, kind="win4")
    win = x.meta.get(WINDOWED) if st is None else None
    source = (x, win[1]) if win is not None and not _heads(x) else None
    if st is not None and st.kind == "unwin4":
        source = (st.src, st.window)
    if name in ("view", "reshape") and source is not None:
        h, w, wh, ww = source[1][:4]
        if after == (before[0], wh, ww, before[-1]) and st is None:
            return Stage("unwin4", x, window=source[1])
        if len(after) == 6 and after[1:] == (h // wh, w // ww, wh, ww, before[-1]):
            return Stage("unwin6", source[0], window=source[1])
    return None


_PATCH_STEPS = {("unfold", "transpose", (1, 2)): "unfold_t", ("unfold_cnp", "transpose", (1, 3)): "unfold_pnc",
                ("fold", "transpose", (1, 3)): "fold_cnp", ("fold5", "transpose", (1, 2)): "fold_t"}


def patch_stage(node: fx.Node, name: str, x: fx.Node, st: Stage | None) -> Stage | None:
    """A step of MobileViT's unfolding of a map (B, C, H, W) into the tokens at each offset of its
    ph x pw patches, (B * ph * pw, patches, C), or of the folding back."""
    before, after = _shape(x), _shape(node)
    reshape = name in ("reshape", "view")
    if st is None:
        win = x.meta.get(WINDOWED)
        if reshape and len(before) == 4 and len(after) == 4 and not x.meta.get(CHANNELS_LAST) and not _heads(x):
            b, c, h, w = before
            if after[0] == b * c * (h // after[1]) and after[2:] == (w // after[3], after[3]) and h % after[1] == 0 \
                    and w % after[3] == 0:
                return Stage("unfold", x, window=(h, w, after[1], after[3], 0, 0, 1))
        if reshape and win is not None and len(win[1]) == 7 and not _heads(x):
            h, w, ph, pw = win[1][:4]
            if after == (win[0][0], ph * pw, h // ph * (w // pw), before[-1]):
                return Stage("fold", x, window=win[1])
        return None
    if name == "contiguous" and st.kind in ("unfold", "unfold_t", "unfold_cnp", "unfold_pnc", "fold", "fold_cnp",
                                            "fold5", "fold_t"):
        return st
    if name == "transpose" and (kind := _PATCH_STEPS.get((st.kind, name, tuple(sorted(_dims(node, len(before))))))):
        return replace(st, kind=kind)
    if reshape and st.kind == "unfold_t" and len(after) == 4 and after[3] == st.window[2] * st.window[3]:
        return replace(st, kind="unfold_cnp")
    if reshape and st.kind == "fold_cnp" and len(after) == 4 and after[2:] == st.window[2:4]:
        return replace(st, kind="fold5")
    return None


def _map_last(x: fx.Node) -> bool:
    """A channels-last map (B, H, W, C), not split into heads."""
    return bool(x.meta.get(CHANNELS_LAST)) and len(_shape(x)) == 4 and not _heads(x) and WINDOWED not in x.meta


def _roll(node: fx.Node) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(shifts, dims) of a torch.roll over two dims, else ((), ())."""
    shifts = node.args[1] if len(node.args) > 1 else node.kwargs.get("shifts")
    dims = node.args[2] if len(node.args) > 2 else node.kwargs.get("dims")
    if not isinstance(shifts, list | tuple) or not isinstance(dims, list | tuple) or len(dims) != 2:
        return (), ()
    return tuple(int(s) for s in shifts), tuple(int(d) % 4 for d in dims)  # type: ignore[arg-type]


def _swaps_windows(node: fx.Node, name: str) -> bool:
    """permute(0, 1, 3, 2, 4, 5) or transpose(2, 3) of a rank-6 window view."""
    if name == "permute":
        return _dims(node, 6) == (0, 1, 3, 2, 4, 5)
    return name == "transpose" and sorted(_dims(node, 6)) == [2, 3]


def linear_stage(node: fx.Node, name: str, x: fx.Node, st: Stage | None) -> Stage | None:
    """A step of ReLU linear attention (EfficientViT): v padded with a column of ones, the last
    column of q (k^T [v, 1]) split off as the normalizer and offset by eps."""
    if st is not None and st.kind in ("ones", "kv", "linear") and name in ("float", "to", "contiguous"):
        return st  # fp32 casts of fp32 tensors
    if name == "pad" and _heads(x) and not _on_map(x) and tuple(_arg1(node) or ()) == (0, 1) \
            and node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None) == 1.0:
        return Stage("ones", x)
    index = node.args[1] if name == "getitem" and len(node.args) > 1 else None
    if st is not None and st.kind == "linear" and isinstance(index, tuple) and len(index) == 2 \
            and index[0] is Ellipsis and isinstance(index[1], slice) and index[1].step is None:
        if (index[1].start, index[1].stop) == (None, -1):
            return replace(st, kind="numerator")
        if (index[1].start, index[1].stop) == (-1, None):
            return replace(st, kind="normalizer")
    eps = _arg1(node)
    if name == "add" and st is not None and st.kind == "normalizer" and isinstance(eps, float) and not st.eps:
        return replace(st, eps=eps)
    return None


def _linear_attention(node: fx.Node) -> Converted | None:
    """numerator / normalizer of linear attention: the ATTENTION node (linear)."""
    num, den = _stage(_x(node)), _stage(_arg1(node))
    if num is None or den is None or num.kind != "numerator" or den.kind != "normalizer" or num.src is not den.src \
            or num.v is None or num.k is None:
        return None
    kind, attrs, inputs = _attention(node, num.src, num.k, num.v, 1.0)
    return kind, replace(attrs, linear=True, eps=den.eps), inputs


def _window_mask(x: Any, scores: tuple[int, ...]) -> bool:
    """A buffer (or constant) of (N, N) masks added to a window's scores: Swin's shifted-window mask."""
    return param_path(x) is not None and _shape(x)[-2:] == scores[-2:] and len(scores) >= 3


def _softmax_last(node: fx.Node) -> bool:
    """An nn.Softmax over the last dim (Swin's `self.softmax`)."""
    module = node.graph.owning_module.get_submodule(str(node.target))  # type: ignore[union-attr]
    return isinstance(module, torch.nn.Softmax) and module.dim in (-1, 3)


def _split_dim(node: fx.Node) -> int | None:
    """The dim a split or chunk of a rank-4 tensor cuts along."""
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    return dim % 4 if isinstance(dim, int) else None


def _bounds(node: fx.Node, dim: int) -> tuple[tuple[int, int], ...]:
    """The ranges [start, stop) along `dim` of the pieces a split or chunk returned."""
    ends = [0, *(shape[dim] for shape in node.meta.get(SHAPES, ()))]
    return tuple((sum(ends[:i + 1]), sum(ends[:i + 2])) for i in range(len(ends) - 1))


def _dim(node: fx.Node, default: int = 0) -> int:
    return int(node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", default))  # type: ignore[arg-type]


def _bias_lookup(node: fx.Node) -> bool:
    """`attention_biases[:, attention_bias_idxs]`: a parameter indexed by a buffer of the same module
    (or Swin's `relative_position_bias_table[relative_position_index.view(-1)]`)."""
    index = node.args[1]
    if isinstance(index, fx.Node) and str(node.args[0].target).endswith(".relative_position_bias_table"):  # type: ignore[union-attr]
        return param_path(index) is not None  # the index buffer, or fx's constant of its view
    return isinstance(index, tuple) and len(index) == 2 and index[0] == slice(None) \
        and isinstance(index[1], fx.Node) and index[1].op == "get_attr"


def _dim0(node: fx.Node) -> bool:
    return _dim(node) == 0


def _arg1(node: fx.Node) -> Any:
    return node.args[1] if len(node.args) > 1 else node.kwargs.get("other")


def matmul_stage(node: fx.Node) -> Stage | None:
    """`q @ k^T` of token heads, `q^T @ k` of heads on maps (B, h, dim, N): the scores stage."""
    a, b = node.args[0], _arg1(node)
    sa, sb = _stage(a), _stage(b)
    if _heads(a) and sb is not None and sb.kind == "t" and not _on_map(a):
        return Stage("scores", a, k=sb.src)  # type: ignore[arg-type]
    if sa is not None and sa.kind == "t" and not _on_map(sa.src) and sb is not None and sb.kind == "ones":
        return Stage("kv", sa.src, k=sa.src, v=sb.src)  # linear attention: k^T [v, 1]
    if _heads(a) and not _on_map(a) and sb is not None and sb.kind == "kv":
        return replace(sb, kind="linear", src=a)  # type: ignore[arg-type]  # q (k^T [v, 1])
    if sa is not None and sa.kind == "t" and _on_map(sa.src) and _heads(b) and _on_map(b):
        return Stage("scores", sa.src, k=b)  # type: ignore[arg-type]
    flat = _stage(a.args[0]) if isinstance(a, fx.Node) and a.args else None
    if flat is not None and flat.kind == "flat" and sb is not None and sb.kind == "flat":
        return Stage("scores", flat.src, k=sb.src)  # one head on a map: q.flatten(2)^T @ k.flatten(2)
    return None


def _on_map(x: Any) -> bool:
    """Heads of a map (B, h, dim, N), whose IR tensor is the map (B, h*dim, H, W)."""
    return _heads(x) and len(x.meta[HEADS]) == 4


# --- converters -----------------------------------------------------------------------------


def _mark(node: fx.Node, tokens: bool) -> None:
    node.meta[CHANNELS_LAST] = tokens


def _to_heads(node: fx.Node, shape: tuple[int, ...]) -> None:
    """`node` is a token tensor (B, N, C) split into heads (B, heads, N, dim), or a map (B, C, H, W)
    split into heads (B, heads, dim, H*W); `shape` is the tensor the IR sees."""
    node.meta[HEADS] = shape
    _mark(node, len(shape) == 3)


def _transpose(node: fx.Node) -> Converted | None:
    """flatten(2).transpose(1, 2): a map's tokens; a (B, N, heads, dim) view transposed: heads."""
    x = _x(node)
    st = _stage(x)
    if _heads(x) and x.meta.get(HEADS_LAST) and _name(node) == "permute" and _dims(node, 4) == (0, 2, 1, 3):
        _to_heads(node, x.meta[HEADS])
        return OpKind.IDENTITY, NoAttrs(), (x,)
    swapped = sorted(_dims(node, len(_shape(x)))) == [1, 2] if _name(node) == "transpose" \
        else _dims(node, len(_shape(x))) in ((0, 2, 1), (0, 2, 1, 3))
    if st is not None and st.kind == "flat" and swapped:
        _mark(node, True)
        return OpKind.TOKENS, NoAttrs(), (st.src,)
    if st is not None and st.kind == "split" and st.parts == 1 and swapped and len(_shape(x)) == 4:
        _to_heads(node, _shape(st.src))
        return OpKind.IDENTITY, NoAttrs(), (st.src,)
    if st is not None and st.kind == "cf_split" and _name(node) == "transpose" and sorted(_dims(node, 4)) == [2, 3]:
        b, c, *hw = _shape(st.src)  # a 1x1 conv's map as token heads (B, h, H*W, unit): multi-query's q
        _to_heads(node, (b, math.prod(hw), c))
        return OpKind.TOKENS, NoAttrs(), (st.src,)
    return None


def _unsqueeze(node: fx.Node) -> Converted | None:
    """Tokens (B, M, dim) as one head (B, 1, M, dim): the k or v every query head shares (multi-query)."""
    x = _x(node)
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if not is_tokens(x) or _heads(x) or not isinstance(dim, int) or dim % 4 != 1:
        return None
    _to_heads(node, _shape(x))
    return OpKind.IDENTITY, NoAttrs(), (x,)


def _reshape(node: fx.Node) -> Converted | None:
    """Heads merged back to tokens, or tokens folded back into a feature map."""
    x = _x(node)
    st, after = _stage(x), _shape(node)
    if st is not None and st.kind in ("win_t", "win4", "unwin_t", "s2d"):
        return _window_layout(node, st, after)
    if st is not None and st.kind in ("unfold_pnc", "fold_t"):
        return _patch_layout(node, st, after)
    if st is not None and st.kind == "t" and not _on_map(st.src) and len(after) == 4 \
            and after[1] == token_shape(st.src)[2] and after[2] * after[3] == token_shape(st.src)[1]:
        _mark(node, False)  # heads (B, h, dim, N) straight into a map (B, h * dim, H, W)
        return OpKind.TO_MAP, MapAttrs(height=after[2], width=after[3]), (st.src,)
    if st is not None and st.kind == "merged" and len(after) == 3:
        _mark(node, True)
        if WINDOWED in st.src.meta:
            node.meta[WINDOWED] = st.src.meta[WINDOWED]
        return OpKind.IDENTITY, NoAttrs(), (st.src,)
    if st is not None and st.kind == "merged" and len(after) == 4 and after[1] * after[2] == token_shape(st.src)[1]:
        _mark(node, True)  # heads merged straight into a channels-last map (B, H, W, C)
        return OpKind.TO_MAP, MapAttrs(height=after[1], width=after[2]), (st.src,)
    if _on_map(x) and after == tuple(x.meta[HEADS]):  # heads of a map viewed as the map again
        return OpKind.IDENTITY, NoAttrs(), (x,)
    before = _shape(x)
    if st is None and x.meta.get(CHANNELS_LAST) and len(before) == 4 and after == (before[0], before[1] * before[2],
                                                                                  before[3]):
        _mark(node, True)  # a channels-last map (B, H, W, C) as tokens (B, H*W, C)
        return OpKind.TOKENS, NoAttrs(), (x,)
    if is_tokens(x) and len(after) == 4 and after[1] * after[2] == before[1] and after[3] == before[2] \
            and after[1] != before[1]:
        _mark(node, True)  # tokens as a channels-last map (B, H, W, C)
        return OpKind.TO_MAP, MapAttrs(height=after[1], width=after[2]), (x,)
    if st is not None and st.kind == "chw" and len(after) == 4 and after[1] == _shape(st.src)[2]:
        _mark(node, False)
        return OpKind.TO_MAP, MapAttrs(height=after[2], width=after[3]), (st.src,)
    return None


def _window_layout(node: fx.Node, st: Stage, after: tuple[int, ...]) -> Converted | None:
    """A map's windows as tokens (TOKENS: the IR sees the grid's tokens, the attention makes the
    windows), or the windows merged back into the map (TO_MAP, still rolled by the shift)."""
    h, w, wh, ww, *shift = st.window
    b, c = _shape(st.src)[0], _shape(st.src)[-1]
    if st.kind == "s2d" and after == (b, h // wh, w // ww, wh * ww * c):
        _mark(node, True)
        return OpKind.SPACE_TO_DEPTH, SpaceToDepthAttrs(block=wh), (st.src,)
    if st.kind in ("win_t", "win4") and len(after) == 3 and after[1:] == (wh * ww, c):
        _mark(node, True)
        node.meta[WINDOWED] = ((b, h * w, c), st.window)
        return OpKind.TOKENS, NoAttrs(), (st.src,)
    if st.kind == "unwin_t" and len(after) == 4 and after[1:] == (h, w, c):
        _mark(node, True)
        if any(shift):
            node.meta[ROLLED] = tuple(shift)
        return OpKind.TO_MAP, MapAttrs(height=h, width=w), (st.src,)
    return None


def _patch_layout(node: fx.Node, st: Stage, after: tuple[int, ...]) -> Converted | None:
    """A map's tokens by patch offset (TOKENS: the IR sees the grid's tokens, the attention groups
    them), or folded back into the map (TO_MAP)."""
    h, w = st.window[:2]
    if st.kind == "unfold_pnc" and len(after) == 3:
        b, c = _shape(st.src)[:2]
        _mark(node, True)
        node.meta[WINDOWED] = ((b, h * w, c), st.window)
        return OpKind.TOKENS, NoAttrs(), (st.src,)
    if st.kind == "fold_t" and len(after) == 4 and after[2:] == (h, w):
        _mark(node, False)
        return OpKind.TO_MAP, MapAttrs(height=h, width=w), (st.src,)
    return None


def _flatten(node: fx.Node) -> Converted | None:
    """flatten(3) of a map's 2 x 2 patches: space to depth (Swin's patch merging); flatten(0, 1) of
    tokens for a BatchNorm1d (LeViT)."""
    x, st = _x(node), _stage(_x(node))
    if st is not None and st.kind == "s2d":
        return _window_layout(node, st, _shape(node))
    if is_tokens(x) and not _heads(x) and WINDOWED not in x.meta and node.args[1:] == (0, 1):
        b, n, c = _shape(x)
        node.meta[FLAT] = (b, c, n)
        _mark(node, False)  # (B * N, C): channels at dim 1, like vectors
        return OpKind.IDENTITY, NoAttrs(), (x,)
    return None


def _unflatten(node: fx.Node) -> Converted | None:
    """`y.reshape_as(x)` of tokens flattened to (B * N, C): the tokens again."""
    x, like = _x(node), _arg1(node)
    if isinstance(x, fx.Node) and FLAT in x.meta and is_tokens(like) and _shape(node) == _shape(like):
        _mark(node, True)
        return OpKind.IDENTITY, NoAttrs(), (x,)
    return None


def _subsample(node: fx.Node, x: Any, index: Any) -> Converted | None:
    """`x[:, ::s, ::s]` of a channels-last map (LeViT's token subsampling): a 1x1 pool of stride s."""
    if not isinstance(x, fx.Node) or not _map_last(x) or not isinstance(index, tuple) or len(index) not in (3, 4) \
            or index[0] != slice(None) or not all(isinstance(i, slice) for i in index):
        return None
    steps = [i.step or 1 for i in index[1:3]]
    if any(i.start not in (None, 0) or i.stop is not None for i in index[1:3]) or steps == [1, 1] \
            or (len(index) == 4 and index[3] != slice(None)):
        return None
    _mark(node, True)
    return OpKind.AVGPOOL2D, PoolAttrs(kernel_size=(1, 1), stride=(steps[0], steps[1])), (x,)


def _roll_back(node: fx.Node) -> Converted | None:
    """torch.roll by the shift a map merged from shifted windows has: the attention rolled it back."""
    x = _x(node)
    if isinstance(x, fx.Node) and x.meta.get(ROLLED) and _roll(node) == (x.meta[ROLLED], (1, 2)):
        _mark(node, True)
        return OpKind.IDENTITY, NoAttrs(), (x,)
    return None


def _getitem(node: fx.Node) -> Converted | None:
    """q, k or v of an unbound qkv; `x[:, 0]` (a token as a vector) or `x[:, a:b]` of tokens."""
    x: Any
    index: Any
    x, index = node.args
    st = _stage(x)
    if st is not None and st.kind == "t_parts" and isinstance(index, int):
        start, stop = st.bounds[index]
        b, n, c = st.src.meta[HEADS]
        _to_heads(node, (b, n, c // st.dim * (stop - start)))
        return OpKind.HEAD_SLICE, HeadSliceAttrs(unit=st.dim, start=start, stop=stop), (st.src,)
    if st is not None and st.kind == "pre_parts" and isinstance(index, int):
        start, stop = st.bounds[index]
        b, n, c = token_shape(st.src)
        _to_heads(node, (b, n, c // st.dim * (stop - start)))
        node.meta[HEADS_LAST] = True  # (B, N, heads, dim) until its permute(0, 2, 1, 3)
        return OpKind.HEAD_SLICE, HeadSliceAttrs(unit=st.dim, start=start, stop=stop), (st.src,)
    if st is not None and st.kind == "cf_parts" and isinstance(index, int):
        start, stop = st.bounds[index]
        b, c, *hw = _shape(st.src)
        _to_heads(node, (b, c // st.dim * (stop - start), *hw))
        return OpKind.HEAD_SLICE, HeadSliceAttrs(unit=st.dim, start=start, stop=stop), (st.src,)
    if st is not None and st.kind in ("unbound", "parts") and isinstance(index, int):  # unbind(0) or qkv[i]
        width = st.heads * st.dim
        _to_heads(node, (*token_shape(st.src)[:2], width))
        return OpKind.SLICE, SliceAttrs(start=index * width, stop=(index + 1) * width), (st.src,)
    if (found := _subsample(node, x, index)) is not None:
        return found
    if isinstance(x, fx.Node) and _map_last(x) and isinstance(index, tuple) \
            and all(isinstance(i, slice) and i.indices(d) == (0, d, 1) for i, d in zip(index, _shape(x), strict=False)):
        if ROLLED in x.meta:  # [:, :H, :W] of a map merged from windows that needed no padding
            node.meta[ROLLED] = x.meta[ROLLED]
        _mark(node, True)
        return OpKind.IDENTITY, NoAttrs(), (x,)
    if not is_tokens(x) or not isinstance(index, tuple) or len(index) != 2 or index[0] != slice(None):
        return None
    n = _shape(x)[1]
    if isinstance(index[1], int):
        _mark(node, False)
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
    if param_path(cls) is None or _shape(cls)[2:] != _shape(x)[2:]:
        raise _refuse(node, "a concatenation of tokens that is not a learned token before the others")
    _mark(node, True)
    return OpKind.CLASS_TOKEN, ClassTokenAttrs(tokens=_shape(cls)[1]), (x,)


def _add(node: fx.Node) -> Converted | None:
    """`x + pos_embed` with a (1, N, C) parameter on tokens: a position embedding."""
    a: Any = node.args[0]
    b: Any = _arg1(node)
    for x, p in ((a, b), (b, a)):
        if is_tokens(x) and param_path(p) is not None and _shape(p) == (1, *_shape(x)[1:]):
            _mark(node, True)
            return OpKind.POS_EMBED, NoAttrs(), (x,)
    return None


def _mean(node: fx.Node) -> Converted | None:
    """The mean over the tokens (`x.mean(1)`, timm's global_pool='avg'): a vector, or with keepdim one token."""
    x: Any = _x(node)
    dims: Any = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = tuple(dims) if isinstance(dims, list | tuple) else (dims,)
    if not is_tokens(x) or len(dims) != 1 or not isinstance(dims[0], int) or dims[0] % 3 != 1:
        return None
    keepdim = bool(node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False))
    _mark(node, keepdim)
    return OpKind.MEAN, MeanAttrs(keepdim=keepdim), (x,)


def _sdpa(node: fx.Node) -> Converted:
    q, k, v = (node.args[i] if len(node.args) > i else node.kwargs[n] for i, n in enumerate("qkv"))
    extra: dict[str, Any] = {n: node.kwargs.get(n) for n in ("attn_mask", "dropout_p", "is_causal", "enable_gqa")}
    mask = _stage(extra["attn_mask"])  # a relative position bias (and Swin's mask) added to the scores
    bias = extra["attn_mask"] if mask is not None and mask.kind == "bias" else None
    if len(node.args) > 3 or (extra["attn_mask"] is not None and bias is None) or extra["is_causal"] \
            or extra["dropout_p"] or extra["enable_gqa"] or not all(_heads(t) for t in (q, k, v)):
        raise _refuse(node, "scaled_dot_product_attention with a mask, causal, dropout, grouped queries or inputs "
                            "not split into heads from tokens")
    scale = node.kwargs.get("scale")
    masked = mask is not None and mask.masked
    return _attention(node, q, k, v, 1 / math.sqrt(_shape(q)[-1]) if scale is None else float(scale),  # type: ignore[arg-type]
                      bias, masked)


def _matmul(node: fx.Node) -> Converted:
    """`probs @ v` (tokens) or `v @ probs^T` (maps) ends the explicit attention; other matmuls are refused."""
    a: Any = node.args[0]
    b: Any = _arg1(node)
    sa, sb = _stage(a), _stage(b)
    st, v = (sa, b) if sa is not None and sa.kind == "probs" else (sb, a)
    flat = _stage(v)
    if flat is not None and flat.kind == "flat":
        v = flat.src  # one head on a map: v.flatten(2) @ probs^T
    on_map = _on_map(v) or (not _heads(v) and len(_shape(v)) == 4)
    if st is None or st.k is None or st.kind != ("probs_t" if on_map else "probs") \
            or not (_heads(v) or on_map) or _on_map(st.src) != _on_map(v):
        raise _refuse(node, "a matmul that is not softmax(q @ k^T) @ v of tensors split into heads")
    return _attention(node, st.src, st.k, v, st.scale, st.bias, st.masked)


def _attention(node: fx.Node, q: fx.Node, k: fx.Node, v: fx.Node, scale: float,
               bias: fx.Node | None = None, masked: bool = False) -> Converted:
    if _on_map(q):  # (B, h, dim, N) of the map q's IR tensor is
        dq, dv, heads = _shape(q)[2], _shape(v)[2], _shape(q)[1]
        b, _, *hw = q.meta[HEADS]
        _to_heads(node, (b, heads * dv, *hw))
    elif not _heads(q):  # one head on maps (B, C, H, W)
        dq, dv, heads = _shape(q)[1], _shape(v)[1], 1
        b, _, *hw = _shape(q)
        _to_heads(node, (b, dv, *hw))
    else:
        dq, dv, heads = _shape(q)[-1], _shape(v)[-1], _shape(q)[1]
        b, n = token_shape(q)[:2]
        _to_heads(node, (b, n, heads * dv))
    positions = _bias_positions(node, bias, heads) if bias is not None else 0
    attrs = AttentionAttrs(qk_dim=dq, v_dim=dv, scale=scale, bias_positions=positions)
    return OpKind.ATTENTION, _windows(node, q, attrs, masked), (q, k, v)


def _windows(node: fx.Node, q: fx.Node, attrs: AttentionAttrs, masked: bool) -> AttentionAttrs:
    """The attention's windows, read off its q (tokens in windows), with Swin's mask if shifted."""
    if WINDOWED not in q.meta:
        return attrs
    h, w, wh, ww, sh, sw, *patch = q.meta[WINDOWED][1]
    node.meta[WINDOWED] = (token_shape(node), q.meta[WINDOWED][1])
    if patch:  # MobileViT: the tokens at one offset of every patch attend to each other
        return replace(attrs, patch=(wh, ww), grid=(h, w))
    if bool(sh or sw) != masked:
        raise _refuse(node, f"attention in windows shifted by {(sh, sw)} {'with' if masked else 'without'} a mask; "
                            "netopt models Swin's shifted windows: a roll by -shift, the mask of its regions added")
    return replace(attrs, window=(wh, ww), grid=(h, w), shift=(sh, sw))


def _bias_positions(node: fx.Node, bias: fx.Node, heads: int) -> int:
    """The positions R of a (heads, R) relative position bias, bound to the module holding it."""
    while _name(bias) != "getitem":  # from the bias laid out (and masked) back to its lookup
        bias = bias.args[0]  # type: ignore[assignment]
    table: Any = bias.args[0]
    owner, _, name = str(table.target).rpartition(".")
    if name == "relative_position_bias_table" and _shape(table)[1] == heads:
        node.meta[BOUND_TO] = owner  # Swin's (R, heads) table
        return _shape(table)[0]
    idxs: Any = bias.args[1][1] if isinstance(bias.args[1], tuple) else bias.args[1]  # type: ignore[index]
    if name != "attention_biases" or str(idxs.target) != f"{owner}.attention_bias_idxs" \
            or _shape(table)[0] != heads:
        raise _refuse(node, f"attention scores plus {table.target!r}[:, {idxs.target!r}]; a relative position bias "
                            "is modelled as attention_biases[:, attention_bias_idxs] of one module, a row per head")
    node.meta[BOUND_TO] = owner
    return _shape(table)[1]


FUNCTIONS: dict[Any, Any] = {
    F.scaled_dot_product_attention: _sdpa,
    operator.matmul: _matmul,
    torch.matmul: _matmul,
    torch.bmm: _matmul,
}
"""Functions whose only meaning netopt models is attention's."""

METHODS: dict[str, Any] = {"matmul": _matmul, "bmm": _matmul}


def convert(node: fx.Node) -> Converted | None:
    """The IR op of a token layout step, class token, position embedding or heads view; None when
    `node` is none of them (the general converters then decide)."""
    name = _name(node)
    scores = [st for a in node.args if (st := _stage(a)) is not None and st.kind in ("scores", "probs", "probs_t")]
    if scores and name not in ("matmul", "bmm"):
        raise _refuse(node, f"{name} of attention scores; netopt models them only as softmax(q @ k^T * scale) @ v")
    converter = {"transpose": _transpose, "permute": _transpose, "reshape": _reshape, "view": _reshape,
                 "getitem": _getitem, "cat": _cat, "concat": _cat, "add": _add, "iadd": _add,
                 "mean": _mean, "unsqueeze": _unsqueeze,
                 "roll": _roll_back, "flatten": _flatten, "truediv": _linear_attention,
                 "div": _linear_attention, "reshape_as": _unflatten}.get(name or "")
    return converter(node) if converter is not None else None


# --- helpers for the tracer ----------------------------------------------------------------


def token_shape(node: fx.Node) -> tuple[int, ...]:
    """The shape the IR sees for `node`: a heads tensor's token shape, windowed tokens' the grid's,
    else its own."""
    if HEADS in node.meta:
        return tuple(node.meta[HEADS])
    if FLAT in node.meta:
        return tuple(node.meta[FLAT])
    return tuple(node.meta[WINDOWED][0] if WINDOWED in node.meta else node.meta[SHAPE])


def bound_parameter(node: fx.Node) -> str:
    """The parameter a class token or position embedding reads."""
    args = [a for arg in (*node.args, *node.kwargs.values())
            for a in (arg if isinstance(arg, list | tuple) else (arg,))]
    return next(p for a in args if (p := param_path(a)) is not None)


def check_heads(node: fx.Node, kind: OpKind, inputs: tuple[fx.Node, ...]) -> None:
    """Only identities, scalar factors and attention may read a tensor split into heads. Per-token
    ops keep tokens in windows (the IR sees the grid's tokens); a roll back waits through views."""
    _follow_windows(node, kind, inputs)
    if not any(_heads(i) for i in inputs) or kind is OpKind.ATTENTION:
        return
    if kind not in HEAD_OPS or len(inputs) != 1:
        raise _refuse(node, f"a {kind.value} on a tensor split into attention heads (B, heads, N, dim); pass "
                            f"opaque=[{_enclosing(node)!r}] to keep the module that does it whole at full width")
    if _shape(node) == _shape(inputs[0]):  # still split (a merge back is an identity too)
        node.meta[HEADS] = inputs[0].meta[HEADS]


def _follow_windows(node: fx.Node, kind: OpKind, inputs: tuple[fx.Node, ...]) -> None:
    """An op on windowed tokens that keeps every token where it is (Linear, LayerNorm, add, ...)
    makes windowed tokens; an identity of a map still to be rolled back is such a map too."""
    win = next((i.meta[WINDOWED] for i in inputs if WINDOWED in i.meta), None)
    shape = _shape(node)
    if win is not None and WINDOWED not in node.meta and HEADS in node.meta:
        node.meta[WINDOWED] = (tuple(node.meta[HEADS]), win[1])
    elif win is not None and WINDOWED not in node.meta and shape[:-1] == _shape(inputs[0])[:-1]:
        node.meta[WINDOWED] = ((*win[0][:-1], shape[-1]), win[1])
    if len(inputs) == 1 and FLAT in inputs[0].meta and shape == _shape(inputs[0]):
        node.meta.setdefault(FLAT, inputs[0].meta[FLAT])  # the BatchNorm1d on flattened tokens
    if kind is OpKind.IDENTITY and len(inputs) == 1 and ROLLED in inputs[0].meta and shape == _shape(inputs[0]):
        node.meta.setdefault(ROLLED, inputs[0].meta[ROLLED])
