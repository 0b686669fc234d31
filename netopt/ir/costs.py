"""Analytic costs computed from the IR alone: MACs, parameters, activation memory.

MACs count CONV and FC layers, as the NetAdapt paper does (a linear layer on tokens once per
token; attention's q k^T and scores x v are not weights' MACs: the energy model and the lookup
tables cost them, and activation memory holds their score matrix; its talking heads are convs,
counted). Parameters equal exactly the number of parameters of the materialized torch module
(BatchNorm affine included, running statistics excluded: they are buffers). Activation memory
is the peak of live tensors when the nodes run one after another in order. A residual branch
removed by a bypass group at width 0 costs nothing: the costs are those of `Network.reduced()`,
what materializes.
"""

from __future__ import annotations

import math

from netopt.ir.groups import INPUT
from netopt.ir.network import Network, Node
from netopt.ir.ops import (
    ALIASING,
    AttentionAttrs,
    BatchNormAttrs,
    Conv2dAttrs,
    ConvTranspose2dAttrs,
    EcaAttrs,
    GrnAttrs,
    GroupNormAttrs,
    LayerNormAttrs,
    LinearAttrs,
    OpaqueAttrs,
    OpKind,
)
from netopt.ir.single_head import head_dims

__all__ = ["macs", "params", "activation_bytes", "layer_macs", "layer_params", "attention_scores", "talking_macs"]


