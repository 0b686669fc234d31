"""IR -> torch: a `torch.fx.GraphModule` with one submodule per IR node.

`build` makes fresh (randomly initialized) layers of the network's current widths;
`materialize` (in materialize.py) fills them with the kept filters of a traced model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import fx, nn

from netopt.bridge import modules as M
from netopt.bridge import token_modules as TM
from netopt.bridge.additive_modules import AdditiveAttention
from netopt.bridge.constant import Constant
from netopt.bridge.separable_modules import FoldPatches, SeparableAttention, UnfoldPatches
from netopt.bridge.window_modules import WindowConv2d
from netopt.bridge.xca_modules import CrossCovarianceAttention
from netopt.errors import MaterializeError
from netopt.ir import INPUT, Network, Node, OpKind
from netopt.ir.single_head import head_dims

__all__ = ["build", "make_layer"]

LayerFactory = Callable[[Network, Node], nn.Module]
Device = torch.device | str | None


def _conv(net: Network, node: Node, device: Device = None) -> nn.Module:
    a = node.attrs
    cls, extra = (WindowConv2d, {"window": a.window}) if a.window[0] else (nn.Conv2d, {})
    return cls(
        net.shape(node.inputs[0])[0], net.shape(node.name)[0], a.kernel_size, stride=a.stride,
        padding=a.padding, dilation=a.dilation, groups=net.conv_groups(node.name), bias=a.bias,
        padding_mode=a.padding_mode, device=device, **extra,
    )


def _linear(net: Network, node: Node, device: Device = None) -> nn.Module:
    return nn.Linear(net.shape(node.inputs[0])[0], net.shape(node.name)[0], bias=node.attrs.bias, device=device)


def _conv_transpose(net: Network, node: Node, device: Device = None) -> nn.Module:
    a = node.attrs
    return nn.ConvTranspose2d(
        net.shape(node.inputs[0])[0], net.shape(node.name)[0], a.kernel_size, stride=a.stride, padding=a.padding,
        output_padding=a.output_padding, groups=net.conv_groups(node.name), bias=a.bias, dilation=a.dilation,
        device=device,
    )


SHELLS: dict[OpKind, Callable[[Network, Node, Device], nn.Module]] = {
    OpKind.CONV2D: _conv, OpKind.CONV_TRANSPOSE2D: _conv_transpose, OpKind.LINEAR: _linear,
}
"""Layers whose random initialization is costly: `make_shell` builds them without storage."""


def _batchnorm(net: Network, node: Node) -> nn.Module:
    a = node.attrs
    rank = len(net.shape(node.name))
    cls = nn.BatchNorm2d if rank == 3 else TM.TokenBatchNorm if rank == 2 else nn.BatchNorm1d  # 2: tokens (C, N)
    return cls(net.shape(node.name)[0], eps=a.eps, momentum=a.momentum, affine=a.affine,
               track_running_stats=a.track_running_stats)


def _group_norm(net: Network, node: Node) -> nn.Module:
    """nn.GroupNorm at the current width: G equal blocks stay G; one group a channel follows the width."""
    a, channels = node.attrs, net.shape(node.name)[0]
    per_channel = a.num_groups == net.analysis.channels(net.layout(node.name), {})
    layer = nn.GroupNorm(channels if per_channel else a.num_groups, channels, eps=a.eps, affine=a.affine or a.bias)
    for name, held in (("weight", a.affine), ("bias", a.bias)):
        if not held:
            layer.register_parameter(name, None)
    return layer


def _head_dims(net: Network, node: Node) -> tuple[int, int]:
    """(qk_dim, v_dim) of an attention's heads at the current widths (one head may have lost channels)."""
    return head_dims(node.attrs, net.shape(node.inputs[0])[0], net.shape(node.inputs[2])[0])[1:]


def _attention_bias(net: Network, node: Node) -> tuple[int, int, int, int] | None:
    """(heads, positions, N, M) of an attention node's relative position bias, or None."""
    if not node.attrs.bias_positions:
        return None
    q, k = net.shape(node.inputs[0]), net.shape(node.inputs[1])
    n, m = node.attrs.keys or math.prod(q[1:]), node.attrs.keys or math.prod(k[1:])  # keys: a window's
    return head_dims(node.attrs, q[0], net.shape(node.inputs[2])[0])[0], node.attrs.bias_positions, n, m


