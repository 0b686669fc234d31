"""Checks that tie the IR to torch: the helpers netopt's own tests and users' tests share."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["randomize_batchnorm", "module_macs", "module_params", "max_abs_diff"]


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine terms, so equivalence checks bite."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                if m.running_mean is not None and m.running_var is not None:
                    m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                    m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                    m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
    return model


def module_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def module_macs(model: nn.Module, x: Tensor) -> int:
    """CONV and FC multiply-accumulates of one forward pass of batch size 1, counted by hooks."""
    total = 0

    def hook(m: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total += out[0].numel() * (m.in_channels // m.groups) * kh * kw
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return total


def max_abs_diff(a: nn.Module, b: nn.Module, x: Tensor) -> float:
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())
