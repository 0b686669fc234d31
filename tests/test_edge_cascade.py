"""EfficientViT-M's cascaded group attention in windows that become the batch (issue 31).

timm's `LocalWindowAttention` cuts a map into windows (B * windows, C, wh, ww) and runs its
cascaded group attention on each: heads fed chunks of the channels plus the previous head's
output, q through a depthwise kxk conv padded at the window's edges, a position bias row per
head. The IR sees the whole map; the kxk conv and the attention carry the window. Each head is an
attention of one head whose q and k channels shrink in pairs (and the last head's v channels);
the embedding widths, cut into the heads' chunks, stay at full width. Checked on timm's
efficientvit_m0 and on a hand-written block of the same form.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor, nn

import netopt
from netopt.bridge.window_modules import WindowConv2d, from_windows, to_windows
from netopt.errors import IRError, UnsupportedOpError
from netopt.ir import Builder, Network, OpKind
from netopt.ir.ops import Conv2dAttrs
from netopt.testing.peers import import_timm
from netopt.testing.torch_checks import max_abs_diff, module_macs, module_params, randomize_batchnorm

DIM, HEADS, KEY, WINDOW = 16, 2, 4, 4


def _conv_bn(c_in: int, c_out: int, k: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out))


class Cascade(nn.Module):
    """Cascaded group attention as EfficientViT-M writes it, on a map of one window."""

    def __init__(self) -> None:
        super().__init__()
        val = DIM // HEADS
        self.qkvs = nn.ModuleList(_conv_bn(val, 2 * KEY + val) for _ in range(HEADS))
        self.dws = nn.ModuleList(_conv_bn(KEY, KEY, 3, groups=KEY) for _ in range(HEADS))
        self.proj = nn.Sequential(nn.ReLU(), _conv_bn(DIM, DIM))
        points = list(itertools.product(range(WINDOW), range(WINDOW)))
        offsets = {(abs(a[0] - b[0]), abs(a[1] - b[1])) for a in points for b in points}
        index = {o: i for i, o in enumerate(sorted(offsets))}
        idxs = [index[(abs(a[0] - b[0]), abs(a[1] - b[1]))] for a in points for b in points]
        self.attention_biases = nn.Parameter(torch.randn(HEADS, len(offsets)))
        self.register_buffer("attention_bias_idxs", torch.tensor(idxs).view(len(points), len(points)))

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        chunks, outs, feat = x.chunk(HEADS, dim=1), [], x[:, :0]
        bias = self.attention_biases[:, self.attention_bias_idxs]  # type: ignore[index]
        for i, (qkv, dw) in enumerate(zip(self.qkvs, self.dws, strict=True)):
            feat = qkv(chunks[i] if i == 0 else feat + chunks[i])
            q, k, v = feat.view(b, -1, h, w).split([KEY, KEY, DIM // HEADS], dim=1)
            q, k, v = dw(q).flatten(2), k.flatten(2), v.flatten(2)
            attn = ((q * KEY ** -0.5).transpose(-2, -1) @ k + bias[i]).softmax(dim=-1)
            feat = (v @ attn.transpose(-2, -1)).view(b, -1, h, w)
            outs.append(feat)
        return self.proj(torch.cat(outs, 1))


class Windows(nn.Module):
    """The map cut into WINDOW x WINDOW windows that are the batch, attended, merged back."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = Cascade()

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        x = x.permute(0, 2, 3, 1)
        x = x.view(b, h // WINDOW, WINDOW, w // WINDOW, WINDOW, c).transpose(2, 3)
        x = self.attn(x.reshape(-1, WINDOW, WINDOW, c).permute(0, 3, 1, 2))
        x = x.permute(0, 2, 3, 1).view(b, h // WINDOW, w // WINDOW, WINDOW, WINDOW, c)
        return x.transpose(2, 3).reshape(b, h, w, c).permute(0, 3, 1, 2)


class Net(nn.Module):
    """A stem, the windowed attention and an MLP as residuals, a classifier: 8 x 8 maps, 4 windows."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(3, DIM, 3), nn.ReLU())
        self.mixer = Windows()
        self.mlp = nn.Sequential(_conv_bn(DIM, 2 * DIM), nn.ReLU(), _conv_bn(2 * DIM, DIM))
        self.head = nn.Linear(DIM, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = x + self.mixer(x)
        x = x + self.mlp(x)
        return self.head(x.mean((2, 3)))


def _model() -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    return randomize_batchnorm(Net().eval()), torch.randn(2, 3, 8, 8)


def test_a_cascade_in_windows_is_exact_at_full_width_and_shrinks_around_it() -> None:
    model, x = _model()
    traced = netopt.trace(model, x)
    net = traced.network
    small = net.scaled(0.5)
    small.lint()
    assert net.groups and all(g.width < g.full_width for g in small.groups)
    assert max_abs_diff(traced.materialize(), model, x) <= 1e-5
    module = traced.materialize(small)
    assert module_params(model) == netopt.ir.params(net) and module_macs(model, x) == netopt.ir.macs(net)
    assert module_params(module) == netopt.ir.params(small) and module_macs(module, x) == netopt.ir.macs(small)
    assert Network.from_json(small.to_json()) == small
    with torch.no_grad():
        assert module(x).shape == model(x).shape


def test_the_kxk_conv_and_the_attention_carry_the_window_and_each_head_its_bias_row() -> None:
    model, x = _model()
    net = netopt.trace(model, x).network
    convs = [n.attrs.window for n in net.nodes if isinstance(n.attrs, Conv2dAttrs) and ".dws." in n.name]
    attentions = [n.attrs for n in net.nodes if n.op is OpKind.ATTENTION]
    assert convs == [(WINDOW, WINDOW)] * HEADS
    assert [(a.window, a.grid, a.bias_row) for a in attentions] == [((WINDOW, WINDOW), (8, 8), i) for i in range(HEADS)]
    assert not any(n.attrs.window[0] for n in net.nodes if isinstance(n.attrs, Conv2dAttrs) and ".dws." not in n.name)


def test_a_conv_in_windows_pads_each_window_as_the_batch_of_windows_does() -> None:
    torch.manual_seed(0)
    conv, x = WindowConv2d(4, 4, 3, padding=1, groups=4, window=(2, 3)), torch.randn(2, 4, 4, 6)
    plain = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    plain.load_state_dict(conv.state_dict())
    with torch.no_grad():
        expected = from_windows(plain(to_windows(x, (2, 3))), (4, 6))
        assert torch.allclose(conv(x), expected, atol=1e-6) and not torch.allclose(plain(x), expected, atol=1e-3)


def test_a_built_network_traces_back_to_the_same_windows() -> None:
    model, x = _model()
    traced = netopt.trace(model, x)
    built = traced.materialize(traced.network.scaled(0.5))
    again = netopt.trace(built, x)
    windows = [n.attrs.window for n in again.network.nodes if isinstance(n.attrs, Conv2dAttrs)]
    assert windows.count((WINDOW, WINDOW)) == HEADS
    assert max_abs_diff(again.materialize(), built, x) <= 1e-5


def test_a_conv_in_windows_must_keep_each_windows_size() -> None:
    b = Builder((4, 8, 8))
    with pytest.raises(IRError, match="windows"):
        b.add(OpKind.CONV2D, [b.input], Conv2dAttrs(out_channels=4, kernel_size=(3, 3), stride=(2, 2),
                                                     padding=(1, 1), groups=4, window=(4, 4)))
        Network(tuple(b.nodes), (4, 8, 8), (b.nodes[-1].name,)).lint()


def test_windows_that_need_padding_are_refused_in_one_line() -> None:
    """timm pads a map that the windows do not tile: the padded positions would enter the attention."""
    timm = import_timm()
    block = timm.models.efficientvit_msra.LocalWindowAttention(DIM, KEY, HEADS, 2, resolution=10,
                                                               window_resolution=WINDOW)
    model = nn.Sequential(block).eval()
    with pytest.raises(UnsupportedOpError) as info:
        netopt.trace(model, torch.randn(1, DIM, 10, 10))
    assert "\n" not in str(info.value) and "pass opaque=['0']" in str(info.value)


def test_timm_efficientvit_m0_goes_through_with_its_windows() -> None:
    timm = import_timm()
    torch.manual_seed(0)
    model = randomize_batchnorm(timm.create_model("efficientvit_m0", pretrained=False).eval())
    x = torch.randn(1, 3, 224, 224)
    traced = netopt.trace(model, x)
    net = traced.network
    assert sum(1 for n in net.nodes if n.op is OpKind.ATTENTION and n.attrs.window[0]) == 4  # stage 0: 14 x 14
    assert sum(1 for g in net.groups if ".attn.qkvs." in g.id) == 6 * 5  # each block: 4 heads' q/k, the last v
    assert max_abs_diff(traced.materialize(), model, x) <= 1e-4
    small = net.scaled(0.5)
    module = traced.materialize(small)
    assert module_params(module) == netopt.ir.params(small) < netopt.ir.params(net) == module_params(model)
    with torch.no_grad():
        assert module(x).shape == (1, 1000)


def test_a_heads_key_channels_that_score_nothing_are_the_ones_removed() -> None:
    """One head's q and k pair channel by channel: with k's channels 0 and 1 zero (and q's rows too,
    so that L2 picks them), dropping them from q and k leaves the scores and the outputs unchanged."""
    model, x = _model()
    conv, bn = model.get_submodule("mixer.attn.qkvs.0.0"), model.get_submodule("mixer.attn.qkvs.0.1")
    assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None
    with torch.no_grad():
        for row in (0, 1, KEY, KEY + 1):  # q's and k's rows 0 and 1
            conv.weight[row] = 0
        bn.bias[KEY:KEY + 2], bn.running_mean[KEY:KEY + 2] = 0, 0
    traced = netopt.trace(model, x, step=2)
    qk = next(g for g in traced.network.groups if g.id == "mixer.attn.qkvs.0.0")
    assert qk.full_width == KEY
    smaller = traced.materialize(traced.network.with_widths({qk.id: KEY - 2}))
    assert smaller.get_submodule("mixer.attn.qkvs.0.0").out_channels == 2 + 2 + DIM // HEADS
    assert max_abs_diff(smaller, model, x) <= 1e-5
