"""SwiftFormer's efficient additive attention (issue 31): one ADDITIVE_ATTENTION op in the IR.

timm's swiftformer_xs (random init) and a hand-written block of the same form trace, shrink the q,
k and proj channels of each attention together while the embedding width follows its residuals,
materialize, and count parameters and MACs exactly; random networks of the additive block pass
the IR's property tests; a form that differs is refused in one line.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_netadaptv2 import _first_k_property
from test_properties import silence
from torch import Tensor, nn

import netopt
from netopt.bridge import build
from netopt.bridge.select import top_channels
from netopt.errors import UnsupportedOpError
from netopt.ir import Network, OpKind, activation_bytes, macs, params
from netopt.measure import EnergyModel
from netopt.measure.onnxrt import export_onnx
from netopt.testing import strategies as nst
from netopt.testing.peers import import_timm
from netopt.testing.torch_checks import max_abs_diff, module_macs, module_params, randomize_batchnorm

DIM, TOKEN_DIM = 32, 24


class Additive(nn.Module):
    """Additive attention on a map's tokens, written as SwiftFormer does but with the scale divided,
    the weighted query's operands swapped and a projection to another width than the input's."""

    def __init__(self, swap: bool = False) -> None:
        super().__init__()
        self.swap = swap
        self.to_query, self.to_key = nn.Linear(DIM, TOKEN_DIM), nn.Linear(DIM, TOKEN_DIM)
        self.w_g = nn.Parameter(torch.randn(TOKEN_DIM, 1))
        self.proj, self.final = nn.Linear(TOKEN_DIM, TOKEN_DIM), nn.Linear(TOKEN_DIM, DIM)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        x = x.flatten(2).permute(0, 2, 1)
        query, key = F.normalize(self.to_query(x), dim=-1), F.normalize(self.to_key(x), dim=-1)
        attn = F.normalize(query @ self.w_g / TOKEN_DIM ** 0.5, dim=1)
        attn = torch.sum(query * attn if self.swap else attn * query, dim=1, keepdim=True)
        out = self.proj(key * attn if self.swap else attn * key) + query
        return self.final(out).permute(0, 2, 1).reshape(b, -1, h, w)


class Net(nn.Module):
    """A conv stem, two residual additive-attention blocks, a classifier."""

    def __init__(self, swap: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, DIM, 3, stride=2, padding=1), nn.BatchNorm2d(DIM), nn.ReLU())
        self.blocks = nn.ModuleList([Additive(swap), Additive(not swap)])
        self.head = nn.Linear(DIM, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x.mean(dim=(2, 3)))


def _check_exact(model: nn.Module, x: Tensor, atol: float = 1e-5) -> netopt.Traced:
    """Full width equals the original; every group halves; sizes are exact at both widths."""
    traced = netopt.trace(model, x)
    net = traced.network
    small = net.scaled(0.5)
    small.lint()
    assert all(g.width < g.full_width for g in small.groups)
    assert max_abs_diff(traced.materialize(), model, x) <= atol
    module = traced.materialize(small)
    assert module_params(model) == params(net) and module_macs(model, x) == macs(net)
    assert module_params(module) == params(small) and module_macs(module, x) == macs(small)
    assert Network.from_json(small.to_json()) == small
    with torch.no_grad():
        assert module(x).shape == model(x).shape
    return traced


def test_a_hand_written_additive_attention_shrinks_q_k_and_proj_together() -> None:
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 3, 16, 16)
    net = _check_exact(model, x).network
    assert sum(n.op is OpKind.ADDITIVE_ATTENTION for n in net.nodes) == 2
    group = net.group("blocks.0.to_query")
    assert group.full_width == TOKEN_DIM
    assert set(group.producers) == {f"blocks.0.{p}" for p in ("to_query", "to_key", "proj")}
    assert net.layout("blocks.0.final")[0].group == net.layout("stem.0")[0].group  # the embedding width


def test_the_operands_may_come_in_either_order() -> None:
    torch.manual_seed(0)
    _check_exact(Net(swap=True).eval(), torch.randn(2, 3, 16, 16))


def test_the_channels_that_contribute_nothing_are_the_ones_removed() -> None:
    """Zero a third of block 0's q, k and proj rows: shrinking that group by them leaves outputs unchanged."""
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 3, 16, 16)
    block = model.blocks[0]
    assert isinstance(block, Additive)
    dropped = torch.arange(0, TOKEN_DIM, 3)
    with torch.no_grad():
        for layer in (block.to_query, block.to_key, block.proj):
            layer.weight[dropped], layer.bias[dropped] = 0, 0
        block.proj.weight[:, dropped], block.final.weight[:, dropped] = 0, 0
    traced = netopt.trace(model, x)
    smaller = traced.materialize(traced.network.with_widths({"blocks.0.to_query": 16}))
    assert smaller.get_submodule("blocks.0.to_key").out_features == 16
    assert max_abs_diff(smaller, model, x) <= 1e-5