def layer_macs(net: Network, node: Node) -> int:
    """Multiply-accumulates of one node at the network's current widths (0 if not CONV/FC, or removed)."""
    if node.name in net.removed:
        return 0
    if isinstance(node.attrs, Conv2dAttrs):
        c_out, h, w = net.shape(node.name)
        c_in = net.shape(node.inputs[0])[0]
        kh, kw = node.attrs.kernel_size
        return c_out * h * w * (c_in // net.conv_groups(node.name)) * kh * kw
    if isinstance(node.attrs, ConvTranspose2dAttrs):  # every input pixel scatters a kernel per output channel
        c_in, h, w = net.shape(node.inputs[0])
        kh, kw = node.attrs.kernel_size
        return c_in * h * w * (net.shape(node.name)[0] // net.conv_groups(node.name)) * kh * kw
    if isinstance(node.attrs, LinearAttrs):  # once per token on a token tensor
        return net.shape(node.inputs[0])[0] * math.prod(net.shape(node.name))
    if isinstance(node.attrs, OpaqueAttrs):
        return node.attrs.macs
    if isinstance(node.attrs, AttentionAttrs):  # its talking heads: two 1x1 convs across the heads of the scores
        return talking_macs(net, node)
    return 0


def layer_params(net: Network, node: Node) -> int:
    """Trainable parameters of one node at the network's current widths (0 if removed)."""
    if node.name in net.removed:
        return 0
    attrs = node.attrs
    if isinstance(attrs, Conv2dAttrs | ConvTranspose2dAttrs):
        c_out = net.shape(node.name)[0]
        c_in = net.shape(node.inputs[0])[0]
        kh, kw = attrs.kernel_size
        return c_out * (c_in // net.conv_groups(node.name)) * kh * kw + (c_out if attrs.bias else 0)
    if isinstance(attrs, LinearAttrs):
        c_out = net.shape(node.name)[0]
        return c_out * net.shape(node.inputs[0])[0] + (c_out if attrs.bias else 0)
    if isinstance(attrs, LayerNormAttrs):  # a weight, and a bias unless it has none (LayerNorm2dNoBias)
        return net.shape(node.name)[0] * (1 + int(attrs.bias)) if attrs.affine else 0
    if isinstance(attrs, BatchNormAttrs):
        return 2 * net.shape(node.name)[0] if attrs.affine else 0
    if isinstance(attrs, GroupNormAttrs):
        return net.shape(node.name)[0] * (int(attrs.affine) + int(attrs.bias))
    if isinstance(attrs, GrnAttrs):  # a weight and a bias per channel
        return 2 * net.shape(node.name)[0]
    if node.op in (OpKind.SCALAR_AFFINE, OpKind.STAR_RELU):  # one scale and one bias, whatever the width
        return 2
    if node.op in (OpKind.SCALE, OpKind.ADDITIVE_ATTENTION):  # a weight per channel (additive attention's w)
        return net.shape(node.name)[0]
    if node.op is OpKind.CLASS_TOKEN:  # (1, k, C)
        return node.attrs.tokens * net.shape(node.name)[0]
    if node.op is OpKind.POS_EMBED:  # (1, N, C)
        return math.prod(net.shape(node.name))
    if isinstance(attrs, AttentionAttrs):  # a relative position bias (heads, R), if any, and talking heads
        heads = head_dims(attrs, net.shape(node.inputs[0])[0], net.shape(node.inputs[2])[0])[0]  # or one, shrunk
        return heads * attrs.bias_positions + (2 * heads * (heads + 1) if attrs.talking else 0) \
            + (heads if attrs.channels else 0)  # cross-covariance attention's temperature, one a head
    if isinstance(attrs, EcaAttrs):
        return attrs.kernel_size
    if isinstance(attrs, OpaqueAttrs):
        return attrs.params
    return 0


def macs(net: Network) -> int:
    """Total multiply-accumulates of CONV and FC layers for one input (batch 1)."""
    net = net.reduced()
    return sum(layer_macs(net, n) for n in net.nodes)


def params(net: Network) -> int:
    """Total trainable parameters, as `sum(p.numel() for p in module.parameters())`."""
    net = net.reduced()
    return sum(layer_params(net, n) for n in net.nodes)


def activation_bytes(net: Network, bytes_per_element: int = 4) -> int:
    """Peak bytes of live activations (batch 1) running the nodes in order.

    A tensor lives from the node that makes it until its last reader has run (network
    outputs until the end). Identity, dropout and flatten are views of their input. While a
    node runs, its inputs and its output are live together.
    """
    net = net.reduced()
    last_use = _last_uses(net)
    owner = _storage_owners(net)
    size = {name: math.prod(shape) * bytes_per_element for name, shape in net.shapes.items()}
    live: set[str] = {INPUT}
    peak = size[INPUT]
    for i, node in enumerate(net.nodes):
        live.add(owner[node.name])
        peak = max(peak, sum(size[t] for t in live) + attention_scores(net, node) * bytes_per_element)
        live = {t for t in live if last_use.get(t, -1) > i}
    return peak


def attention_scores(net: Network, node: Node) -> int:
    """Elements of the score matrix an attention node holds while it runs (heads x N x M), else 0."""
    if node.op is OpKind.ADDITIVE_ATTENTION:  # q w and its weights over the tokens (N each), their product with q
        d, n = net.shape(node.inputs[0])
        return n * (d + 2)
    if not isinstance(node.attrs, AttentionAttrs):
        return 0
    q, k = net.shape(node.inputs[0]), net.shape(node.inputs[1])  # tokens (C, N) or maps (C, H, W)
    if node.attrs.linear:  # linear attention holds k^T [v, 1] per head: qk_dim x (v_dim + 1)
        return q[0] // node.attrs.qk_dim * node.attrs.qk_dim * (node.attrs.v_dim + 1)
    if node.attrs.channels:  # cross-covariance attention: a (qk_dim x qk_dim) map per head
        return q[0] * node.attrs.qk_dim
    heads = head_dims(node.attrs, q[0], net.shape(node.inputs[2])[0])[0]  # or one head that lost channels
    return heads * math.prod(q[1:]) * (node.attrs.keys or math.prod(k[1:]))  # keys: a window's


def talking_macs(net: Network, node: Node) -> int:
    """MACs of an attention node's talking heads: two (heads, heads) 1x1 convs over its scores, else 0."""
    if not isinstance(node.attrs, AttentionAttrs) or not node.attrs.talking:
        return 0
    heads = head_dims(node.attrs, net.shape(node.inputs[0])[0], net.shape(node.inputs[2])[0])[0]
    return 2 * heads * attention_scores(net, node)


def _storage_owners(net: Network) -> dict[str, str]:
    """The node whose tensor holds each node's output (itself, unless it is a view)."""
    owner = {INPUT: INPUT}
    for node in net.nodes:
        owner[node.name] = owner[node.inputs[0]] if node.op in ALIASING else node.name
    return owner


def _last_uses(net: Network) -> dict[str, int]:
    """Index of the last node that reads each storage (outputs: past the end)."""
    owner = _storage_owners(net)
    last: dict[str, int] = {}
    for i, node in enumerate(net.nodes):
        for name in node.inputs:
            last[owner[name]] = i
        last.setdefault(owner[node.name], i)
    for out in net.outputs:
        last[owner[out]] = len(net.nodes)
    return last


