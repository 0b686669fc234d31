"""NetAdaptV2's super-network: channels ordered by importance, ordered dropout, first-k sub-networks.

`ordered(traced)` rebuilds the network with every group's channels sorted by the selector's
score, most important first, so that "keep k channels" means "keep the first k"; the network
computes exactly what it did (a permutation of channels, applied to producers and consumers
alike). `OrderedDropout` turns that network into a super-network: on every training forward
pass each sample of the batch draws its own width for every group and the channels past it are
zeroed in every tensor of the group (per-sample masks, one forward-backward pass for many
sub-networks). `FirstChannels` then materializes the sub-network of any widths with the
super-network's weights, and `reestimate_batchnorm` re-estimates its BatchNorm statistics.

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
from netopt.ir import Network, OpKind

__all__ = ["ordered", "FirstChannels", "OrderedDropout", "reestimate_batchnorm"]


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
        info = network.analysis.info
        self.handles = [module.register_forward_pre_hook(self._draw)]
        for node in network.nodes:
            layout = network.layout(node.name)
            if not any(s.group in self.grids for s in layout):
                continue
            index = []
            for s in layout:
                full, blocks = info[s.group].full_width, info[s.group].blocks
                channel = torch.arange(full)
                position = (channel % (full // blocks)) * blocks  # < k exactly for the first k/blocks of each block
                group = s.group if s.group in self.grids else None
                index.append((group, position.repeat_interleave(s.inner)))
            key = tuple(layout)
            self.handles.append(module.get_submodule(node.name).register_forward_hook(self._hook(key, index)))
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

    def _hook(self, key: tuple[Any, ...], index: list[tuple[str | None, Tensor]]) -> Any:
        def apply(module: nn.Module, args: tuple[Any, ...], out: Tensor) -> Tensor:
            if self.widths is None or not isinstance(out, Tensor) or out.dim() < 2:
                return out
            mask = self._masks.get(key)
            if mask is None:
                parts = [torch.ones(len(pos), out.shape[0], dtype=torch.bool) if g is None
                         else pos[:, None] < self.widths[g][None, :] for g, pos in index]
                mask = torch.cat(parts).T.to(out.dtype)
                self._masks[key] = mask
            if mask.shape != out.shape[:2]:
                return out  # not a (batch, channels, ...) tensor of the layout: leave it
            return out * mask.to(out.device).reshape(*mask.shape, *([1] * (out.dim() - 2)))
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
