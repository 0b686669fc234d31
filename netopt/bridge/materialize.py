"""materialize: the IR's smaller network as a torch module with the kept filters' weights.

For every group the selector picks the channels to keep; every layer then takes the rows
(output channels) and columns (input channels) its layouts say it owns, so coupled layers,
depthwise convs, concat offsets and flattened features all stay aligned.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
from torch import Tensor, fx, nn

from netopt.bridge.build import build, make_shell
from netopt.bridge.constant import constant_value
from netopt.bridge.select import FilterSelector, GroupWeights, L2Magnitude, top_channels
from netopt.bridge.talking import keep_talking_heads
from netopt.bridge.token_modules import position_bias
from netopt.bridge.xca_modules import keep_temperatures
from netopt.errors import MaterializeError
from netopt.ir import Layout, Network, Node, OpKind


class TracedLike(Protocol):
    """What materializing reads of a traced model (`netopt.bridge.Traced` is one)."""

    @property
    def network(self) -> Network: ...
    @property
    def module(self) -> nn.Module: ...
    @property
    def binding(self) -> Mapping[str, str]: ...
    @property
    def opaque(self) -> Mapping[str, nn.Module]: ...

__all__ = ["materialize", "kept_channels", "expand"]


def expand(net: Network, layout: Layout, kept: Mapping[str, Tensor]) -> Tensor:
    """Original channel indices of a tensor with `layout` that survive, in order."""
    pieces, offset = [], 0
    for seg in layout:
        full = net.analysis.info[seg.group].full_width
        groups = kept.get(seg.group, torch.arange(full))
        inner = torch.arange(seg.inner)
        pieces.append((offset + groups[:, None] * seg.inner + inner[None, :]).flatten())
        offset += full * seg.inner
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)


def group_weights(traced: TracedLike, gid: str, batchnorms: Mapping[str, list[str]] | None = None) -> GroupWeights:
    """The filters that make group `gid`'s channels and the BN gammas applied to them."""
    info = traced.network.analysis.info[gid]
    filters = tuple(_group_rows(traced.network, layout, gid, info.unit, _filters(_module(traced, p)))
                    for p in info.producers if (layout := traced.network.layout(p)))  # each its own head size
    bns = (batchnorms if batchnorms is not None else _batchnorms(traced.network)).get(gid, ())
    gammas = tuple(w for bn in bns if (w := _module(traced, bn).weight) is not None)
    return GroupWeights(filters, gammas)


