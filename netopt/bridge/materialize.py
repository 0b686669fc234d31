"""materialize: the IR's smaller network as a torch module with the kept filters' weights.

For every group the selector picks the channels to keep; every layer then takes the rows
(output channels) and columns (input channels) its layouts say it owns, so coupled layers,
depthwise convs, concat offsets and flattened features all stay aligned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, fx, nn

from netopt.bridge.build import build, make_layer
from netopt.bridge.select import FilterSelector, GroupWeights, L2Magnitude, top_channels
from netopt.errors import MaterializeError
from netopt.ir import Layout, Network, Node, OpKind, Segment

if TYPE_CHECKING:
    from netopt.bridge.trace import Traced

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


def group_weights(traced: Traced, gid: str) -> GroupWeights:
    """The filters that make group `gid`'s channels and the BN gammas applied to them."""
    net = traced.network
    info = net.analysis.info[gid]
    filters = tuple(_module(traced, p).weight for p in info.producers)
    own = (Segment(gid),)
    gammas = tuple(
        bn.weight for n in net.nodes
        if n.op is OpKind.BATCHNORM and net.layout(n.name) == own
        and (bn := _module(traced, n.name)).weight is not None
    )
    return GroupWeights(filters, gammas)


def kept_channels(traced: Traced, network: Network, selector: FilterSelector | None = None) -> dict[str, Tensor]:
    """For each group narrower than full width, the original indices of its kept channels."""
    selector = selector or L2Magnitude()
    kept = {}
    for group in network.groups:
        if group.width == group.full_width:
            continue
        scores = selector.scores(group_weights(traced, group.id))
        if scores.shape != (group.full_width,):
            raise MaterializeError(
                f"{type(selector).__name__} returned {tuple(scores.shape)} scores for group "
                f"{group.id!r}; it must return one score per channel ({group.full_width})"
            )
        kept[group.id] = top_channels(scores, group.width, group.blocks)
    return kept


def materialize(traced: Traced, network: Network, selector: FilterSelector | None = None) -> fx.GraphModule:
    """Build `network` as torch layers holding the kept slices of the traced weights."""
    if network.nodes != traced.network.nodes or network.input_shape != traced.network.input_shape:
        raise MaterializeError(
            "this network does not come from the traced model (its structure differs); derive it "
            "with traced.network.with_widths(...)"
        )
    kept = kept_channels(traced, network, selector)
    layers: dict[str, nn.Module] = {}
    with torch.no_grad():
        for node in network.nodes:
            if node.name in traced.binding and node.op is not OpKind.OPAQUE:
                layers[node.name] = _sliced(traced, network, node, kept)
    module = build(network, layers, opaque={k: v for k, v in traced.opaque.items()})
    return module.train(traced.module.training)


def _module(traced: Traced, name: str) -> Any:
    """The traced submodule bound to IR node `name` (a layer with weight/bias attributes)."""
    return traced.module.get_submodule(traced.binding[name])


def _sliced(traced: Traced, net: Network, node: Node, kept: Mapping[str, Tensor]) -> nn.Module:
    src = _module(traced, node.name)
    layer: Any = make_layer(net, node)
    out_idx = expand(net, net.layout(node.name), kept)
    if node.op is OpKind.BATCHNORM:
        _copy_bn(src, layer, out_idx)
        return layer.to(_dtype(src))
    in_idx = expand(net, net.layout(node.inputs[0]), kept)
    weight = _slice_weight(src.weight, out_idx, in_idx, getattr(src, "groups", 1))
    layer.weight.copy_(weight)
    if getattr(src, "bias", None) is not None:
        layer.bias.copy_(src.bias[out_idx])
    return layer.to(_dtype(src))


def _dtype(src: nn.Module) -> torch.dtype:
    return next(iter(src.parameters()), next(iter(src.buffers()), torch.empty(0))).dtype


def _slice_weight(w: Tensor, out_idx: Tensor, in_idx: Tensor, groups: int) -> Tensor:
    """Rows `out_idx` and (original) input channels `in_idx` of a conv or linear weight."""
    if groups == 1:
        return w[out_idx][:, in_idx]
    full_in = w.shape[1] * groups
    if groups == full_in:  # depthwise: each filter sees one input channel
        return w[out_idx]
    in_per, out_per = full_in // groups, w.shape[0] // groups
    rows = []
    for o in out_idx.tolist():
        block = o // out_per
        local = in_idx[(in_idx // in_per) == block] - block * in_per
        rows.append(w[o][local])
    return torch.stack(rows)


def _copy_bn(src: Any, dst: Any, idx: Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        value = getattr(src, name, None)
        if value is not None:
            getattr(dst, name).copy_(value[idx])
    if getattr(src, "num_batches_tracked", None) is not None:
        dst.num_batches_tracked.copy_(src.num_batches_tracked)
