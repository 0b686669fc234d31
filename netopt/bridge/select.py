"""ChooseWhichFilters: which channels of a group to keep when it shrinks.

A selector scores every channel of a group from the weights of the layers that produce it
(summed over coupled producers, e.g. both sides of a residual add); the highest scores are
kept, in their original order. Grouped convs need the same count kept in each block.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["GroupWeights", "FilterSelector", "L2Magnitude", "L1Magnitude", "BNGamma", "top_channels"]


@dataclass(frozen=True)
class GroupWeights:
    """The tensors a selector may read for one group: each has the group's channels on dim 0."""

    filters: tuple[Tensor, ...]
    bn_gammas: tuple[Tensor, ...] = ()


class FilterSelector(ABC):
    """Scores the channels of a group; higher means more important (kept first)."""

    @abstractmethod
    def scores(self, weights: GroupWeights) -> Tensor:
        """One score per channel of the group."""


def _norms(tensors: tuple[Tensor, ...], p: int) -> Tensor:
    return torch.stack([t.detach().flatten(1).norm(p=p, dim=1) for t in tensors]).sum(0)


class L2Magnitude(FilterSelector):
    """L2 norm of each filter, summed over the group's producers (NetAdapt's choice)."""

    def scores(self, weights: GroupWeights) -> Tensor:
        return _norms(weights.filters, 2)


class L1Magnitude(FilterSelector):
    """L1 norm of each filter, summed over the group's producers."""

    def scores(self, weights: GroupWeights) -> Tensor:
        return _norms(weights.filters, 1)


class BNGamma(FilterSelector):
    """|gamma| of the BatchNorms on the group (network slimming); L2 where a group has none."""

    def scores(self, weights: GroupWeights) -> Tensor:
        if not weights.bn_gammas:
            return L2Magnitude().scores(weights)
        return torch.stack([g.detach().abs() for g in weights.bn_gammas]).sum(0)


def top_channels(scores: Tensor, keep: int, blocks: int = 1) -> Tensor:
    """Indices of the `keep` best channels, ascending; an equal share from each block."""
    full = scores.numel()
    if keep == full:
        return torch.arange(full)
    size, per_block = full // blocks, keep // blocks
    picks = []
    for b in range(blocks):
        block = scores[b * size:(b + 1) * size]
        best = torch.topk(block, per_block, sorted=False).indices
        picks.append(best + b * size)
    return torch.cat(picks).sort().values
