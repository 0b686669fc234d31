"""EfficientFormerV2's attention (issue 31): heads of 1x1 convs on a map, talking heads, a strided query.

The real timm model at a small input, timm's two attention modules alone, and a hand-written module
of the same form: traced equal at full width, heads shrinking as whole heads with both talking-head
convs losing the rows and columns of removed heads, sizes exact, and the removal of a silenced head
exact.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

import netopt
from netopt.bridge.count import counting_macs
from netopt.errors import UnsupportedOpError
from netopt.ir import Builder, Network, OpKind, macs, params
from netopt.ir.ops import AttentionAttrs
from netopt.measure.energy import EnergyModel
from netopt.testing.peers import import_timm
from netopt.testing.torch_checks import randomize_batchnorm


class TalkingAttention(nn.Module):
    """EfficientFormerV2's attention written out: q, k, v from 1x1 convs on a `size` x `size` map viewed as
    heads, a relative position bias, talking heads around the softmax (or none), a depthwise conv of v added,
    a projection; with `stride` 2 the downsampling form, whose q comes from the map at stride 2."""

    def __init__(self, dim: int = 16, heads: int = 2, key_dim: int = 4, v_dim: int = 8, size: int = 4,
                 talking: bool = True, stride: int = 1) -> None:
        super().__init__()
        self.heads, self.v_dim, self.n, self.out = heads, v_dim, size * size, size // stride
        self.scale = key_dim ** -0.5
        q = nn.Conv2d(dim, heads * key_dim, 1)
        self.q = nn.Sequential(nn.Conv2d(dim, dim, 3, stride, 1, groups=dim), q) if stride > 1 else q
        self.k, self.v = nn.Conv2d(dim, heads * key_dim, 1), nn.Conv2d(dim, heads * v_dim, 1)
        self.v_local = nn.Conv2d(heads * v_dim, heads * v_dim, 3, stride, 1, groups=heads * v_dim)
        self.attention_biases = nn.Parameter(torch.randn(heads, self.n))
        self.register_buffer("attention_bias_idxs", torch.randint(0, self.n, (self.out ** 2, self.n)))
        if talking:
            self.talking_head1, self.talking_head2 = nn.Conv2d(heads, heads, 1), nn.Conv2d(heads, heads, 1)
        self.proj = nn.Conv2d(heads * v_dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        q = self.q(x).reshape(b, self.heads, -1, self.out ** 2).permute(0, 1, 3, 2)
        k = self.k(x).reshape(b, self.heads, -1, self.n).permute(0, 1, 2, 3)
        v = self.v(x)
        local = self.v_local(v)
        v = v.reshape(b, self.heads, -1, self.n).permute(0, 1, 3, 2)
        attn = (q @ k) * self.scale + self.attention_biases[:, self.get_buffer("attention_bias_idxs")]
        if hasattr(self, "talking_head1"):
            attn = self.talking_head2(self.talking_head1(attn).softmax(dim=-1))
        else:
            attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(2, 3).reshape(b, self.heads * self.v_dim, self.out, self.out) + local
        return self.proj(nn.functional.gelu(x))  # type: ignore[no-any-return]


class Residual(nn.Module):
    """`x + attn(x)`, or with a strided attention `conv(x) + attn(x)` (EfficientFormerV2's Downsample)."""

    def __init__(self, attn: nn.Module, stride: int = 1) -> None:
        super().__init__()
        self.attn = attn
        self.conv = nn.Conv2d(16, 16, 3, stride, 1) if stride > 1 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) + self.attn(x)  # type: ignore[no-any-return]


def classifier(attn: nn.Module, stride: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), Residual(attn, stride), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, 5)).eval()


def attention_nodes(net: Network) -> list[AttentionAttrs]:
    return [n.attrs for n in net.nodes if n.op is OpKind.ATTENTION]


def check_exact(model: nn.Module, x: Tensor) -> netopt.Traced:
    """Equal at full width; every group halved, materialized, run, with the IR's parameters and MACs."""
    traced = netopt.trace(model, x)
    with torch.no_grad():
        assert (traced.materialize(traced.network)(x) - model(x)).abs().max() <= 1e-5
    small = traced.network.scaled(0.5)
    small.lint()
    module = traced.materialize(small).eval()
    with torch.no_grad(), counting_macs(module, batch=x.shape[0]) as total:
        assert module(x).shape == model(x).shape
    assert sum(p.numel() for p in module.parameters()) == params(small) < params(traced.network)
    assert total() == macs(small)
    return traced


@pytest.mark.parametrize(("talking", "stride"), [(True, 1), (False, 1), (True, 2), (False, 2)])
def test_the_hand_written_form_is_one_attention_whose_heads_shrink(talking: bool, stride: int) -> None:
    traced = check_exact(classifier(TalkingAttention(talking=talking, stride=stride), stride), torch.randn(2, 3, 4, 4))
    (attrs,) = attention_nodes(traced.network)
    assert attrs.talking is talking and attrs.bias_positions == 16 and (attrs.qk_dim, attrs.v_dim) == (4, 8)
    heads = [g for g in traced.network.groups if g.id.endswith("attn.k") or g.id.endswith("attn.q")
             or g.id.endswith("attn.q.1")]
    assert [g.full_width for g in heads] == [2]


