"""NetAdaptV2's super-network: channels ordered by importance, ordered dropout, first-k sub-networks.

`ordered(traced)` rebuilds the network with every group's channels sorted by the selector's
score, most important first, so that "keep k channels" means "keep the first k"; the network
computes exactly what it did (a permutation of channels, applied to producers and consumers
alike). `OrderedDropout` turns that network into a super-network: on every training forward
pass each sample of the batch draws its own width for every group and the channels past it are
zeroed in every tensor of the group (per-sample masks, one forward-backward pass for many
sub-networks; the channels of tokens (B, N, C) are their last dim; a divisor's masked channels
are set to 1, not 0, so that no 0 / 0 turns the sample into NaN). `FirstChannels` then
materializes the sub-network of any widths with the super-network's weights, and
`reestimate_batchnorm` re-estimates its BatchNorm statistics.

Where a group passes through an op that mixes channels without weights (LayerNorm over
channels, ECA), a masked channel still moves the statistics or the filter, so the super-network
only approximates its sub-networks there; they are always scored as what they are, materialized.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from netopt.bridge import Traced, trace
from netopt.bridge.materialize import group_weights, materialize_channels
from netopt.bridge.select import FilterSelector, GroupWeights, L2Magnitude
from netopt.ir import Network, Node, OpKind

__all__ = ["ordered", "FirstChannels", "OrderedDropout", "reestimate_batchnorm", "already_zero", "ZERO_KEEPING"]


def ordered(traced: Traced, selector: FilterSelector | None = None) -> Traced:
    """`traced` with each group's channels sorted by `selector` (L2 magnitude), highest first;
    within each block of a grouped conv, so that every block keeps its share. A group that
    passes through ECA keeps its order: ECA filters neighbouring channels, so a permutation
    would change what it computes."""
    selector = selector or L2Magnitude()
    net = traced.network
    neighbourly = {s.group for node in net.nodes if node.op is OpKind.ECA for s in net.layout(node.name)}
    order = {}
    for group in net.groups:
        if group.id in neighbourly:
            continue
        scores = selector.scores(group_weights(traced, group.id))
        size = group.full_width // group.blocks
        order[group.id] = torch.cat([torch.argsort(scores[b * size:(b + 1) * size], descending=True, stable=True)
                                     + b * size for b in range(group.blocks)])
    module = materialize_channels(traced, net, order).eval()
    return trace(module, traced.example_input(), step=net.step)


class FirstChannels(FilterSelector):
    """Keeps the first k channels of each group (of each block): the ordered super-network's sub-networks."""

    def scores(self, weights: GroupWeights) -> Tensor:
        return -torch.arange(weights.filters[0].shape[0], dtype=torch.float32)