def _talking_heads(net: Network, node: Node) -> int:
    """The heads an attention node's talking heads mix at the current widths (0: it has none)."""
    return head_dims(node.attrs, net.shape(node.inputs[0])[0], net.shape(node.inputs[2])[0])[0] \
        if node.attrs.talking else 0


def _xca(net: Network, node: Node) -> nn.Module:
    """Cross-covariance attention with a temperature for each head q's channels hold now."""
    return CrossCovarianceAttention(node.attrs.qk_dim, net.shape(node.inputs[0])[0] // node.attrs.qk_dim)


def _pool(cls: type[nn.Module]) -> LayerFactory:
    def make(net: Network, node: Node) -> nn.Module:
        a = node.attrs
        if cls is nn.MaxPool2d:
            return nn.MaxPool2d(a.kernel_size, a.stride, a.padding, a.dilation, ceil_mode=a.ceil_mode)
        return nn.AvgPool2d(a.kernel_size, a.stride, a.padding, ceil_mode=a.ceil_mode,
                            count_include_pad=a.count_include_pad)
    return make


def _plain(factory: Callable[[], nn.Module]) -> LayerFactory:
    return lambda net, node: factory()


FACTORIES: dict[OpKind, LayerFactory] = {
    OpKind.CONV2D: _conv,
    OpKind.CONV_TRANSPOSE2D: _conv_transpose,
    OpKind.LINEAR: _linear,
    OpKind.BATCHNORM: _batchnorm,
    OpKind.RELU: _plain(nn.ReLU),
    OpKind.RELU6: _plain(nn.ReLU6),
    OpKind.HARDSWISH: _plain(nn.Hardswish),
    OpKind.HARDSIGMOID: _plain(nn.Hardsigmoid),
    OpKind.SILU: _plain(nn.SiLU),
    OpKind.SIGMOID: _plain(nn.Sigmoid),
    OpKind.GELU: lambda net, node: nn.GELU(approximate=node.attrs.approximate),
    OpKind.MAXPOOL2D: _pool(nn.MaxPool2d),
    OpKind.AVGPOOL2D: _pool(nn.AvgPool2d),
    OpKind.ADAPTIVE_AVGPOOL2D: lambda net, node: nn.AdaptiveAvgPool2d(node.attrs.output_size),
    OpKind.ADAPTIVE_MAXPOOL2D: lambda net, node: nn.AdaptiveMaxPool2d(node.attrs.output_size),
    OpKind.MEAN: lambda net, node: M.Mean(node.attrs.keepdim),
    OpKind.ADD: lambda net, node: M.Add(node.attrs.scalar),
    OpKind.MUL: lambda net, node: M.Mul(node.attrs.scalar),
    OpKind.CONCAT: _plain(M.Concat),
    OpKind.FLATTEN: _plain(M.Flatten),
    OpKind.DROPOUT: lambda net, node: nn.Dropout(node.attrs.p),
    OpKind.IDENTITY: _plain(nn.Identity),
    OpKind.LAYERNORM: lambda net, node: M.ChannelNorm(net.shape(node.name)[0], node.attrs.eps, node.attrs.affine,
                                                      node.attrs.bias),
    OpKind.SCALE: lambda net, node: M.ChannelScale(net.shape(node.name)[0]),
    OpKind.DROPPATH: lambda net, node: M.DropPath(node.attrs.p, node.attrs.mode, node.attrs.scale_by_keep),
    OpKind.PAD: lambda net, node: M.Pad(node.attrs.pad, node.attrs.value),
    OpKind.UPSAMPLE: lambda net, node: nn.Upsample(
        size=node.attrs.size, scale_factor=node.attrs.scale_factor, mode=node.attrs.mode,
        align_corners=node.attrs.align_corners),
    OpKind.SLICE: lambda net, node: M.Slice(*net.slice_bounds(node.name)),
    OpKind.LEAKY_RELU: lambda net, node: nn.LeakyReLU(node.attrs.negative_slope),
    OpKind.CHANNEL_SHUFFLE: lambda net, node: M.ChannelShuffle(node.attrs.groups),
    OpKind.ECA: lambda net, node: M.Eca(node.attrs.kernel_size),
    OpKind.TOKENS: _plain(TM.Tokens),
    OpKind.TO_MAP: lambda net, node: TM.ToMap(node.attrs.height, node.attrs.width),
    OpKind.CLASS_TOKEN: lambda net, node: TM.ClassToken(net.shape(node.name)[0], node.attrs.tokens),
    OpKind.POS_EMBED: lambda net, node: TM.PositionEmbedding(net.shape(node.name)[1], net.shape(node.name)[0]),
    OpKind.TOKEN_SELECT: lambda net, node: TM.TokenSelect(node.attrs.start, node.attrs.stop),
    OpKind.ATTENTION: lambda net, node: _xca(net, node) if node.attrs.channels else TM.Attention(
                                                     *_head_dims(net, node), node.attrs.scale,
                                                     _attention_bias(net, node), window=node.attrs.window,
                                                     grid=node.attrs.grid, shift=node.attrs.shift,
                                                     linear=node.attrs.linear, eps=node.attrs.eps,
                                                     patch=node.attrs.patch, talking=_talking_heads(net, node)),
    OpKind.HEAD_SLICE: lambda net, node: TM.HeadSlice(node.attrs.unit, node.attrs.start, node.attrs.stop),
    OpKind.SPACE_TO_DEPTH: lambda net, node: TM.SpaceToDepth(node.attrs.block),
    OpKind.SUB: lambda net, node: M.Sub(node.attrs.scalar, node.attrs.reverse),
    OpKind.DIV: lambda net, node: M.Div(node.attrs.scalar, node.attrs.reverse),
    OpKind.NEG: _plain(M.Neg),
    OpKind.GROUP_NORM: _group_norm,
    OpKind.GRN: lambda net, node: M.Grn(net.shape(node.name)[0], node.attrs.eps),
    OpKind.SCALAR_AFFINE: _plain(M.ScalarAffine),
    OpKind.STAR_RELU: _plain(M.StarRelu),
    OpKind.NORMALIZE: lambda net, node: M.Normalize(node.attrs.eps),
    OpKind.CONSTANT: lambda net, node: Constant(node.attrs.shape),
    OpKind.ADDITIVE_ATTENTION: lambda net, node: AdditiveAttention(net.shape(node.name)[0], node.attrs.scale,
                                                                   node.attrs.eps),
    OpKind.UNFOLD_PATCHES: lambda net, node: UnfoldPatches(node.attrs.patch, node.attrs.grid),
    OpKind.FOLD_PATCHES: lambda net, node: FoldPatches(node.attrs.patch, node.attrs.grid),
    OpKind.SEPARABLE_ATTENTION: _plain(SeparableAttention),
}


def make_shell(net: Network, node: Node) -> nn.Module:
    """A layer of the right shapes whose tensors the caller replaces (meta storage if costly to init)."""
    shell = SHELLS.get(node.op)
    return shell(net, node, "meta") if shell else make_layer(net, node)


def make_layer(net: Network, node: Node, opaque: Mapping[str, nn.Module] | None = None) -> nn.Module:
    """A fresh torch layer for one IR node at the network's current widths."""
    if node.op is OpKind.OPAQUE:
        if opaque is None or node.name not in opaque:
            raise MaterializeError(
                f"node {node.name!r} is an opaque block; building it needs its module: "
                "pass opaque={name: module} (Traced.materialize does this for you)"
            )
        return opaque[node.name]
    return FACTORIES[node.op](net, node)


def build(
    net: Network,
    layers: Mapping[str, nn.Module] | None = None,
    opaque: Mapping[str, nn.Module] | None = None,
) -> fx.GraphModule:
    """A GraphModule computing `net` (without its removed branches: `net.reduced()`);
    `layers` supplies ready modules by node name."""
    _ = net.analysis  # fail early, with the IR's own message, on a broken structure
    net = net.reduced()
    root: dict[str, Any] = {}
    graph = fx.Graph()
    values: dict[str, fx.Node] = {INPUT: graph.placeholder("x")}
    for node in net.nodes:
        layer = layers[node.name] if layers and node.name in layers else make_layer(net, node, opaque)
        root[node.name] = layer
        args = tuple(values[i] for i in node.inputs)
        values[node.name] = graph.call_module(node.name, args)
    outs = tuple(values[o] for o in net.outputs)
    graph.output(outs[0] if len(outs) == 1 else outs)
    return fx.GraphModule(root, graph, class_name="NetoptNetwork")
