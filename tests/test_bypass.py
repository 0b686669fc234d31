"""Channel-level bypass: a group inside a residual branch at width 0 removes the branch.

Properties over random networks (round trips, removed branch = zeroed branch, sizes that agree
with the materialized module), the same on real torchvision and timm networks, and the cost
backends (lookup table units, energy, memory) seeing the removed layers as absent.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import Tensor, nn

import netopt
from netopt.bridge import build
from netopt.errors import WidthError
from netopt.ir import Network, activation_bytes, macs, params
from netopt.lut.units import units
from netopt.measure.energy import EnergyModel
from netopt.testing import strategies as nst
from netopt.testing.peers import import_timm, import_torchvision
from netopt.testing.torch_checks import module_macs, module_params, randomize_batchnorm

ATOL = 1e-5
RESIDUAL = ("conv", "residual", "inverted", "se", "convnext", "pool", "dwsep")


def torch_model(net: Network, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_batchnorm(build(net), seed).eval()


def example(shape: tuple[int, ...], batch: int = 2) -> Tensor:
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1))


@st.composite
def bypassed(draw: st.DrawFn) -> tuple[Network, Network]:
    """A random residual network and a shrinking of it with at least one branch removed."""
    net = draw(nst.networks(blocks=RESIDUAL))
    bypass = [g for g in net.groups if g.bypass]
    assume(bypass)
    zero = draw(st.lists(st.sampled_from(bypass), min_size=1, unique_by=lambda g: g.id))
    widths = {**draw(nst.widths(net, bypass=True)), **{g.id: 0 for g in zero}}
    return net, net.with_widths(widths)


def zeroed(model: nn.Module, branches: list[str]) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks that make each named module's output zeros: the branch contributes nothing."""
    return [model.get_submodule(name).register_forward_hook(lambda m, args, out: torch.zeros_like(out))
            for name in branches]


@given(bypassed())
def test_width_zero_round_trips_and_lints(pair: tuple[Network, Network]) -> None:
    net, smaller = pair
    smaller.lint()
    smaller.reduced().lint()
    assert Network.from_json(smaller.to_json()) == smaller
    assert smaller.removed and all(name in {n.name for n in net.nodes} for name in smaller.removed)
    assert not {n.name for n in smaller.reduced().nodes} & smaller.removed
    assert macs(smaller) <= macs(net) and params(smaller) < params(net)


@given(bypassed(), st.integers(0, 1000))
def test_removed_branch_computes_what_the_zeroed_branch_does(pair: tuple[Network, Network], seed: int) -> None:
    net, smaller = pair
    only_zero = net.with_widths({g: 0 for g, w in smaller.widths.items() if w == 0})
    model, x = torch_model(net, seed), example(net.input_shape)
    module = netopt.trace(model, x).materialize(only_zero)
    handles = zeroed(model, [b.operand for b in only_zero.bypassed])
    with torch.no_grad():
        expected = model(x)
    for h in handles:
        h.remove()
    with torch.no_grad():
        assert (module(x) - expected).abs().max() <= ATOL


@given(bypassed(), st.integers(0, 1000))
def test_params_and_macs_of_a_bypassed_network_are_the_modules(pair: tuple[Network, Network], seed: int) -> None:
    net, smaller = pair
    model, x = torch_model(net, seed), example(net.input_shape)
    module = netopt.trace(model, x).materialize(smaller)
    assert module_params(module) == params(smaller) == params(smaller.reduced())
    assert module_macs(module, x) == macs(smaller) == macs(smaller.reduced())
    assert activation_bytes(smaller) == activation_bytes(smaller.reduced())
    with torch.no_grad():
        assert module(x).shape == model(x).shape
    again = netopt.trace(module, x).network  # torch -> IR: the reduced network, at its widths as full
    assert [(n.name, n.op) for n in again.nodes] == [(n.name, n.op) for n in smaller.reduced().nodes]
    assert (macs(again), params(again)) == (macs(smaller), params(smaller))


@given(bypassed())
def test_costs_see_the_removed_layers_as_absent(pair: tuple[Network, Network]) -> None:
    net, smaller = pair
    heads = {u.head.name for u in units(smaller)}
    assert not heads & smaller.removed
    assert [u.signature for u in units(smaller)] == [u.signature for u in units(smaller.reduced())]
    energy = EnergyModel()
    assert energy.estimate(smaller) == pytest.approx(energy.estimate(smaller.reduced()))
    assert energy.estimate(smaller) < energy.estimate(net)


def test_only_groups_inside_a_residual_branch_may_be_zero() -> None:
    b = netopt.ir.Builder((3, 16, 16))
    stem = b.relu(b.bn(b.conv(b.input, 16, 3)))
    inner = b.relu(b.bn(b.conv(stem, 24, 3)))
    block = b.add_(b.bn(b.conv(inner, 16, 3)), stem)
    net = b.build(b.linear(b.flatten(b.adaptive_avgpool(block)), 10))
    inner_group, stem_group = net.layout(inner)[0].group, net.layout(stem)[0].group
    assert net.group(inner_group).bypass and not net.group(stem_group).bypass
    assert net.group(inner_group).valid_widths(bypass=True)[:2] == (0, 8)
    assert 0 not in net.group(inner_group).valid_widths()  # only asked for: other strategies never see it
    with pytest.raises(WidthError, match=r"width 0 is invalid for group .*between 8 and 16"):
        net.with_widths({stem_group: 0})
    assert net.with_widths({inner_group: 0}).reduced().node(block).op is netopt.ir.OpKind.IDENTITY


def test_an_add_of_two_branches_without_a_shortcut_is_not_bypassed() -> None:
    b = netopt.ir.Builder((3, 16, 16))
    stem = b.relu(b.bn(b.conv(b.input, 16, 3)))
    left = b.bn(b.conv(b.relu(b.bn(b.conv(stem, 24, 3))), 16, 1))
    right = b.bn(b.conv(b.relu(b.bn(b.conv(stem, 32, 3))), 16, 1))
    net = b.build(b.linear(b.flatten(b.adaptive_avgpool(b.add_(left, right))), 10))
    inner = [net.layout(name)[0].group for name in (left, right)]
    assert len(net.groups) > 2 and not any(g.bypass for g in net.groups)
    with pytest.raises(WidthError, match=r"width 0 is invalid"):
        net.with_widths({net.groups[1].id: 0})
    assert inner[0] == inner[1]  # the add couples the two branches' outputs


def _real(model: nn.Module, size: int) -> None:
    model = randomize_batchnorm(model.eval(), 3)
    x = example((3, size, size))
    traced = netopt.trace(model, x)
    net = traced.network
    bypass = [g for g in net.groups if g.bypass]
    assert bypass, "a residual network has bypass groups"
    shrunk = net.with_widths({g.id: 0 for g in bypass[::2]})
    module = traced.materialize(shrunk).eval()
    assert module_params(module) == params(shrunk) < params(net)
    assert module_macs(module, x) == macs(shrunk) < macs(net)
    handles = zeroed(model, [traced.binding.get(b.operand, b.operand) for b in shrunk.bypassed])
    with torch.no_grad():
        expected = model(x)
    for h in handles:
        h.remove()
    with torch.no_grad():
        assert (module(x) - expected).abs().max() <= 1e-4


def test_torchvision_resnet18_blocks_bypass() -> None:
    _real(import_torchvision().models.resnet18(num_classes=10), 64)


def test_timm_mobilenetv2_blocks_bypass() -> None:
    _real(import_timm().create_model("mobilenetv2_050", pretrained=False, num_classes=10), 64)