def _filters(layer: Any) -> Tensor:
    """The layer's weight with one row per output channel (a transposed conv stores it per input)."""
    w = layer.weight
    if not isinstance(layer, nn.ConvTranspose2d):
        return w  # type: ignore[no-any-return]
    g = layer.groups
    c_in, out_per = w.shape[:2]
    blocks = w.reshape(g, c_in // g, out_per, *w.shape[2:]).transpose(1, 2)
    return blocks.reshape(g * out_per, c_in // g, *w.shape[2:])


def _group_rows(net: Network, layout: Layout, gid: str, unit: int, w: Tensor) -> Tensor:
    """A producer's filters for group `gid`, one row per group channel: a producer cut into pieces
    of several groups (netopt.ir.pieces) gives the rows of `gid`'s pieces side by side."""
    if len({s.group for s in layout}) == 1:
        return _per_head(len(layout), layout[0].inner if unit > 1 else 1, w)
    rows, offset = [], 0
    for seg in layout:
        size = net.analysis.info[seg.group].full_width * seg.inner
        if seg.group == gid:
            rows.append(w[offset:offset + size].reshape(size // seg.inner, -1))
        offset += size
    return torch.cat(rows, dim=1)


def _per_head(parts: int, unit: int, w: Tensor) -> Tensor:
    """A heads producer's filters one row per head: its rows in every part (q, k, v) side by side."""
    if unit == 1:
        return w
    rows = w.reshape(parts, -1, unit * w[0].numel())
    return rows.transpose(0, 1).reshape(rows.shape[1], -1)


def _batchnorms(net: Network) -> dict[str, list[str]]:
    """BatchNorm nodes by the one group whose channels they normalize."""
    by_group: dict[str, list[str]] = {}
    for node in net.nodes:
        layout = net.layout(node.name)
        if node.op is OpKind.BATCHNORM and len(layout) == 1 and layout[0].inner == 1:
            by_group.setdefault(layout[0].group, []).append(node.name)
    return by_group


def kept_channels(traced: TracedLike, network: Network, selector: FilterSelector | None = None) -> dict[str, Tensor]:
    """For each group narrower than full width, the original indices of its kept channels."""
    selector = selector or L2Magnitude()
    kept = {}
    batchnorms = _batchnorms(traced.network)
    for group in network.groups:
        if group.width in (group.full_width, 0):  # at 0 its branch is removed: nothing to keep
            continue
        scores = selector.scores(group_weights(traced, group.id, batchnorms))
        if scores.shape != (group.full_width,):
            raise MaterializeError(
                f"{type(selector).__name__} returned {tuple(scores.shape)} scores for group "
                f"{group.id!r}; it must return one score per channel ({group.full_width})"
            )
        kept[group.id] = top_channels(scores, group.width, group.blocks)
    return kept


def materialize(traced: TracedLike, network: Network, selector: FilterSelector | None = None) -> fx.GraphModule:
    """Build `network` as torch layers holding the kept slices of the traced weights."""
    if network.nodes != traced.network.nodes or network.input_shape != traced.network.input_shape:
        raise MaterializeError(
            "this network does not come from the traced model (its structure differs); derive it "
            "with traced.network.with_widths(...)"
        )
    return materialize_channels(traced, network, kept_channels(traced, network, selector))


def materialize_channels(traced: TracedLike, network: Network, kept: Mapping[str, Tensor]) -> fx.GraphModule:
    """`materialize` with the channels of each group given: `kept[g]` are the original indices
    of group g's channels, in the order they take (a permutation at full width reorders them)."""
    cache: dict[Layout, Tensor] = {}

    def indices(layout: Layout) -> Tensor:
        if layout not in cache:
            cache[layout] = expand(network, layout, kept)
        return cache[layout]

    layers: dict[str, nn.Module] = {}
    removed = network.removed  # a bypassed residual branch: its layers are not built
    with torch.no_grad():
        for node in network.nodes:
            if node.name in traced.binding and node.op is not OpKind.OPAQUE and node.name not in removed:
                layers[node.name] = _sliced(_source(traced, node), network, node, indices)
    # copies: fine-tuning one materialized network must not touch the traced model or another
    module = build(network, layers, opaque={k: copy.deepcopy(v) for k, v in traced.opaque.items()})
    return module.train(traced.module.training)


def _module(traced: TracedLike, name: str) -> Any:
    """The traced submodule bound to IR node `name` (a layer with weight/bias attributes)."""
    return traced.module.get_submodule(traced.binding[name])


def _source(traced: TracedLike, node: Node) -> Any:
    """What holds the node's weights: its module, or (SCALE) a module with the one parameter."""
    path = traced.binding[node.name]
    parent, _, attr = path.rpartition(".")
    held = getattr(traced.module.get_submodule(parent), attr)
    return _Holder(held) if isinstance(held, torch.Tensor) else held


class _Holder:
    """A per-channel parameter of any shape, seen as a (C,) `weight`."""

    def __init__(self, p: Tensor) -> None:
        self.weight = p


_PER_CHANNEL = {
    OpKind.BATCHNORM: ("weight", "bias", "running_mean", "running_var"),
    OpKind.LAYERNORM: ("weight", "bias"),
    OpKind.SCALE: ("weight",),
    OpKind.GROUP_NORM: ("weight", "bias"),
    OpKind.GRN: ("weight", "bias"),
    OpKind.ADDITIVE_ATTENTION: ("weight",),  # SwiftFormer's (D, 1) w_g, one value per channel of q and k
}


def _sliced(src: Any, net: Network, node: Node, indices: Callable[[Layout], Tensor]) -> nn.Module:
    """A layer of the new widths holding copies of the kept slices of `src` (no wasted init)."""
    layer: Any = make_shell(net, node)  # every tensor is replaced below
    out_idx = indices(net.layout(node.name))
    names = _PER_CHANNEL.get(node.op)
    if node.op is OpKind.ECA:  # one filter across the channels: the same whatever the width
        layer.conv.weight = nn.Parameter(src.conv.weight.detach().clone(), src.conv.weight.requires_grad)
        return layer  # type: ignore[no-any-return]
    if node.op in (OpKind.SCALAR_AFFINE, OpKind.STAR_RELU):  # one scale and one bias, whatever the width
        layer.scale, layer.bias = (nn.Parameter(p.detach().clone(), p.requires_grad) for p in (src.scale, src.bias))
        return layer  # type: ignore[no-any-return]
    if node.op is OpKind.CONSTANT:  # fixed values whatever the widths: a buffer
        layer.value = constant_value(src)
        return layer  # type: ignore[no-any-return]
    if node.op is OpKind.ATTENTION and node.attrs.channels:  # cross-covariance: the kept heads' temperatures
        keep_temperatures(layer, src, out_idx[::node.attrs.v_dim] // node.attrs.v_dim)
        return layer  # type: ignore[no-any-return]
    if node.op is OpKind.ATTENTION and not node.attrs.bias_positions and not node.attrs.talking:
        return layer  # type: ignore[no-any-return]  # bound for its shifted-window mask only
    if node.op is OpKind.ATTENTION:  # a relative position bias: the rows of the kept heads
        heads = out_idx[::node.attrs.v_dim] // node.attrs.v_dim + node.attrs.bias_row  # cascade: a node a head
        if node.attrs.talking:  # and the rows and columns of the kept heads in both talking-head convs
            keep_talking_heads(layer, src, heads)
        if not node.attrs.bias_positions:
            return layer  # type: ignore[no-any-return]
        table, idxs = position_bias(src)  # LeViT's (heads, R) or Swin's (R, heads) table
        layer.attention_biases = nn.Parameter(table.detach().index_select(0, heads).contiguous(), table.requires_grad)
        layer.attention_bias_idxs = idxs.reshape(layer.attention_bias_idxs.shape).clone()
        return layer  # type: ignore[no-any-return]
    if node.op in (OpKind.CLASS_TOKEN, OpKind.POS_EMBED):  # (1, k or N, C): the channels are the last dim
        layer.weight = nn.Parameter(src.weight.detach().index_select(-1, out_idx), src.weight.requires_grad)
        return layer  # type: ignore[no-any-return]
    if names is not None:
        tensors = {n: getattr(src, n).reshape(-1).index_select(0, out_idx)
                   for n in names if getattr(src, n, None) is not None}
        if getattr(src, "num_batches_tracked", None) is not None:
            tensors["num_batches_tracked"] = src.num_batches_tracked.clone()
    else:
        in_idx = indices(net.layout(node.inputs[0]))
        if node.op is OpKind.CONV_TRANSPOSE2D:  # (in, out/groups, kh, kw): the rows are input channels
            weight = _slice_transposed(src.weight, out_idx, in_idx, src.groups)
        else:
            weight = _slice_weight(src.weight, out_idx, in_idx, getattr(src, "groups", 1))
        tensors = {"weight": weight if weight.dim() == 4 or node.op is not OpKind.CONV2D else weight[:, :, None, None]}
        if getattr(src, "bias", None) is not None:
            tensors["bias"] = src.bias.index_select(0, out_idx)
    for name, value in tensors.items():
        is_param = isinstance(getattr(src, name), nn.Parameter)
        setattr(layer, name, nn.Parameter(value, getattr(src, name).requires_grad) if is_param else value)
    return layer


def _slice_weight(w: Tensor, out_idx: Tensor, in_idx: Tensor, groups: int) -> Tensor:
    """Rows `out_idx` and (original) input channels `in_idx` of a conv or linear weight."""
    rows = w.index_select(0, out_idx)
    if groups == 1:
        return rows.index_select(1, in_idx)
    full_in = w.shape[1] * groups
    if groups == full_in:  # depthwise: each filter sees one input channel
        return rows
    in_per, out_per = full_in // groups, w.shape[0] // groups
    kept_rows = []
    for row, o in zip(rows, out_idx.tolist(), strict=True):
        block = o // out_per
        kept_rows.append(row.index_select(0, in_idx[(in_idx // in_per) == block] - block * in_per))
    return torch.stack(kept_rows)


def _slice_transposed(w: Tensor, out_idx: Tensor, in_idx: Tensor, groups: int) -> Tensor:
    """The kept slices of a ConvTranspose2d weight, stored (in, out/groups, kh, kw): rows are input
    channels, and each block's columns are its output channels."""
    rows = w.index_select(0, in_idx)
    if groups == 1:
        return rows.index_select(1, out_idx)
    in_per, out_per = w.shape[0] // groups, w.shape[1]
    kept = []
    for row, i in zip(rows, in_idx.tolist(), strict=True):
        block = i // in_per
        kept.append(row.index_select(0, out_idx[(out_idx // out_per) == block] - block * out_per))
    return torch.stack(kept)
