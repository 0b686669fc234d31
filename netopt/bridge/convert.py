"""Tables that turn torch.fx nodes into IR ops: one converter per module type or function.

A converter gets the fx node and what it calls, and returns (OpKind, attrs, tensor inputs).
Unknown callables are refused by the caller with a message that names the node.

Modules are recognized by what they are: a torch.nn type in `MODULES` (exactly that type)
is a leaf; so is a class of another library named in `FOREIGN` (or a subclass of one), so
netopt never imports timm or torchvision. Any other module is traced into, so a subclass
that adds to `forward` (timm's `BatchNormAct2d`, `Conv2dSame`, `LayerNorm2d`) shows what it
does: `F.batch_norm`, `F.pad` + `F.conv2d`, permutes around `F.layer_norm`. Functional ops
whose parameters are read from a module (`get_attr`) are bound to that module, and a
parameter multiplied per channel (layer scale) becomes a SCALE bound to the parameter.

Channels-last regions (ConvNeXt: `permute(0, 2, 3, 1)`, LayerNorm and Linear over the last
dim, `permute(0, 3, 1, 2)`) are converted to what they compute in NCHW: the permutes become
identities, the LayerNorm a channel norm and each Linear a 1x1 convolution.

The tables are spread by concept: fxmeta.py (meta keys, argument reading), convert_modules.py
(module converters, `MODULES`, `FOREIGN`), convert_arith.py (arithmetic, sums, casts),
convert_layout.py (flatten, reshape, permutes, slices, shuffles); this module holds the
functional converters and the `FUNCTIONS` and `METHODS` tables, and re-exports the rest.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from netopt.bridge.convert_arith import (
    SUMMED,
    binary_op,
    cast_op,
    concat,
    operand_op,
    stacked_sum,
    sum_stage,
)
from netopt.bridge.convert_layout import (
    SHUFFLE,
    flatten_fn,
    getitem_op,
    permute_op,
    pieces,
    reshape_op,
    shuffle_stage,
)
from netopt.bridge.convert_modules import (
    FOREIGN,
    MODULES,
    grouped_norm,
    leaf_converter,
    norm_over_channels,
    padding_op,
    resize,
)
from netopt.bridge.fxmeta import (
    CHANNELS_LAST,
    DTYPE,
    PIECES,
    SHAPE,
    SHAPES,
    Converted,
    arg_at,
    channels_last,
    opt_pair,
    pair,
    param_path,
    refuse,
)
from netopt.ir.ops import (
    AdaptivePoolAttrs,
    BatchNormAttrs,
    Conv2dAttrs,
    DropoutAttrs,
    DropPathAttrs,
    GeluAttrs,
    LeakyReluAttrs,
    LinearAttrs,
    MeanAttrs,
    NoAttrs,
    NormalizeAttrs,
    OpKind,
    PoolAttrs,
)

__all__ = ["MODULES", "FOREIGN", "FUNCTIONS", "METHODS", "Converted", "leaf_converter", "param_path", "pieces",
           "function_converter", "shuffle_stage", "SHUFFLE", "sum_stage", "SUMMED",
           "CHANNELS_LAST", "PIECES", "SHAPES", "DTYPE"]


def _mean_fn(node: fx.Node) -> Converted:
    dims = arg_at(node, 1, "dim")
    keepdim = bool(arg_at(node, 2, "keepdim", False))
    dims = tuple(dims) if isinstance(dims, list | tuple) else (dims,)
    rank = len(node.args[0].meta[SHAPE])  # type: ignore[union-attr]
    last = channels_last(node.args[0])
    if rank != 4 or sorted(d % 4 for d in dims) != ([1, 2] if last else [2, 3]):
        raise refuse(node, f"mean over dims {dims}",
                     "only the spatial mean (dims 2, 3; 1, 2 channels-last) is modelled")
    if last:  # MambaOut's head: the pooled (N, C) is a vector; with keepdim (N, 1, 1, C) stays channels-last
        node.meta[CHANNELS_LAST] = keepdim
    return OpKind.MEAN, MeanAttrs(keepdim=keepdim), (node.args[0],)  # type: ignore[return-value]


def _f_unary(kind: OpKind) -> Callable[[fx.Node], Converted]:
    return lambda node: (kind, NoAttrs(), (node.args[0],))  # type: ignore[return-value]


def _f_gelu(node: fx.Node) -> Converted:
    approximate = str(node.kwargs.get("approximate", "none"))
    return OpKind.GELU, GeluAttrs(approximate=approximate), (node.args[0],)  # type: ignore[return-value]


def _f_adaptive(kind: OpKind) -> Callable[[fx.Node], Converted]:
    def convert(node: fx.Node) -> Converted:
        size = opt_pair(arg_at(node, 1, "output_size"))
        return kind, AdaptivePoolAttrs(output_size=size), (node.args[0],)  # type: ignore[return-value]
    return convert


def _f_pool(kind: OpKind) -> Callable[[fx.Node], Converted]:
    def convert(node: fx.Node) -> Converted:
        k = pair(arg_at(node, 1, "kernel_size"))
        s = arg_at(node, 2, "stride") or k
        p = arg_at(node, 3, "padding", 0)
        ceil = bool(node.kwargs.get("ceil_mode", False))
        if kind is OpKind.MAXPOOL2D:
            attrs = PoolAttrs(kernel_size=k, stride=pair(s), padding=pair(p),
                              dilation=pair(node.kwargs.get("dilation", 1)), ceil_mode=ceil)
        else:
            attrs = PoolAttrs(kernel_size=k, stride=pair(s), padding=pair(p), ceil_mode=ceil,
                              count_include_pad=bool(node.kwargs.get("count_include_pad", True)))
        return kind, attrs, (node.args[0],)  # type: ignore[return-value]
    return convert


def _f_dropout(node: fx.Node) -> Converted:
    return OpKind.DROPOUT, DropoutAttrs(p=float(arg_at(node, 1, "p", 0.5))), (node.args[0],)  # type: ignore[return-value]


def _identity(node: fx.Node) -> Converted:
    return OpKind.IDENTITY, NoAttrs(), (node.args[0],)  # type: ignore[return-value]


def _owned(node: fx.Node, args: dict[str, Any], kind: str) -> None:
    """Refuse a functional op unless its parameters are the standard attributes of one module."""
    owners = set()
    for attr, arg in args.items():
        if arg is None:
            continue
        path = str(arg.target) if isinstance(arg, fx.Node) and arg.op == "get_attr" else ""
        if path.rpartition(".")[2] != attr:
            raise refuse(node, f"{kind} with {attr} computed in forward ({getattr(arg, 'name', arg)!r})",
                         "netopt prunes weights a module holds as its own attributes")
        owners.add(path.rpartition(".")[0])
    if len(owners) != 1:
        raise refuse(node, f"{kind} whose parameters come from {sorted(owners) or 'no module'}",
                     "netopt binds a functional op to the one module that holds its weights")


def _f_batch_norm(node: fx.Node) -> Converted:
    params = {a: arg_at(node, i, a) for i, a in enumerate(("running_mean", "running_var", "weight", "bias"), 1)}
    _owned(node, params, "batch_norm")
    x = node.args[0]
    attrs = BatchNormAttrs(eps=float(arg_at(node, 7, "eps", 1e-5)), momentum=arg_at(node, 6, "momentum", 0.1),
                           affine=params["weight"] is not None, track_running_stats=params["running_mean"] is not None)
    return OpKind.BATCHNORM, attrs, (x,)  # type: ignore[return-value]


def _f_conv2d(node: fx.Node) -> Converted:
    weight, bias = arg_at(node, 1, "weight"), arg_at(node, 2, "bias")
    _owned(node, {"weight": weight, "bias": bias}, "conv2d")
    w_shape = weight.meta[SHAPE]
    padding = arg_at(node, 4, "padding", 0)
    if isinstance(padding, str):
        if padding != "valid" or any(k != 1 for k in w_shape[2:]):
            raise refuse(node, f"conv2d with padding={padding!r}", "use explicit padding")
        padding = 0
    groups = int(arg_at(node, 6, "groups", 1))
    attrs = Conv2dAttrs(
        out_channels=int(w_shape[0]), kernel_size=pair(tuple(w_shape[2:])), stride=pair(arg_at(node, 3, "stride", 1)),
        padding=pair(padding), dilation=pair(arg_at(node, 5, "dilation", 1)), groups=groups, bias=bias is not None,
    )
    return OpKind.CONV2D, attrs, (node.args[0],)  # type: ignore[return-value]


def _f_linear(node: fx.Node) -> Converted:
    weight, bias = arg_at(node, 1, "weight"), arg_at(node, 2, "bias")
    _owned(node, {"weight": weight, "bias": bias}, "linear")
    out = int(weight.meta[SHAPE][0])
    if channels_last(node.args[0]) and len(node.args[0].meta[SHAPE]) == 4:  # type: ignore[union-attr]
        return OpKind.CONV2D, Conv2dAttrs(out_channels=out, kernel_size=(1, 1), bias=bias is not None), (node.args[0],)  # type: ignore[return-value]
    return OpKind.LINEAR, LinearAttrs(out_features=out, bias=bias is not None), (node.args[0],)  # type: ignore[return-value]


def _f_leaky_relu(node: fx.Node) -> Converted:
    attrs = LeakyReluAttrs(negative_slope=float(arg_at(node, 1, "negative_slope", 0.01)))
    return OpKind.LEAKY_RELU, attrs, (node.args[0],)  # type: ignore[return-value]


def _f_layer_norm(node: fx.Node) -> Converted:
    weight, bias = arg_at(node, 2, "weight"), arg_at(node, 3, "bias")
    _owned(node, {"weight": weight, "bias": bias}, "layer_norm")
    normalized = tuple(arg_at(node, 1, "normalized_shape"))
    return norm_over_channels(node, node.args[0], normalized, float(arg_at(node, 4, "eps", 1e-5)),  # type: ignore[arg-type]
                              weight is not None, bias is not None)


def _f_normalize(node: fx.Node) -> Converted:
    """`F.normalize(x, p=2, dim=channels)`: an L2 norm across the channels, as the IR models it."""
    x, p, dim = node.args[0], arg_at(node, 1, "p", 2.0), arg_at(node, 2, "dim", 1)
    rank = len(x.meta[SHAPE])  # type: ignore[union-attr]
    channel = rank - 1 if channels_last(x) or rank == 2 else 1
    if p != 2 or dim % rank != channel:
        raise refuse(node, f"normalize with p={p}, dim={dim} of a tensor of shape {tuple(x.meta[SHAPE])}",  # type: ignore[union-attr]
                     "only the L2 norm across the channels is modelled")
    return OpKind.NORMALIZE, NormalizeAttrs(eps=float(arg_at(node, 3, "eps", 1e-12))), (x,)  # type: ignore[return-value]


def _f_group_norm(node: fx.Node) -> Converted:
    weight, bias = arg_at(node, 2, "weight"), arg_at(node, 3, "bias")
    _owned(node, {"weight": weight, "bias": bias}, "group_norm")
    return grouped_norm(node, node.args[0], int(arg_at(node, 1, "num_groups")),  # type: ignore[arg-type]
                        float(arg_at(node, 4, "eps", 1e-5)), (weight is not None, bias is not None))


def _f_pad(node: fx.Node) -> Converted:
    return padding_op(node, node.args[0], tuple(arg_at(node, 1, "pad")), str(arg_at(node, 2, "mode", "constant")),  # type: ignore[arg-type]
                      arg_at(node, 3, "value", None))


def _f_interpolate(node: fx.Node) -> Converted:
    if arg_at(node, 6, "antialias", False):
        raise refuse(node, "interpolate(antialias=True)", "")
    return resize(node, node.args[0], arg_at(node, 1, "size"), arg_at(node, 2, "scale_factor"),  # type: ignore[arg-type]
                  str(arg_at(node, 3, "mode", "nearest")), arg_at(node, 4, "align_corners"),
                  bool(arg_at(node, 5, "recompute_scale_factor")))


def _f_stochastic_depth(node: fx.Node) -> Converted:
    attrs = DropPathAttrs(p=float(arg_at(node, 1, "p", 0.0)), mode=str(arg_at(node, 2, "mode", "row")))
    return OpKind.DROPPATH, attrs, (node.args[0],)  # type: ignore[return-value]


FOREIGN_FUNCTIONS: dict[str, Callable[[fx.Node], Converted]] = {
    "torchvision.ops.stochastic_depth.stochastic_depth": _f_stochastic_depth,
}
"""Functions of other libraries that fx keeps whole (`torch.fx.wrap`), by qualified name."""


def function_converter(target: Any) -> Callable[[fx.Node], Converted] | None:
    found = FUNCTIONS.get(target) if _hashable(target) else None
    if found is None:
        found = FOREIGN_FUNCTIONS.get(f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', '')}")
    return found


def _hashable(x: Any) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


FUNCTIONS: dict[Any, Callable[[fx.Node], Converted]] = {
    operator.add: binary_op(OpKind.ADD),
    operator.iadd: binary_op(OpKind.ADD),
    torch.add: binary_op(OpKind.ADD),
    operator.mul: binary_op(OpKind.MUL),
    operator.imul: binary_op(OpKind.MUL),
    torch.mul: binary_op(OpKind.MUL),
    torch.cat: concat,
    torch.concat: concat,
    torch.flatten: flatten_fn,
    torch.reshape: reshape_op,
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
    F.batch_norm: _f_batch_norm,
    F.conv2d: _f_conv2d,
    F.linear: _f_linear,
    F.leaky_relu: _f_leaky_relu,
    F.layer_norm: _f_layer_norm,
    F.pad: _f_pad,
    F.interpolate: _f_interpolate,
    torch.permute: permute_op,
    operator.getitem: getitem_op,
    operator.sub: operand_op(OpKind.SUB),
    operator.isub: operand_op(OpKind.SUB),
    torch.sub: operand_op(OpKind.SUB),
    torch.subtract: operand_op(OpKind.SUB),
    torch.rsub: operand_op(OpKind.SUB, swap=True),
    operator.truediv: operand_op(OpKind.DIV),
    operator.itruediv: operand_op(OpKind.DIV),
    torch.div: operand_op(OpKind.DIV),
    torch.true_divide: operand_op(OpKind.DIV),
    operator.neg: _f_unary(OpKind.NEG),
    torch.neg: _f_unary(OpKind.NEG),
    F.group_norm: _f_group_norm,
    F.normalize: _f_normalize,
    torch.sum: stacked_sum,
}

METHODS: dict[str, Callable[[fx.Node], Converted]] = {
    "sum": stacked_sum,
    "add": binary_op(OpKind.ADD),
    "add_": binary_op(OpKind.ADD),
    "mul": binary_op(OpKind.MUL),
    "mul_": binary_op(OpKind.MUL),
    "relu": _f_unary(OpKind.RELU),
    "relu_": _f_unary(OpKind.RELU),
    "sigmoid": _f_unary(OpKind.SIGMOID),
    "flatten": flatten_fn,
    "view": reshape_op,
    "reshape": reshape_op,
    "mean": _mean_fn,
    "contiguous": _identity,
    "permute": permute_op,
    "sigmoid_": _f_unary(OpKind.SIGMOID),
    "sub": operand_op(OpKind.SUB),
    "sub_": operand_op(OpKind.SUB),
    "div": operand_op(OpKind.DIV),
    "div_": operand_op(OpKind.DIV),
    "neg": _f_unary(OpKind.NEG),
    "to": cast_op,
    "float": cast_op,
    "type_as": cast_op,
}
