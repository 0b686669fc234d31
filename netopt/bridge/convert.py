"""Tables that turn torch.fx nodes into IR ops: one converter per module type or function.

A converter gets the fx node and what it calls, and returns (OpKind, attrs, tensor inputs).
Unknown callables are refused by the caller with a message that names the node.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from netopt.bridge import modules as M
from netopt.errors import UnsupportedOpError
from netopt.ir.ops import (
    AdaptivePoolAttrs,
    BatchNormAttrs,
    Conv2dAttrs,
    DropoutAttrs,
    GeluAttrs,
    LinearAttrs,
    MeanAttrs,
    NoAttrs,
    OpKind,
    PoolAttrs,
    ScalarAttrs,
)

__all__ = ["MODULES", "FUNCTIONS", "METHODS", "Converted"]

Converted = tuple[OpKind, Any, tuple[fx.Node, ...]]


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _opt_pair(v: Any) -> tuple[int | None, int | None]:
    return (v, v) if v is None or isinstance(v, int) else (v[0], v[1])


def _first(node: fx.Node) -> tuple[fx.Node, ...]:
    return (node.args[0],) if node.args else (node.kwargs["input"],)  # type: ignore[return-value]


def _refuse(node: fx.Node, what: str, fix: str) -> UnsupportedOpError:
    return UnsupportedOpError(f"node {node.name!r}: {what}; {fix}")


# --- modules --------------------------------------------------------------------------------


def _conv(node: fx.Node, m: nn.Conv2d) -> Converted:
    padding = m.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        else:  # "same" with stride 1: symmetric when the dilated kernel is odd
            spans = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size, strict=True)]
            if any(s % 2 for s in spans):
                raise _refuse(node, "padding='same' with an even kernel pads unevenly",
                              "use explicit padding, or mark the module opaque")
            padding = (spans[0] // 2, spans[1] // 2)
    attrs = Conv2dAttrs(
        out_channels=m.out_channels, kernel_size=_pair(m.kernel_size), stride=_pair(m.stride),
        padding=_pair(padding), dilation=_pair(m.dilation), groups=m.groups,
        bias=m.bias is not None, padding_mode=m.padding_mode,
    )
    return OpKind.CONV2D, attrs, _first(node)


def _linear(node: fx.Node, m: nn.Linear) -> Converted:
    return OpKind.LINEAR, LinearAttrs(out_features=m.out_features, bias=m.bias is not None), _first(node)


def _bn(node: fx.Node, m: nn.modules.batchnorm._BatchNorm) -> Converted:
    attrs = BatchNormAttrs(eps=m.eps, momentum=m.momentum, affine=m.affine,
                           track_running_stats=m.track_running_stats)
    return OpKind.BATCHNORM, attrs, _first(node)


def _unary(kind: OpKind) -> Callable[[fx.Node, Any], Converted]:
    return lambda node, m: (kind, NoAttrs(), _first(node))


def _gelu(node: fx.Node, m: nn.GELU) -> Converted:
    return OpKind.GELU, GeluAttrs(approximate=m.approximate), _first(node)


def _maxpool(node: fx.Node, m: nn.MaxPool2d) -> Converted:
    if m.return_indices:
        raise _refuse(node, "MaxPool2d(return_indices=True) is not modelled", "mark it opaque")
    stride = m.stride if m.stride is not None else m.kernel_size
    attrs = PoolAttrs(kernel_size=_pair(m.kernel_size), stride=_pair(stride), padding=_pair(m.padding),
                      dilation=_pair(m.dilation), ceil_mode=m.ceil_mode)
    return OpKind.MAXPOOL2D, attrs, _first(node)


def _avgpool(node: fx.Node, m: nn.AvgPool2d) -> Converted:
    if m.divisor_override is not None:
        raise _refuse(node, "AvgPool2d(divisor_override=...) is not modelled", "mark it opaque")
    stride = m.stride if m.stride is not None else m.kernel_size
    attrs = PoolAttrs(kernel_size=_pair(m.kernel_size), stride=_pair(stride), padding=_pair(m.padding),
                      ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad)
    return OpKind.AVGPOOL2D, attrs, _first(node)


def _adaptive(kind: OpKind) -> Callable[[fx.Node, Any], Converted]:
    def convert(node: fx.Node, m: Any) -> Converted:
        if getattr(m, "return_indices", False):
            raise _refuse(node, "adaptive max pooling with return_indices is not modelled", "mark it opaque")
        return kind, AdaptivePoolAttrs(output_size=_opt_pair(m.output_size)), _first(node)
    return convert


def _dropout(node: fx.Node, m: nn.Module) -> Converted:
    return OpKind.DROPOUT, DropoutAttrs(p=float(getattr(m, "p", 0.0))), _first(node)


def _nn_flatten(node: fx.Node, m: nn.Flatten) -> Converted:
    if (m.start_dim, m.end_dim) != (1, -1):
        raise _refuse(node, f"Flatten(start_dim={m.start_dim}, end_dim={m.end_dim})",
                      "only flattening everything after the batch dim is modelled")
    return OpKind.FLATTEN, NoAttrs(), _first(node)


def _own(kind: OpKind, attrs: Callable[[Any], Any]) -> Callable[[fx.Node, Any], Converted]:
    return lambda node, m: (kind, attrs(m), tuple(node.args))  # type: ignore[arg-type]


MODULES: dict[type, Callable[[fx.Node, Any], Converted]] = {
    nn.Conv2d: _conv,
    nn.Linear: _linear,
    nn.BatchNorm2d: _bn,
    nn.BatchNorm1d: _bn,
    nn.ReLU: _unary(OpKind.RELU),
    nn.ReLU6: _unary(OpKind.RELU6),
    nn.Hardswish: _unary(OpKind.HARDSWISH),
    nn.Hardsigmoid: _unary(OpKind.HARDSIGMOID),
    nn.SiLU: _unary(OpKind.SILU),
    nn.Sigmoid: _unary(OpKind.SIGMOID),
    nn.GELU: _gelu,
    nn.MaxPool2d: _maxpool,
    nn.AvgPool2d: _avgpool,
    nn.AdaptiveAvgPool2d: _adaptive(OpKind.ADAPTIVE_AVGPOOL2D),
    nn.AdaptiveMaxPool2d: _adaptive(OpKind.ADAPTIVE_MAXPOOL2D),
    nn.Dropout: _dropout,
    nn.Dropout2d: _dropout,
    nn.Identity: _unary(OpKind.IDENTITY),
    nn.Flatten: _nn_flatten,
    M.Add: _own(OpKind.ADD, lambda m: ScalarAttrs(scalar=m.scalar)),
    M.Mul: _own(OpKind.MUL, lambda m: ScalarAttrs(scalar=m.scalar)),
    M.Concat: _own(OpKind.CONCAT, lambda m: NoAttrs()),
    M.Flatten: _own(OpKind.FLATTEN, lambda m: NoAttrs()),
    M.Mean: _own(OpKind.MEAN, lambda m: MeanAttrs(keepdim=m.keepdim)),
}


# --- functions and methods ------------------------------------------------------------------


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _binary(kind: OpKind) -> Callable[[fx.Node], Converted]:
    def convert(node: fx.Node) -> Converted:
        if node.kwargs.get("alpha", 1) != 1:
            raise _refuse(node, "add with alpha is not modelled", "compute it with a plain add")
        a, b = node.args[0], _arg(node, 1, "other")
        tensors = tuple(x for x in (a, b) if isinstance(x, fx.Node))
        scalars = [x for x in (a, b) if isinstance(x, int | float) and not isinstance(x, bool)]
        if len(tensors) == 2:
            return kind, ScalarAttrs(), tensors
        if len(tensors) == 1 and len(scalars) == 1:
            return kind, ScalarAttrs(scalar=float(scalars[0])), tensors
        raise _refuse(node, f"{kind.value} of {node.args!r} is not tensor-tensor or tensor-number",
                      "mark the enclosing submodule opaque")
    return convert


def _cat(node: fx.Node) -> Converted:
    dim = _arg(node, 1, "dim", 0)
    inputs = tuple(_arg(node, 0, "tensors"))
    rank = len(inputs[0].meta["netopt_shape"])
    if dim not in (1, 1 - rank):
        raise _refuse(node, f"concatenation along dim {dim}",
                      "only channel concatenation (dim=1) is modelled; mark the block opaque")
    return OpKind.CONCAT, NoAttrs(), inputs


def _flatten_fn(node: fx.Node) -> Converted:
    start, end = _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)
    if (start, end) != (1, -1):
        raise _refuse(node, f"flatten(start_dim={start}, end_dim={end})",
                      "only flattening everything after the batch dim (start_dim=1) is modelled")
    return OpKind.FLATTEN, NoAttrs(), (node.args[0],)  # type: ignore[return-value]


def _reshape(node: fx.Node) -> Converted:
    source = node.args[0]
    assert isinstance(source, fx.Node)
    shape_in = tuple(source.meta["netopt_shape"])
    shape_out = tuple(node.meta["netopt_shape"])
    size = 1
    for d in shape_in[1:]:
        size *= d
    if shape_out == (shape_in[0], size):
        return OpKind.FLATTEN, NoAttrs(), (source,)
    if shape_out == shape_in:
        return OpKind.IDENTITY, NoAttrs(), (source,)
    raise _refuse(node, f"reshape from {shape_in} to {shape_out}",
                  "only (N, ...) -> (N, -1) is modelled; mark the enclosing submodule opaque")


def _mean_fn(node: fx.Node) -> Converted:
    dims = _arg(node, 1, "dim")
    keepdim = bool(_arg(node, 2, "keepdim", False))
    dims = tuple(dims) if isinstance(dims, list | tuple) else (dims,)
    rank = len(node.args[0].meta["netopt_shape"])  # type: ignore[union-attr]
    if rank != 4 or sorted(d % 4 for d in dims) != [2, 3]:
        raise _refuse(node, f"mean over dims {dims}", "only the spatial mean (dims 2, 3) is modelled")
    return OpKind.MEAN, MeanAttrs(keepdim=keepdim), (node.args[0],)  # type: ignore[return-value]


def _f_unary(kind: OpKind) -> Callable[[fx.Node], Converted]:
    return lambda node: (kind, NoAttrs(), (node.args[0],))  # type: ignore[return-value]


def _f_gelu(node: fx.Node) -> Converted:
    approximate = str(node.kwargs.get("approximate", "none"))
    return OpKind.GELU, GeluAttrs(approximate=approximate), (node.args[0],)  # type: ignore[return-value]


def _f_adaptive(kind: OpKind) -> Callable[[fx.Node], Converted]:
    def convert(node: fx.Node) -> Converted:
        size = _opt_pair(_arg(node, 1, "output_size"))
        return kind, AdaptivePoolAttrs(output_size=size), (node.args[0],)  # type: ignore[return-value]
    return convert


def _f_pool(kind: OpKind) -> Callable[[fx.Node], Converted]:
    def convert(node: fx.Node) -> Converted:
        k = _pair(_arg(node, 1, "kernel_size"))
        s = _arg(node, 2, "stride") or k
        p = _arg(node, 3, "padding", 0)
        ceil = bool(node.kwargs.get("ceil_mode", False))
        if kind is OpKind.MAXPOOL2D:
            attrs = PoolAttrs(kernel_size=k, stride=_pair(s), padding=_pair(p),
                              dilation=_pair(node.kwargs.get("dilation", 1)), ceil_mode=ceil)
        else:
            attrs = PoolAttrs(kernel_size=k, stride=_pair(s), padding=_pair(p), ceil_mode=ceil,
                              count_include_pad=bool(node.kwargs.get("count_include_pad", True)))
        return kind, attrs, (node.args[0],)  # type: ignore[return-value]
    return convert


def _f_dropout(node: fx.Node) -> Converted:
    return OpKind.DROPOUT, DropoutAttrs(p=float(_arg(node, 1, "p", 0.5))), (node.args[0],)  # type: ignore[return-value]


def _identity(node: fx.Node) -> Converted:
    return OpKind.IDENTITY, NoAttrs(), (node.args[0],)  # type: ignore[return-value]


FUNCTIONS: dict[Any, Callable[[fx.Node], Converted]] = {
    operator.add: _binary(OpKind.ADD),
    operator.iadd: _binary(OpKind.ADD),
    torch.add: _binary(OpKind.ADD),
    operator.mul: _binary(OpKind.MUL),
    operator.imul: _binary(OpKind.MUL),
    torch.mul: _binary(OpKind.MUL),
    torch.cat: _cat,
    torch.concat: _cat,
    torch.flatten: _flatten_fn,
    torch.reshape: _reshape,
    torch.mean: _mean_fn,
    torch.relu: _f_unary(OpKind.RELU),
    F.relu: _f_unary(OpKind.RELU),
    F.relu6: _f_unary(OpKind.RELU6),
    F.hardswish: _f_unary(OpKind.HARDSWISH),
    F.hardsigmoid: _f_unary(OpKind.HARDSIGMOID),
    F.silu: _f_unary(OpKind.SILU),
    torch.sigmoid: _f_unary(OpKind.SIGMOID),
    F.sigmoid: _f_unary(OpKind.SIGMOID),
    F.gelu: _f_gelu,
    F.adaptive_avg_pool2d: _f_adaptive(OpKind.ADAPTIVE_AVGPOOL2D),
    F.adaptive_max_pool2d: _f_adaptive(OpKind.ADAPTIVE_MAXPOOL2D),
    F.max_pool2d: _f_pool(OpKind.MAXPOOL2D),
    F.avg_pool2d: _f_pool(OpKind.AVGPOOL2D),
    F.dropout: _f_dropout,
}

METHODS: dict[str, Callable[[fx.Node], Converted]] = {
    "add": _binary(OpKind.ADD),
    "add_": _binary(OpKind.ADD),
    "mul": _binary(OpKind.MUL),
    "mul_": _binary(OpKind.MUL),
    "relu": _f_unary(OpKind.RELU),
    "relu_": _f_unary(OpKind.RELU),
    "sigmoid": _f_unary(OpKind.SIGMOID),
    "flatten": _flatten_fn,
    "view": _reshape,
    "reshape": _reshape,
    "mean": _mean_fn,
    "contiguous": _identity,
}
