"""Checks that tie the IR to torch: the helpers netopt's own tests and users' tests share."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from netopt.bridge.count import counting_macs

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
    """CONV and FC multiply-accumulates of one forward pass for one sample, counted by hooks."""
    with counting_macs(model, batch=1) as total, torch.no_grad():
        model(x[:1])
    return total()


def max_abs_diff(a: nn.Module, b: nn.Module, x: Tensor) -> float:
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())
