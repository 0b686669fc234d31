"""Property tests over random networks: round trips, equivalence, and sizes that agree."""

from __future__ import annotations

import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch import Tensor, nn

import netopt
from netopt.bridge import build, expand
from netopt.bridge.select import top_channels
from netopt.ir import Layout, Network, macs, params
from netopt.testing import strategies as nst
from netopt.testing.torch_checks import module_macs, module_params, randomize_batchnorm

ATOL = 1e-5


def torch_model(net: Network, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return randomize_batchnorm(build(net), seed).eval()


def example(net: Network, batch: int = 2) -> Tensor:
    return torch.randn(batch, *net.input_shape, generator=torch.Generator().manual_seed(1))


@given(nst.networks_with_widths())
def test_json_round_trip_is_identity(pair: tuple[Network, Network]) -> None:
    net, smaller = pair
    assert Network.from_json(net.to_json()) == net
    assert Network.from_json(smaller.to_json()) == smaller


@given(nst.networks_with_widths())
def test_lint_passes_after_every_with_widths(pair: tuple[Network, Network]) -> None:
    net, smaller = pair
    net.lint()
    smaller.lint()
    assert all(g.width <= g.full_width for g in smaller.groups)
    assert macs(smaller) <= macs(net) and params(smaller) <= params(net)


@given(nst.networks(), st.integers(0, 1000))
def test_ir_to_torch_to_ir_gives_the_same_network(net: Network, seed: int) -> None:
    model = torch_model(net, seed)
    assert netopt.trace(model, example(net)).network == net


@given(nst.networks(), st.integers(0, 1000))
def test_torch_to_ir_to_torch_without_pruning_gives_the_same_outputs(net: Network, seed: int) -> None:
    model, x = torch_model(net, seed), example(net)
    rebuilt = netopt.trace(model, x).materialize()
    with torch.no_grad():
        assert (rebuilt(x) - model(x)).abs().max() <= ATOL


@given(nst.networks_with_widths(), st.integers(0, 1000))
def test_materialized_module_has_the_ir_sizes(pair: tuple[Network, Network], seed: int) -> None:
    net, smaller = pair
    model, x = torch_model(net, seed), example(net)
    module = netopt.trace(model, x).materialize(smaller)
    assert module_params(module) == params(smaller)
    assert module_macs(module, x) == macs(smaller)
    with torch.no_grad():
        assert module(x).shape == model(x).shape


EXACT = tuple(k for k in nst.BLOCKS if k not in nst.CHANNEL_MIXING)


@given(nst.networks(blocks=EXACT), st.data())
def test_removing_channels_that_contribute_nothing_leaves_outputs_unchanged(net: Network, data: st.DataObject) -> None:
    widths = data.draw(nst.widths(net, min_groups=1))
    assume(any(w < net.group(g).full_width for g, w in widths.items()))
    smaller = net.with_widths(widths)
    model, x = torch_model(net, data.draw(st.integers(0, 1000))), example(net)
    kept = {}
    for gid, width in widths.items():
        group = net.group(gid)
        scores = torch.rand(group.full_width, generator=torch.Generator().manual_seed(len(kept)))
        kept[gid] = top_channels(scores, width, group.blocks)
    silence(model, net, kept)
    module = netopt.trace(model, x).materialize(smaller)  # L2 must drop exactly the silenced ones
    with torch.no_grad():
        assert (module(x) - model(x)).abs().max() <= ATOL


def silence(model: nn.Module, net: Network, kept: dict[str, Tensor]) -> None:
    """Zero the filters of the dropped channels, and every weight that reads them."""
    with torch.no_grad():
        for gid in kept:
            for name in net.group(gid).producers:  # its rows of this group (a piece's, a head's) by layout
                layer, dropped = model.get_submodule(name), _dead(net, net.layout(name), kept)
                if isinstance(layer, nn.ConvTranspose2d):  # (in, out, kh, kw): output channels on dim 1
                    layer.weight[:, dropped] = 0
                else:
                    layer.weight[dropped] = 0
                if layer.bias is not None:
                    layer.bias[dropped] = 0
        readers = {c for gid in kept for c in net.group(gid).consumers}
        for name in readers:
            _zero_inputs(model.get_submodule(name), net, net.node(name).inputs[0], kept)


def _zero_inputs(layer: nn.Module, net: Network, source: str, kept: dict[str, Tensor]) -> None:
    dead = _dead(net, net.layout(source), kept)
    if isinstance(layer, nn.ConvTranspose2d):  # rows are its input channels (the strategies use groups=1)
        layer.weight[dead] = 0
        return
    groups = getattr(layer, "groups", 1)
    per_in, per_out = layer.weight.shape[1], layer.weight.shape[0] // groups
    for i in dead:
        block = i // per_in
        layer.weight[block * per_out:(block + 1) * per_out, i % per_in] = 0


def _dead(net: Network, layout: Layout, kept: dict[str, Tensor]) -> list[int]:
    """The channels of a tensor with this layout that the kept channels leave out."""
    alive = set(expand(net, layout, kept).tolist())
    return [i for i in range(int(expand(net, layout, {}).numel())) if i not in alive]