class OrderedDropout:
    """Per-sample channel masks on a full-width module of `network` (see the module docstring).

    On each forward pass in training mode, every sample draws one width per group, uniformly on
    the group's grid (`valid_widths(bypass)`); with `sandwich`, sample 0 takes every group's full
    width and sample 1 every group's minimum (the sandwich rule: the largest and the smallest
    sub-network are trained in every step). With `bypass`, a group inside a residual branch may
    draw 0: that sample's branch output is zeroed too (its block passes the shortcut through, as
    the materialized sub-network does), so the smallest sub-network has no residual branches.
    In eval mode the module is the full network. Randomness comes from a generator seeded by
    `seed`. `remove()` takes the hooks off.
    """

    def __init__(self, module: nn.Module, network: Network, seed: int, sandwich: bool = True,
                 bypass: bool = False) -> None:
        self.network, self.sandwich = network, sandwich
        self.generator = torch.Generator().manual_seed(seed)
        self.grids = {g.id: torch.tensor(g.valid_widths(bypass)) for g in network.groups}
        self.widths: dict[str, Tensor] | None = None
        self._masks: dict[tuple[Any, ...], Tensor] = {}
        self.handles = [module.register_forward_pre_hook(self._draw)]
        zero = already_zero(network, set(self.grids))
        for node in network.nodes:
            if node.name not in zero and any(s.group in self.grids for s in network.layout(node.name)):
                self.handles.append(module.get_submodule(node.name).register_forward_hook(self._hook(node.name)))
            divisor = _divisor(node)
            if divisor is not None and any(s.group in self.grids for s in network.layout(node.inputs[divisor])):
                self.handles.append(module.get_submodule(node.name).register_forward_pre_hook(
                    self._divide(node.inputs[divisor], divisor)))
        gates: dict[str, list[str]] = {}  # a branch's last node -> the bypass groups that remove it
        for gid, branch in network.bypassable.items() if bypass else ():
            if gid in self.grids:
                gates.setdefault(branch.operand, []).append(gid)
        for operand, gids in gates.items():
            self.handles.append(module.get_submodule(operand).register_forward_hook(self._gate(gids)))

    def _draw(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._masks.clear()
        if not module.training:
            self.widths = None
            return
        batch = args[0].shape[0]
        widths = {}
        for gid, grid in self.grids.items():
            k = grid[torch.randint(len(grid), (batch,), generator=self.generator)]
            if self.sandwich and batch >= 2:
                k[0], k[1] = grid[-1], grid[0]
            widths[gid] = k
        self.widths = widths

    def _mask(self, name: str, out: Tensor) -> Tensor | None:
        """The per-sample mask of `name`'s channels shaped to broadcast over `out`, or None where
        `out` is not a (batch, channels, ...) tensor of its layout. The channels are dim 1 of a map
        or vector and the last dim of tokens (the IR's rank-1 spatial: (B, N, C)), never N."""
        assert self.widths is not None
        if out.dim() < 2:
            return None
        key = tuple(self.network.layout(name))
        mask = self._masks.get(key)
        if mask is None:
            mask = self._masks[key] = _layout_mask(self.network, name, self.widths, out.shape[0]).to(out.dtype)
        dim = out.dim() - 1 if len(self.network.analysis.spatial[name]) == 1 else 1
        if mask.shape != (out.shape[0], out.shape[dim]):
            return None
        shape = [1] * out.dim()
        shape[0], shape[dim] = mask.shape
        return mask.to(out.device).reshape(shape)

    def _hook(self, name: str) -> Any:
        """A forward hook zeroing the channels of `name`'s output past each sample's widths."""
        def apply(module: nn.Module, args: tuple[Any, ...], out: Tensor) -> Tensor:
            if self.widths is None or not isinstance(out, Tensor):
                return out
            mask = self._mask(name, out)
            return out if mask is None else out * mask
        return apply

    def _divide(self, name: str, position: int) -> Any:
        """A forward pre-hook setting the masked channels of a divisor (`name`, argument `position`)
        to 1: divided by 0 they would be NaN (0 / 0) and stay NaN through the mask (NaN * 0), in
        the output and in the gradients; the quotient's channels are masked after it anyway."""
        def apply(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = args[position]
            if self.widths is None or not isinstance(x, Tensor):
                return args
            mask = self._mask(name, x)
            if mask is None:
                return args
            return (*args[:position], torch.where(mask.bool(), x, torch.ones_like(x)), *args[position + 1:])
        return apply

    def _gate(self, gids: list[str]) -> Any:
        def apply(module: nn.Module, args: tuple[Any, ...], out: Tensor) -> Tensor:
            if self.widths is None or not isinstance(out, Tensor):
                return out
            keep = torch.stack([self.widths[g] > 0 for g in gids]).all(0).to(out.device, out.dtype)
            return out * keep.reshape(-1, *([1] * (out.dim() - 1)))
        return apply

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


ZERO_KEEPING = frozenset({OpKind.RELU, OpKind.RELU6, OpKind.HARDSWISH, OpKind.SILU, OpKind.GELU, OpKind.LEAKY_RELU,
                          OpKind.DROPOUT, OpKind.IDENTITY, OpKind.ADD})
"""Channel-wise ops whose output is 0 wherever all their inputs are (f(0) = 0; a sum of zeros)."""


def already_zero(network: Network, groups: set[str]) -> set[str]:
    """Nodes whose masked channels are already 0 without a mask of their own: a `ZERO_KEEPING` op
    (no scalar operand) whose inputs are all masked, or already zero, in the same layout. Masking
    them again would change neither the outputs nor the gradients (the inputs' masks zero those),
    only cost a pass over the tensor: on a small CNN the masks cost as much as the convolutions."""
    masked: set[str] = set()
    zero: set[str] = set()
    for node in network.nodes:
        layout = network.layout(node.name)
        if not any(s.group in groups for s in layout):
            continue
        if (node.op in ZERO_KEEPING and node.inputs and getattr(node.attrs, "scalar", None) is None
                and all(i in masked and network.layout(i) == layout for i in node.inputs)):
            zero.add(node.name)
        masked.add(node.name)
    return zero


def _layout_mask(network: Network, name: str, widths: dict[str, Tensor], batch: int) -> Tensor:
    """(batch, channels) booleans: which of `name`'s channels each sample keeps (its first k of
    each group, of each block of a grouped group; a fixed group's channels always)."""
    info, parts = network.analysis.info, []
    for s in network.layout(name):
        full, blocks = info[s.group].full_width, info[s.group].blocks
        position = (torch.arange(full) % (full // blocks)) * blocks  # < k exactly for the first k/blocks of each block
        position = position.repeat_interleave(s.inner)
        parts.append(position[:, None] < widths[s.group][None, :] if s.group in widths
                     else torch.ones(len(position), batch, dtype=torch.bool))
    return torch.cat(parts).T


def _divisor(node: Node) -> int | None:
    """Which input of `node` is a divisor (`a / b`: 1; `scalar / x`: 0), or None."""
    if node.op is not OpKind.DIV:
        return None
    if node.attrs.scalar is None:
        return 1
    return 0 if node.attrs.reverse else None


@torch.no_grad()
def reestimate_batchnorm(module: nn.Module, batches: Iterable[Tensor]) -> int:
    """Re-estimate every BatchNorm's running statistics as the average over `batches` (train-mode
    forward passes, no gradients); the module is left in eval mode. Returns the batches used."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    module.train()
    used = 0
    try:
        for x in batches:
            module(x)
            used += 1
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        module.eval()
    return used


def sub_network(traced: Traced, widths: dict[str, int]) -> nn.Module:
    """The first-k sub-network of the ordered (super-)network `traced`, with its weights."""
    return traced.materialize(traced.network.with_widths(widths), FirstChannels())
