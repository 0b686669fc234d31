"""Count CONV and FC multiply-accumulates of real torch modules as they run (forward hooks)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import Tensor, nn

__all__ = ["counting_macs"]


@contextmanager
def counting_macs(module: nn.Module, batch: int = 1) -> Iterator[Callable[[], int]]:
    """While active, forward passes through `module` add up their Conv2d/Linear MACs per sample.

        with counting_macs(model, batch=x.shape[0]) as total:
            model(x)
        total()  # MACs for one sample
    """
    count = 0

    def hook(m: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal count
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            count += out.numel() // batch * (m.in_channels // m.groups) * kh * kw
        elif isinstance(m, nn.ConvTranspose2d):  # every input pixel scatters a kernel per output channel
            kh, kw = m.kernel_size
            count += inputs[0].numel() // batch * (m.out_channels // m.groups) * kh * kw
        elif isinstance(m, nn.Linear):
            count += out.numel() // batch * m.in_features

    layers = nn.Conv2d | nn.ConvTranspose2d | nn.Linear
    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, layers)]
    try:
        yield lambda: count
    finally:
        for h in handles:
            h.remove()