def test_talking_heads_lose_the_rows_and_columns_of_removed_heads() -> None:
    model = classifier(TalkingAttention(heads=4), 1)
    traced = netopt.trace(model, torch.randn(1, 3, 4, 4))
    (group,) = [g for g in traced.network.groups if g.full_width == 4 and "attn" in g.id]
    module = traced.materialize(traced.network.with_widths({group.id: 2}))
    convs = [m for name, m in module.named_modules() if name.endswith(("talking_head1", "talking_head2"))]
    assert [tuple(c.weight.shape) for c in convs] == [(2, 2, 1, 1)] * 2 and all(c.bias.shape == (2,) for c in convs)


def test_removing_a_silenced_head_leaves_the_outputs_unchanged() -> None:
    """Head 1's q, k and v filters zero, and every weight that reads it (the talking-head convs'
    columns, the projection's inputs): dropping it is exact, talking heads included."""
    model, x = classifier(TalkingAttention(), 1), torch.randn(2, 3, 4, 4)
    attn: Any = model.get_submodule("1.attn")
    with torch.no_grad():
        for conv, unit in ((attn.q, 4), (attn.k, 4), (attn.v, 8)):
            conv.weight[unit:], conv.bias[unit:] = 0, 0
        attn.talking_head1.weight[:, 1], attn.talking_head2.weight[:, 1], attn.proj.weight[:, 8:] = 0, 0, 0
    traced = netopt.trace(model, x)
    (group,) = [g for g in traced.network.groups if g.full_width == 2]
    module = traced.materialize(traced.network.with_widths({group.id: 1}))
    with torch.no_grad():
        assert (module(x) - model(x)).abs().max() <= 1e-5


def test_timm_attention2d_and_its_downsampling_form_trace_exactly() -> None:
    timm = import_timm()
    from timm.models.efficientformer_v2 import Attention2d, Attention2dDownsample

    check_exact(classifier(Attention2d(16, key_dim=4, num_heads=2, attn_ratio=2, resolution=4)),
                torch.randn(1, 3, 4, 4))
    down = Attention2dDownsample(16, key_dim=4, num_heads=2, attn_ratio=2, resolution=4)
    traced = check_exact(classifier(down, 2), torch.randn(1, 3, 4, 4))
    assert timm is not None and [a.talking for a in attention_nodes(traced.network)] == [False]


def test_efficientformerv2_s0_shrinks_its_heads_and_talking_heads() -> None:
    timm = import_timm()
    torch.manual_seed(0)
    model = timm.create_model("efficientformerv2_s0", pretrained=False, img_size=64).eval()
    with torch.no_grad():  # layer scales at 1e-5 and zero biases would hide the attention from the comparison
        for name, p in model.named_parameters():
            if name.endswith(("gamma", "attention_biases")) or "talking_head" in name:
                p.uniform_(-1, 1)
    traced = check_exact(randomize_batchnorm(model, 0).eval(), torch.randn(1, 3, 64, 64))
    assert [a.talking for a in attention_nodes(traced.network)] == [True, True, False, True, True]
    heads = [g for g in traced.network.groups if g.id.endswith("token_mixer.q.conv") or g.id.endswith("q.proj.conv")]
    assert len(heads) == 5 and all(g.full_width == 8 and not g.step > 4 for g in heads)


def talking_network(talking: bool) -> Network:
    b = Builder((8, 4, 4), step=4)
    q, k, v = (b.bn(b.conv(b.input, 2 * 4, 1)) for _ in range(3))
    a = b.add(OpKind.ATTENTION, [q, k, v], AttentionAttrs(qk_dim=4, v_dim=4, scale=0.5, talking=talking))
    return b.build(b.linear(b.flatten(b.adaptive_avgpool(b.conv(a, 8, 1))), 3))


def test_the_ir_counts_the_talking_heads_parameters_macs_and_energy() -> None:
    plain, talking = talking_network(False), talking_network(True)
    assert Network.from_json(talking.to_json()) == talking and "talking" not in plain.to_json()
    assert params(talking) - params(plain) == 2 * (2 * 2 + 2)  # two (heads, heads) 1x1 convs with a bias
    assert macs(talking) - macs(plain) == 2 * 2 * 2 * 16 * 16  # each: heads x heads per score of 16 x 16
    assert EnergyModel().estimate(talking) > EnergyModel().estimate(plain)
    one_head = talking.with_widths({g.id: 1 for g in talking.groups if g.full_width == 2})
    one_head.lint()
    assert params(talking) - params(one_head) > 2 * 6 - 2 * 2


def test_one_talking_head_conv_alone_is_refused_in_one_line() -> None:
    attn = TalkingAttention()
    del attn.talking_head2
    attn.talking_head2 = nn.Identity()  # type: ignore[assignment]
    attn.talking_head1 = nn.Conv2d(2, 2, 1, bias=False)
    with pytest.raises(UnsupportedOpError, match=r"node '.*talking_head1.*opaque=\['1.attn'\]") as info:
        netopt.trace(classifier(attn), torch.randn(1, 3, 4, 4))
    assert "\n" not in str(info.value)