def test_timm_swiftformer_is_exact_and_shrinks_each_attention() -> None:
    timm = import_timm()
    torch.manual_seed(0)
    model = timm.create_model("swiftformer_xs", pretrained=False).eval()
    net = _check_exact(model, torch.randn(1, 3, 224, 224), atol=1e-4).network
    attention = [n for n in net.nodes if n.op is OpKind.ADDITIVE_ATTENTION]
    assert [net.shape(n.name)[0] for n in attention] == [48, 56, 112, 220]
    assert {net.layout(n.name)[0].group for n in attention} == {
        f"stages.{s}.blocks.{b}.attn.to_query" for s, b in ((0, 2), (1, 2), (2, 5), (3, 3))}


def test_an_additive_form_that_differs_is_refused_in_one_line() -> None:
    """The pooled query added to k instead of multiplied: no op the IR models."""

    class Added(Additive):
        def forward(self, x: Tensor) -> Tensor:
            x = x.flatten(2).permute(0, 2, 1)
            query, key = F.normalize(self.to_query(x), dim=-1), F.normalize(self.to_key(x), dim=-1)
            attn = torch.sum(F.normalize(query @ self.w_g, dim=1) * query, dim=1, keepdim=True)
            return self.proj(attn + key)

    with torch.no_grad(), pytest.raises(UnsupportedOpError) as info:
        netopt.trace(Added().eval(), torch.randn(1, DIM, 4, 4))
    message = str(info.value)
    assert "\n" not in message and "node 'add'" in message and "additive attention's pooled" in message
    assert "opaque=[''" in message


def test_its_cost_is_counted_by_the_energy_and_memory_models() -> None:
    torch.manual_seed(0)
    net = netopt.trace(Net().eval(), torch.randn(1, 3, 16, 16)).network
    small = net.with_widths({"blocks.0.to_query": 8})
    assert 0 < EnergyModel().estimate(small) < EnergyModel().estimate(net)
    assert activation_bytes(small) <= activation_bytes(net)


ADDITIVE = nst.networks(max_blocks=2, blocks=("additive",))


@settings(max_examples=12, deadline=None)
@given(ADDITIVE, st.integers(0, 1000))
def test_random_additive_networks_round_trip_and_equal_at_full_width(net: Network, seed: int) -> None:
    torch.manual_seed(seed)
    model, x = randomize_batchnorm(build(net), seed).eval(), torch.randn(2, *net.input_shape)
    traced = netopt.trace(model, x)
    assert any(n.op is OpKind.ADDITIVE_ATTENTION for n in net.nodes)
    assert traced.network == net and Network.from_json(net.to_json()) == net
    assert max_abs_diff(traced.materialize(), model, x) <= 1e-5


@settings(max_examples=12, deadline=None)
@given(ADDITIVE, st.data())
def test_random_additive_networks_shrink_exactly_and_lose_only_silenced_channels(net: Network,
                                                                                  data: st.DataObject) -> None:
    widths = data.draw(nst.widths(net, min_groups=1))
    assume(any(w < net.group(g).full_width for g, w in widths.items()))
    smaller = net.with_widths(widths)
    smaller.lint()
    model, x = randomize_batchnorm(build(net), 0).eval(), torch.randn(2, *net.input_shape)
    kept = {g: top_channels(torch.rand(net.group(g).full_width), w, net.group(g).blocks) for g, w in widths.items()}
    silence(model, net, kept)
    module = netopt.trace(model, x).materialize(smaller)  # L2 must drop exactly the silenced ones
    assert module_params(module) == params(smaller) and module_macs(module, x) == macs(smaller)
    assert max_abs_diff(module, model, x) <= 1e-5


@settings(max_examples=3, deadline=None)
@given(ADDITIVE)
def test_random_additive_networks_run_in_onnx_runtime_as_in_torch(net: Network) -> None:
    """What the lookup tables measure: the op exported to ONNX computes what torch does."""
    model, x = build(net).eval(), torch.randn(1, *net.input_shape)
    session = netopt.measure.OnnxRuntimeCPU(threads=1).session(export_onnx(model, x))
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert float(abs(torch.from_numpy(out) - model(x)).max()) <= 1e-4


@settings(max_examples=6, deadline=None)
@given(ADDITIVE, st.data())
def test_a_sub_network_of_additive_attention_is_the_masked_super_network(net: Network, data: st.DataObject) -> None:
    """A masked q and k channel adds nothing to q w and pools to nothing: first-k is exact (NetAdaptV2)."""
    _first_k_property(net, net.with_widths(data.draw(nst.widths(net))).widths)
