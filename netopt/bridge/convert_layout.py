"""Converters of the layout ops: flatten and reshape, permutes in and out of channels-last
(the permutes become identities), channel slices of split/chunk and indexing, and the channel
shuffle recognized from its view, transpose and contiguous steps."""

from __future__ import annotations

from typing import Any

from torch import fx

from netopt.bridge.fxmeta import (
    CHANNELS_LAST,
    PIECES,
    SHAPE,
    SHAPES,
    Converted,
    arg_at,
    channel_count,
    channels_last,
    refuse,
)
from netopt.ir.ops import (
    NoAttrs,
    OpKind,
    ShuffleAttrs,
    SliceAttrs,
)

__all__ = ["flatten_fn", "SHUFFLE", "shuffle_stage", "reshape_op", "permute_op", "getitem_op", "pieces"]


def flatten_fn(node: fx.Node) -> Converted:
    start, end = arg_at(node, 1, "start_dim", 0), arg_at(node, 2, "end_dim", -1)
    if (start, end) != (1, -1):
        raise refuse(node, f"flatten(start_dim={start}, end_dim={end})",
                     "only flattening everything after the batch dim (start_dim=1) is modelled")
    return OpKind.FLATTEN, NoAttrs(), (node.args[0],)  # type: ignore[return-value]


SHUFFLE = "netopt_shuffle"
"""fx node meta key: (source, groups, transposed) of a channel shuffle under way."""


def shuffle_stage(node: fx.Node) -> tuple[fx.Node, int, bool] | None:
    """The first steps of a channel shuffle: view to (N, g, C/g, H, W), transpose(1, 2), contiguous."""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", None)
    x = node.args[0] if node.args else None
    if not isinstance(x, fx.Node) or SHAPE not in x.meta or SHAPE not in node.meta:
        return None
    before, after = tuple(x.meta[SHAPE]), tuple(node.meta[SHAPE])
    if name in ("view", "reshape") and len(before) == 4 and len(after) == 5 and not channels_last(x) \
            and after[1] * after[2] == before[1] and after[3:] == before[2:] and after[1] > 1:
        return x, int(after[1]), False
    stage = x.meta.get(SHUFFLE)
    if stage is None:
        return None
    if name == "transpose" and sorted(d % 5 for d in node.args[1:3]) == [1, 2] and not stage[2]:  # type: ignore[operator]
        return stage[0], stage[1], True
    if name == "contiguous":
        return stage  # type: ignore[no-any-return]
    return None


def reshape_op(node: fx.Node) -> Converted:
    source = node.args[0]
    assert isinstance(source, fx.Node)
    stage = source.meta.get(SHUFFLE)
    if stage is not None and stage[2] and tuple(node.meta[SHAPE]) == tuple(stage[0].meta[SHAPE]):
        return OpKind.CHANNEL_SHUFFLE, ShuffleAttrs(groups=stage[1]), (stage[0],)
    shape_in = tuple(source.meta[SHAPE])
    shape_out = tuple(node.meta[SHAPE])
    size = 1
    for d in shape_in[1:]:
        size *= d
    if shape_out == (shape_in[0], size):
        return OpKind.FLATTEN, NoAttrs(), (source,)
    if shape_out == shape_in:
        return OpKind.IDENTITY, NoAttrs(), (source,)
    raise refuse(node, f"reshape from {shape_in} to {shape_out}",
                 "only (N, ...) -> (N, -1) is modelled")


def permute_op(node: fx.Node) -> Converted:
    args: Any = node.args
    x = args[0]
    dims: tuple[int, ...] = tuple(args[1]) if len(args) == 2 and isinstance(args[1], list | tuple) \
        else tuple(args[1:]) or tuple(node.kwargs.get("dims", ()))  # type: ignore[arg-type]
    rank = len(x.meta[SHAPE])
    dims = tuple(d % rank for d in dims)
    if rank == 4 and dims == (0, 2, 3, 1) and not channels_last(x):
        node.meta[CHANNELS_LAST] = True
    elif rank == 4 and dims == (0, 3, 1, 2) and channels_last(x):
        node.meta[CHANNELS_LAST] = False
    else:
        raise refuse(node, f"permute{dims} of a tensor of shape {tuple(x.meta[SHAPE])}",
                     "only NCHW -> NHWC (0, 2, 3, 1) and back (0, 3, 1, 2) are modelled")
    return OpKind.IDENTITY, NoAttrs(), (x,)


def getitem_op(node: fx.Node) -> Converted:
    x: Any
    index: Any
    x, index = node.args
    assert isinstance(x, fx.Node)
    if PIECES in x.meta:  # a piece of split/chunk
        start, stop = x.meta[PIECES][index]
        return _slice(x.args[0], start, stop)  # type: ignore[arg-type]
    shape = x.meta.get(SHAPE)
    index = index if isinstance(index, tuple) else (index,)
    if shape is None or len(shape) < 2 or channels_last(x) or not _channel_index(index, len(shape)):
        raise refuse(node, f"indexing {tuple(shape or ())} with {index!r}",
                     "only a range of channels (x[:, a:b]) is modelled")
    start, stop, _ = index[1].indices(shape[1])
    return _slice(x, start, stop)


def _channel_index(index: tuple[Any, ...], rank: int) -> bool:
    everything = slice(None)
    rest = index[2:]
    if rest and rest[-1] is Ellipsis:
        rest = rest[:-1]
    return (len(index) >= 2 and index[0] == everything and isinstance(index[1], slice)
            and index[1].step in (None, 1) and len(index) <= rank + 1 and all(r == everything for r in rest))


def _slice(x: fx.Node, start: int, stop: int) -> Converted:
    if start == 0 and stop == channel_count(x, x):
        return OpKind.IDENTITY, NoAttrs(), (x,)
    return OpKind.SLICE, SliceAttrs(start=start, stop=stop), (x,)


def pieces(node: fx.Node) -> list[tuple[int, int]] | None:
    """Channel ranges of the tensors a split or chunk along the channels (dim 1; the last dim of
    a channels-last map) returns, else None."""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", None)
    if name not in ("split", "chunk") or node.op not in ("call_method", "call_function"):
        return None
    x = node.args[0]
    rank = len(x.meta[SHAPE])  # type: ignore[union-attr]
    dim = arg_at(node, 2, "dim", 0)
    channels = rank - 1 if channels_last(x) else 1
    if dim % rank != channels:
        return None
    bounds, start = [], 0
    for shape in node.meta[SHAPES]:
        bounds.append((start, start + shape[channels]))
        start += shape[channels]
    return bounds
