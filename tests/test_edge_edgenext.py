"""EdgeNeXt's forms in the IR: a position encoding computed in forward from shapes alone (a CONSTANT
map held as a buffer, read by a 1x1 conv that shrinks) and cross-covariance attention (XCA: an
ATTENTION with `channels`, heads shrinking whole with their temperatures).

timm's edgenext_xx_small (random init) and a hand-written block of the same form trace, shrink,
materialize, and count parameters and MACs exactly; Hypothesis networks of the `xca` block go
through the round trips every op passes.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import netopt
from netopt.bridge import build
from netopt.bridge.constant import Constant
from netopt.bridge.xca_modules import CrossCovarianceAttention
from netopt.errors import UnsupportedOpError
from netopt.ir import Network, OpKind
from netopt.testing import strategies as nst
from netopt.testing.peers import import_timm
from netopt.testing.torch_checks import max_abs_diff, module_macs, module_params

DIM, HEADS, HIDDEN = 32, 4, 16


class Fourier(nn.Module):
    """EdgeNeXt's PositionalEncodingFourier, shortened: sin/cos of a position grid made from the
    shape alone, then a 1x1 conv to the embedding width."""

    def __init__(self) -> None:
        super().__init__()
        self.token_projection = nn.Conv2d(2 * HIDDEN, DIM, 1)

    def forward(self, shape: tuple[int, int, int]) -> Tensor:
        grid = ~torch.zeros(shape).to(torch.bool)
        y, x = grid.cumsum(1, dtype=torch.float32), grid.cumsum(2, dtype=torch.float32)
        y, x = y / (y[:, -1:, :] + 1e-6) * 2 * math.pi, x / (x[:, :, -1:] + 1e-6) * 2 * math.pi
        dim_t = 10000.0 ** (2 * torch.div(torch.arange(HIDDEN), 2, rounding_mode="floor") / HIDDEN)
        pos_x, pos_y = x[..., None] / dim_t, y[..., None] / dim_t
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return self.token_projection(torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2))


class Xca(nn.Module):
    """timm's CrossCovarianceAttn: attention across each head's channels."""

    def __init__(self) -> None:
        super().__init__()
        self.temperature = nn.Parameter(torch.rand(HEADS, 1, 1) + 0.5)
        self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, HEADS, -1).permute(2, 0, 3, 4, 1).unbind(0)
        attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * self.temperature
        return self.proj((attn.softmax(dim=-1) @ v).permute(0, 3, 1, 2).reshape(b, n, c))


class TinyEdgeNeXt(nn.Module):
    """A stem, EdgeNeXt's global block (position encoding, XCA, an MLP on channels-last maps), a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, DIM, 4, stride=4)
        self.pos_embd, self.norm_xca, self.xca = Fourier(), nn.LayerNorm(DIM), Xca()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(DIM), nn.Linear(DIM, 2 * DIM), nn.Linear(2 * DIM, DIM)
        self.head = nn.Linear(DIM, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        b, c, h, w = x.shape
        t = x.reshape(b, c, h * w).permute(0, 2, 1)
        t = t + self.pos_embd((b, h, w)).reshape(b, -1, t.shape[1]).permute(0, 2, 1)
        t = t + self.xca(self.norm_xca(t))
        y = t.reshape(b, h, w, c)
        y = self.fc2(F.gelu(self.fc1(self.norm(y)))).permute(0, 3, 1, 2)
        return self.head((x + y).mean((2, 3)))


def _check_exact(model: nn.Module, x: Tensor) -> netopt.Traced:
    """Full width equals the original; every group halves; sizes are exact at both widths."""
    traced = netopt.trace(model, x)
    net, small = traced.network, traced.network.scaled(0.5)
    small.lint()
    assert all(g.width < g.full_width for g in small.groups)
    assert max_abs_diff(traced.materialize(), model, x) <= 1e-4
    module = traced.materialize(small)
    assert module_params(model) == netopt.ir.params(net) and module_macs(model, x) == netopt.ir.macs(net)
    assert module_params(module) == netopt.ir.params(small) and module_macs(module, x) == netopt.ir.macs(small)
    assert Network.from_json(small.to_json()) == small
    with torch.no_grad():
        assert module(x).shape == model(x).shape
    return traced


def _xca_heads(net: Network) -> list[str]:
    return [g.id for g in net.groups if net.analysis.info[g.id].unit > 1]


def test_a_position_encoding_made_in_forward_is_a_constant_read_by_a_conv_that_shrinks() -> None:
    torch.manual_seed(0)
    model, x = TinyEdgeNeXt().eval(), torch.randn(2, 3, 32, 32)
    traced = _check_exact(model, x)
    net = traced.network
    (constant,) = [n for n in net.nodes if n.op is OpKind.CONSTANT]
    assert constant.attrs.shape == (2 * HIDDEN, 8, 8)
    assert net.layout(constant.name)[0].group not in net.analysis.prunable  # its own channels: fixed
    projection = net.layout("pos_embd.token_projection")[0].group
    assert projection in net.analysis.prunable  # coupled to the embedding width through the add
    module = traced.materialize(net.with_widths({projection: 16}))
    assert module.get_submodule("pos_embd.token_projection").out_channels == 16
    assert not any(b.requires_grad for b in module.buffers())  # the constant is a buffer, not trained
    assert netopt.trace(model, x).network == net  # fx's constants of a second trace get new names; the IR's do not


def test_cross_covariance_attention_shrinks_by_whole_heads_with_their_temperatures() -> None:
    torch.manual_seed(0)
    model, x = TinyEdgeNeXt().eval(), torch.randn(2, 3, 32, 32)
    traced = netopt.trace(model, x)
    (attention,) = [n for n in traced.network.nodes if n.op is OpKind.ATTENTION]
    assert attention.attrs.channels and attention.attrs.qk_dim == DIM // HEADS
    (heads,) = _xca_heads(traced.network)
    assert traced.network.group(heads).full_width == HEADS
    module = traced.materialize(traced.network.with_widths({heads: 2}))
    xca = next(m for m in module.modules() if isinstance(m, CrossCovarianceAttention))
    assert xca.temperature.shape == (2, 1, 1)
    assert set(xca.temperature.flatten().tolist()) <= set(model.xca.temperature.flatten().tolist())


def test_a_head_that_contributes_nothing_is_the_one_removed_exactly() -> None:
    """Zero head 2's q, k and v rows: its normalized q and k and its v are zero, so its output is;
    removing that head (and its temperature) leaves the outputs unchanged."""
    torch.manual_seed(0)
    model, x = TinyEdgeNeXt().eval(), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model.xca.qkv.weight.view(3, HEADS, DIM // HEADS, DIM)[:, 2] = 0
        model.xca.qkv.bias.view(3, HEADS, DIM // HEADS)[:, 2] = 0
    traced = netopt.trace(model, x)
    (heads,) = _xca_heads(traced.network)
    smaller = traced.materialize(traced.network.with_widths({heads: HEADS - 1}))
    xca = next(m for m in smaller.modules() if isinstance(m, CrossCovarianceAttention))
    kept = model.xca.temperature.flatten()[[0, 1, 3]]
    assert torch.equal(xca.temperature.flatten(), kept)
    assert max_abs_diff(smaller, model, x) <= 1e-5


def test_a_constant_that_is_not_a_map_is_still_refused_in_one_line() -> None:
    class Ramp(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return x.flatten(1) + torch.arange(x.shape[1] * x.shape[2] * x.shape[3]).float()

    with pytest.raises(UnsupportedOpError, match=r"_tensor_constant0.*opaque=") as info:
        netopt.trace(Ramp().eval(), torch.randn(1, 3, 4, 4))
    assert "\n" not in str(info.value)


def test_timm_edgenext_is_exact_and_shrinks_its_heads_and_position_encoding() -> None:
    timm = import_timm()
    torch.manual_seed(0)
    model, x = timm.create_model("edgenext_xx_small", pretrained=False).eval(), torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # timm's 1e-6 layer scales would hide any error in the attention at full width
        for name, p in model.named_parameters():
            if name.rpartition(".")[2] in ("gamma", "gamma_xca", "temperature"):
                p.copy_(torch.rand_like(p) + 0.5)
    traced = _check_exact(model, x)
    net = traced.network
    assert sum(n.op is OpKind.CONSTANT for n in net.nodes) == 1
    assert sum(n.op is OpKind.ATTENTION and n.attrs.channels for n in net.nodes) == 3
    assert [net.group(g).full_width for g in _xca_heads(net)] == [4, 4, 4]


@settings(max_examples=15, deadline=None, database=None)
@given(nst.networks(max_blocks=2, blocks=("xca",)), st.integers(0, 1000))
def test_xca_networks_round_trip_and_run_as_built(net: Network, seed: int) -> None:
    torch.manual_seed(seed)
    model, x = build(net).eval(), torch.randn(2, *net.input_shape)
    traced = netopt.trace(model, x)
    assert traced.network == net
    assert max_abs_diff(traced.materialize(), model, x) <= 1e-5
    assert any(isinstance(m, Constant) for m in model.modules())


@settings(max_examples=15, deadline=None, database=None)
@given(nst.networks(max_blocks=2, blocks=("xca",)), st.data())
def test_materialized_xca_networks_have_the_ir_sizes(net: Network, data: st.DataObject) -> None:
    smaller = net.with_widths(data.draw(nst.widths(net)))
    smaller.lint()
    torch.manual_seed(data.draw(st.integers(0, 1000)))
    model, x = build(net).eval(), torch.randn(1, *net.input_shape)
    module = netopt.trace(model, x).materialize(smaller)
    assert module_params(module) == netopt.ir.params(smaller) and module_macs(module, x) == netopt.ir.macs(smaller)


@settings(max_examples=5, deadline=None, database=None)
@given(nst.networks(max_blocks=1, blocks=("xca",)))
def test_xca_networks_run_in_onnx_runtime_as_in_torch(net: Network) -> None:
    from netopt.measure.onnxrt import OnnxRuntimeCPU, export_onnx

    model, x = build(net).eval(), torch.randn(1, *net.input_shape)
    session = OnnxRuntimeCPU(threads=1).session(export_onnx(model, x))
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert float(abs(torch.from_numpy(out) - model(x)).max()) <= 1e-4
