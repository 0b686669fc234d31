"""Converters of the arithmetic between tensors: add and mul (a per-channel parameter product as a
SCALE), sub and div with a number on either side, concatenation, dtype casts, and the sums of
stacked tensors (smp FPN) or of Python's `sum(xs)` read as one n-ary ADD."""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
from torch import fx

from netopt.bridge.fxmeta import (
    DTYPE,
    SHAPE,
    Converted,
    arg_at,
    channels_last,
    param_path,
    refuse,
)
from netopt.ir.ops import (
    NoAttrs,
    OperandAttrs,
    OpKind,
    ScalarAttrs,
)

__all__ = ["binary_op", "operand_op", "cast_op", "concat", "SUMMED", "sum_stage", "stacked_sum"]


def _per_channel(node: fx.Node, x: fx.Node, p: fx.Node) -> bool:
    """Whether parameter `p` broadcasts over `x` as one value per channel."""
    x_shape, p_shape = tuple(x.meta[SHAPE]), tuple(p.meta[SHAPE])
    if len(p_shape) > len(x_shape):
        return False
    p_shape = (1,) * (len(x_shape) - len(p_shape)) + p_shape
    ch = len(x_shape) - 1 if channels_last(x) or len(x_shape) == 2 else 1
    return all(d == (x_shape[ch] if i == ch else 1) for i, d in enumerate(p_shape))


def binary_op(kind: OpKind) -> Callable[[fx.Node], Converted]:
    def convert(node: fx.Node) -> Converted:
        if node.kwargs.get("alpha", 1) != 1:
            raise refuse(node, "add with alpha is not modelled", "compute it with a plain add")
        a, b = node.args[0], arg_at(node, 1, "other")
        if kind is OpKind.ADD and isinstance(a, fx.Node) and SUMMED in a.meta and isinstance(b, fx.Node):
            return kind, ScalarAttrs(), (*a.meta[SUMMED], b)  # the last add of Python's sum(xs)
        params = [x for x in (a, b) if param_path(x) is not None]
        if kind is OpKind.MUL and len(params) == 1:
            (x,) = [t for t in (a, b) if t is not params[0]]
            if isinstance(x, fx.Node) and _per_channel(node, x, params[0]):  # type: ignore[arg-type]
                return OpKind.SCALE, NoAttrs(), (x,)
        tensors = tuple(x for x in (a, b) if isinstance(x, fx.Node))
        scalars = [x for x in (a, b) if isinstance(x, int | float) and not isinstance(x, bool)]
        if len(tensors) == 2:
            return kind, ScalarAttrs(), tensors
        if len(tensors) == 1 and len(scalars) == 1:
            return kind, ScalarAttrs(scalar=float(scalars[0])), tensors
        raise refuse(node, f"{kind.value} of {node.args!r} is not tensor-tensor or tensor-number",
                     "")
    return convert


def operand_op(kind: OpKind, swap: bool = False) -> Callable[[fx.Node], Converted]:
    """SUB/DIV of two tensors, or of a tensor and a number on either side (`1 - x`: reverse);
    `swap` for torch.rsub, which takes its second argument minus its first."""
    def convert(node: fx.Node) -> Converted:
        if node.kwargs.get("alpha", 1) != 1 or node.kwargs.get("rounding_mode") is not None:
            raise refuse(node, f"{kind.value} with alpha or rounding_mode", "compute it with plain operators")
        a, b = node.args[0], arg_at(node, 1, "other")
        a, b = (b, a) if swap else (a, b)
        if isinstance(a, fx.Node) and isinstance(b, fx.Node):
            return kind, OperandAttrs(), (a, b)
        x, number = (a, b) if isinstance(a, fx.Node) else (b, a)
        if isinstance(x, fx.Node) and isinstance(number, int | float) and not isinstance(number, bool):
            return kind, OperandAttrs(scalar=float(number), reverse=x is b), (x,)
        raise refuse(node, f"{kind.value} of {node.args!r} is not tensor-tensor or tensor-number", "")
    return convert


def cast_op(node: fx.Node) -> Converted:
    """A cast to the dtype the tensor already has (`.to(torch.float32)`, `.float()`, `.to(device)`)
    is an identity; the IR has one float dtype, so any other cast is refused."""
    x = node.args[0]
    assert isinstance(x, fx.Node)
    before, after = x.meta.get(DTYPE), node.meta.get(DTYPE)
    if before is None or before != after:
        raise refuse(node, f"a cast from {before} to {after}",
                     "the IR models tensors of one float dtype: cast the model and its input instead")
    return OpKind.IDENTITY, NoAttrs(), (x,)


def concat(node: fx.Node) -> Converted:
    dim = arg_at(node, 1, "dim", 0)
    inputs = tuple(arg_at(node, 0, "tensors"))
    rank = len(inputs[0].meta[SHAPE])
    if channels_last(inputs[0]) and dim in (rank - 1, -1):  # channels-last: the channels are the last dim
        return OpKind.CONCAT, NoAttrs(), inputs
    if dim not in (1, 1 - rank):
        raise refuse(node, f"concatenation along dim {dim}",
                     "only channel concatenation (dim=1) is modelled")
    return OpKind.CONCAT, NoAttrs(), inputs


SUMMED = "netopt_summed"
"""fx node meta key: the tensors a `torch.stack(xs)` summed over dim 0 (smp FPN's merge), or a partial
Python `sum(xs)` (`0 + x0 + x1 ...`), adds up: no IR node, one n-ary ADD at the sum's end."""


def _adds(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target is operator.add and len(node.args) == 2


def _sums_stack(node: fx.Node) -> bool:
    """`x.sum(0)` or `torch.sum(x, 0)`, without keepdim."""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", None)
    return name == "sum" and arg_at(node, 1, "dim") in (0, (0,), [0]) and not arg_at(node, 2, "keepdim", False)


def sum_stage(node: fx.Node) -> tuple[fx.Node, ...] | None:
    """The tensors `node` stacks for a `.sum(0)` alone, or the partial `sum(xs)` it passes to one
    more add (`0 + x0`, then `+ x1`, ...), else None: the sum's last op is one n-ary ADD of them."""
    if node.op == "call_function" and node.target is torch.stack:
        xs, dim = node.args[0], arg_at(node, 1, "dim", 0)
        tensors = isinstance(xs, list | tuple) and len(xs) >= 2 and all(isinstance(x, fx.Node) for x in xs)
        ok = tensors and dim == 0 and node.users and all(_sums_stack(u) for u in node.users)
        return tuple(xs) if ok else None  # type: ignore[arg-type]
    users = list(node.users)
    if not _adds(node) or len(users) != 1 or not _adds(users[0]) or users[0].args[0] is not node \
            or not isinstance(users[0].args[1], fx.Node) or not isinstance(b := node.args[1], fx.Node):
        return None
    a = node.args[0]
    if isinstance(a, int | float) and not isinstance(a, bool) and a == 0:
        return (b,)
    return (*a.meta[SUMMED], b) if isinstance(a, fx.Node) and SUMMED in a.meta else None


def stacked_sum(node: fx.Node) -> Converted:
    x = node.args[0]
    if not isinstance(x, fx.Node) or SUMMED not in x.meta or not _sums_stack(node):
        raise refuse(node, "a sum over dims other than those of torch.stack(xs).sum(0)",
                     "only the sum of stacked tensors (one n-ary add) is modelled")
    return OpKind.ADD, ScalarAttrs(), x.meta[SUMMED]
