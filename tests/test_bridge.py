"""trace/materialize on the zoo, filter selectors, and the errors users meet first."""

from __future__ import annotations

import copy
import io

import onnxruntime as ort
import pytest
import torch
from torch import nn

import netopt
from netopt.bridge import BNGamma, L1Magnitude, L2Magnitude, kept_channels
from netopt.errors import MaterializeError, NetoptError, TraceError, UnsupportedOpError
from netopt.ir import OpKind
from netopt.testing.torch_checks import randomize_batchnorm
from netopt.zoo import MobileNetV1, MobileNetV2, resnet_small


@pytest.fixture(scope="module")
def v2() -> netopt.Traced:
    model = randomize_batchnorm(MobileNetV2(0.5, num_classes=10)).eval()
    return netopt.trace(model, torch.randn(1, 3, 64, 64))


def halved(net: netopt.ir.Network) -> netopt.ir.Network:
    return net.with_widths({g.id: max(w for w in g.valid_widths() if w <= g.full_width // 2 or w == g.min_width)
                            for g in net.groups})


def test_zoo_models_round_trip_exactly() -> None:
    for model, size in [(MobileNetV1(0.25), 32), (resnet_small(8), 16)]:
        model = randomize_batchnorm(model).eval()
        x = torch.randn(2, 3, size, size)
        rebuilt = netopt.trace(model, x).materialize()
        assert torch.equal(rebuilt(x), model(x))


def test_halved_mobilenet_v2_saves_loads_and_runs_in_onnxruntime(v2: netopt.Traced, tmp_path) -> None:
    small = halved(v2.network)
    module = v2.materialize(small).eval()
    assert not any(t.is_meta for t in module.state_dict().values())
    original = {k: v.data_ptr() for k, v in v2.module.state_dict().items()}
    assert all(v.data_ptr() != original[k] for k, v in v2.materialize().state_dict().items())  # copies
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    again = v2.materialize(small).eval()
    again.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(again(x), module(x))
    path = tmp_path / "small.onnx"
    torch.onnx.export(module, (x,), str(path), dynamo=False, input_names=["x"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": x.numpy()})
    assert torch.allclose(torch.from_numpy(out), module(x), atol=1e-4)


def test_state_dict_keys_are_the_original_module_paths(v2: netopt.Traced) -> None:
    keys = set(v2.materialize().state_dict())
    assert keys == set(v2.module.state_dict())


def test_selectors_keep_the_strongest_filters() -> None:
    model = resnet_small(8).eval()
    traced = netopt.trace(model, torch.randn(1, 3, 16, 16))
    gid = "layers.0.0.conv1"  # a plain conv -> bn -> relu group
    conv, bn = model.get_submodule(gid), model.get_submodule("layers.0.0.bn1")
    with torch.no_grad():
        conv.weight.copy_(torch.arange(16.0).view(16, 1, 1, 1).expand_as(conv.weight))
        bn.weight.copy_(torch.arange(16.0).flip(0))
    small = traced.network.with_widths({gid: 8})
    assert kept_channels(traced, small, L2Magnitude())[gid].tolist() == list(range(8, 16))
    assert kept_channels(traced, small, L1Magnitude())[gid].tolist() == list(range(8, 16))
    assert kept_channels(traced, small, BNGamma())[gid].tolist() == list(range(8))


def test_materialized_module_follows_the_selection(v2: netopt.Traced) -> None:
    small = v2.network.with_widths({v2.network.groups[3].id: v2.network.groups[3].min_width})
    gid = small.groups[3].id
    keep = kept_channels(v2, small)[gid]
    src = v2.module.get_submodule(gid).weight
    assert torch.equal(v2.materialize(small).get_submodule(gid).weight, src[keep])


class Shuffle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(self.conv(x), 1, dims=1)  # an op the IR does not model


class WithShuffle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = Shuffle()
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.stem(x)).mean((2, 3)))


def test_unsupported_op_names_the_node_and_the_way_out() -> None:
    with pytest.raises(UnsupportedOpError, match=r"node 'roll'.*opaque=\['block'\]"):
        netopt.trace(WithShuffle(), torch.randn(1, 3, 8, 8))


def test_opaque_block_is_kept_whole_and_exact() -> None:
    model, x = WithShuffle().eval(), torch.randn(2, 3, 8, 8)
    traced = netopt.trace(model, x, opaque=["block"])
    assert traced.network.node("block").op is netopt.ir.OpKind.OPAQUE
    assert traced.network.groups == ()  # the stem feeds the opaque block: fixed
    assert torch.equal(traced.materialize()(x), model(x))
    assert netopt.ir.params(traced.network) == sum(p.numel() for p in model.parameters())


def test_wrong_example_input_says_what_the_model_wants() -> None:
    model = MobileNetV1(0.25).eval()
    with pytest.raises(TraceError, match=r"shape \(1, 1, 32, 32\) failed at node .*right channels"):
        netopt.trace(model, torch.randn(1, 1, 32, 32))
    with pytest.raises(TraceError, match=r"must be a torch\.Tensor"):
        netopt.trace(model, [1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(TraceError, match=r"shape \(3, 32, 32\)"):
        netopt.trace(model, torch.randn(3, 32, 32))


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.conv(x))


class RawParam(nn.Module):
    """A parameter read in forward: one per channel is a layer scale; one per position is not."""

    def __init__(self, shape: tuple[int, ...] = (1, 16, 4, 4)) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(8, 16, 1), nn.Conv2d(16, 8, 1)
        self.scale = nn.Parameter(torch.rand(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x) * self.scale)


def test_shared_weights_and_raw_parameters_are_refused_clearly() -> None:
    with pytest.raises(UnsupportedOpError, match="called 2 times"):
        netopt.trace(Shared(), torch.randn(1, 8, 4, 4))
    with pytest.raises(UnsupportedOpError, match=r"reads the tensor 'scale' directly.*opaque=\[''\]"):
        netopt.trace(RawParam(), torch.randn(1, 8, 4, 4))


def test_a_parameter_per_channel_is_a_layer_scale_that_shrinks() -> None:
    model = RawParam((1, 16, 1, 1)).eval()
    traced = netopt.trace(model, torch.randn(1, 8, 4, 4))
    assert [n.op for n in traced.network.nodes].count(OpKind.SCALE) == 1
    (group,) = traced.network.groups
    zeroed = copy.deepcopy(model)
    with torch.no_grad():  # channels 8.. contribute nothing, so cutting them changes nothing
        zeroed.a.weight[8:] = 0
        zeroed.a.bias[8:] = 0
    traced = netopt.trace(zeroed, torch.randn(1, 8, 4, 4))
    small = traced.materialize(traced.network.with_widths({group.id: 8}))
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(small(x), zeroed(x), atol=1e-5, rtol=0)
    assert sum(p.numel() for p in small.parameters()) == netopt.ir.params(traced.network.with_widths({group.id: 8}))


def test_materialize_refuses_a_network_from_another_model(v2: netopt.Traced) -> None:
    other = netopt.trace(MobileNetV1(0.25).eval(), torch.randn(1, 3, 32, 32)).network
    with pytest.raises(MaterializeError, match="does not come from the traced model"):
        v2.materialize(other)


def test_every_error_is_a_netopt_error() -> None:
    for cls in (TraceError, UnsupportedOpError, MaterializeError):
        assert issubclass(cls, NetoptError)
