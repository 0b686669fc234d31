"""`Traced`: a torch model bound to its IR, what `trace` returns and `materialize` reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from netopt.bridge.materialize import materialize
from netopt.bridge.select import FilterSelector
from netopt.ir import Network

__all__ = ["Traced"]


@dataclass(frozen=True)
class Traced:
    """A torch model and its IR: `network` at full width, bound to `module`'s weights.

    `binding` maps IR node names to the qualified names of the submodules that hold their
    parameters. Materializing reads the module's weights as they are at that moment.
    """

    network: Network
    module: nn.Module
    binding: Mapping[str, str]
    example_shape: tuple[int, ...]
    opaque: Mapping[str, nn.Module] = field(default_factory=dict)
    selector: FilterSelector | None = None
    """Which filters `materialize` keeps when it is given no selector (None: L2 magnitude)."""

    def materialize(self, network: Network | None = None, selector: FilterSelector | None = None) -> fx.GraphModule:
        """A physically smaller torch module for `network`, keeping the selected filters."""
        return materialize(self, network if network is not None else self.network, selector or self.selector)

    def example_input(self) -> torch.Tensor:
        """A random tensor of the example input's shape (for export and measurement)."""
        return torch.randn(self.example_shape)
