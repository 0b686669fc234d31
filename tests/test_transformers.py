"""Vision transformers: tokens, class tokens, position embeddings and attention heads in the IR.

timm's DeiT and ViT (random init), a hand-written tiny ViT and Ultralytics' 1x1-conv attention (PSA)
trace, shrink by whole heads, MLP widths and the embedding width, materialize, and count
parameters and MACs exactly.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import netopt
from netopt.bridge.token_modules import Attention
from netopt.errors import UnsupportedOpError
from netopt.ir import Network, OpKind
from netopt.testing.peers import import_timm, import_ultralytics
from netopt.testing.torch_checks import max_abs_diff, module_macs, module_params

DIM, HEADS, HEAD_DIM = 48, 3, 16


class Block(nn.Module):
    """A pre-norm transformer block whose attention is written in one of four ways."""

    def __init__(self, separate: bool, explicit: bool, mask: bool = False) -> None:
        super().__init__()
        self.separate, self.explicit, self.mask = separate, explicit, mask
        self.norm1, self.norm2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        if separate:
            self.q, self.k, self.v = (nn.Linear(DIM, DIM) for _ in range(3))
        else:
            self.qkv = nn.Linear(DIM, 3 * DIM)
        self.proj = nn.Linear(DIM, DIM)
        self.fc1, self.act, self.fc2 = nn.Linear(DIM, 4 * DIM), nn.GELU(), nn.Linear(4 * DIM, DIM)

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, n, _ = x.shape
        if self.separate:
            q, k, v = (f(x).reshape(b, n, HEADS, HEAD_DIM).transpose(1, 2) for f in (self.q, self.k, self.v))
            return q, k, v
        q, k, v = self.qkv(x).reshape(b, n, 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def attention(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.heads(x)
        if self.explicit:
            scores = (q * HEAD_DIM ** -0.5) @ k.transpose(-2, -1)
            out = scores.softmax(dim=-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=self.mask)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    """Depth 2, width 48, 3 heads of 16, a class token and a position embedding, on 32 px images."""

    def __init__(self, separate: bool = False, explicit: bool = False, mask: bool = False) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, DIM, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, DIM) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, 65, DIM) * 0.02)
        self.blocks = nn.Sequential(*(Block(separate, explicit, mask) for _ in range(2)))
        self.norm = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def _check_exact(model: nn.Module, x: Tensor) -> netopt.Traced:
    """Full width equals the original; every group halves; sizes are exact at both widths."""
    traced = netopt.trace(model, x)
    net = traced.network
    small = net.scaled(0.5)
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


def _head_groups(net: Network) -> list[str]:
    return [g.id for g in net.groups if net.analysis.info[g.id].unit > 1]


@pytest.mark.parametrize("separate", [False, True], ids=["fused_qkv", "separate_qkv"])
@pytest.mark.parametrize("explicit", [False, True], ids=["sdpa", "matmul_softmax"])
def test_a_tiny_vit_shrinks_by_whole_heads(separate: bool, explicit: bool) -> None:
    torch.manual_seed(0)
    model, x = TinyViT(separate, explicit).eval(), torch.randn(2, 3, 32, 32)
    traced = _check_exact(model, x)
    heads = _head_groups(traced.network)
    assert len(heads) == 2 and all(traced.network.group(g).full_width == HEADS for g in heads)
    smaller = traced.network.with_widths({g: 2 for g in heads})
    attentions = [m for m in traced.materialize(smaller).modules() if isinstance(m, Attention)]
    counts = {smaller.shape(n.inputs[0])[0] // n.attrs.qk_dim for n in smaller.nodes if n.op is OpKind.ATTENTION}
    assert len(attentions) == 2 and counts == {2}


def test_a_head_that_contributes_nothing_is_the_one_removed() -> None:
    """Zero head 1's q, k and v rows (fused qkv): removing one head leaves the outputs unchanged."""
    torch.manual_seed(0)
    model, x = TinyViT().eval(), torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for block in model.blocks:
            assert isinstance(block, Block)
            rows = block.qkv.weight.view(3, HEADS, HEAD_DIM, DIM)
            rows[:, 1] = 0
            block.qkv.bias.view(3, HEADS, HEAD_DIM)[:, 1] = 0
    traced = netopt.trace(model, x)
    smaller = traced.materialize(traced.network.with_widths({g: 2 for g in _head_groups(traced.network)}))
    assert smaller.get_submodule("blocks.0.qkv").out_features == 3 * 2 * HEAD_DIM
    assert max_abs_diff(smaller, model, x) <= 1e-5


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "vit_tiny_patch16_224"])
def test_timm_vision_transformers_shrink_and_stay_exact(name: str) -> None:
    timm = import_timm()
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    traced = _check_exact(model, torch.randn(1, 3, 224, 224))
    net = traced.network
    assert len(_head_groups(net)) == 12 and {net.group(g).full_width for g in _head_groups(net)} == {3}
    assert net.group("patch_embed.proj").full_width == 192  # the embedding width, one coupled group


def test_timm_attention_written_with_matmul_and_softmax_is_modelled() -> None:
    timm = import_timm()
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=2).eval()
    for block in model.blocks:
        block.attn.fused_attn = False
    traced = _check_exact(model, torch.randn(1, 3, 224, 224))
    assert sum(n.op is OpKind.ATTENTION for n in traced.network.nodes) == 2


def test_an_attention_form_not_matched_is_refused_in_one_line() -> None:
    model = TinyViT(mask=True).eval()
    with pytest.raises(UnsupportedOpError) as info:
        netopt.trace(model, torch.randn(1, 3, 32, 32))
    message = str(info.value)
    assert "\n" not in message and "scaled_dot_product_attention" in message
    assert "node 'scaled_dot_product_attention'" in message and "opaque=['blocks.0']" in message


@pytest.mark.parametrize("class_token", [True, False], ids=["class_token", "no_class_token"])
def test_a_vit_that_averages_its_tokens_is_modelled(class_token: bool) -> None:
    """timm's global_pool='avg': the mean over the tokens (after the class token, when there is one)."""
    timm = import_timm()
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, global_pool="avg",
                              class_token=class_token, no_embed_class=not class_token).eval()
    traced = _check_exact(model, torch.randn(1, 3, 224, 224))
    assert any(n.op is OpKind.MEAN for n in traced.network.nodes)


@pytest.mark.parametrize("block", ["Attention", "PSABlock"])
def test_attention_written_with_1x1_convs_on_maps_shrinks_by_whole_heads(block: str) -> None:
    """Ultralytics' PSA attention: each head's q, k and v side by side in one 1x1 conv's output."""
    import_ultralytics()
    from ultralytics.nn.modules import block as blocks

    torch.manual_seed(0)
    attention = blocks.Attention(64, num_heads=2) if block == "Attention" else blocks.PSABlock(64, num_heads=2)
    model = nn.Sequential(nn.Conv2d(3, 64, 3, 2, 1), attention, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(64, 10)).eval()
    traced = _check_exact(model, torch.randn(1, 3, 20, 20))
    (heads,) = _head_groups(traced.network)
    smaller = traced.network.with_widths({heads: 1})
    qkv = "1.qkv.conv" if block == "Attention" else "1.attn.qkv.conv"
    assert traced.materialize(smaller).get_submodule(qkv).out_channels == 64  # one head of 32 + 2 x 16


class SingleHead(nn.Module):
    """SHViT's single-head attention on a map: q, k, v channel ranges of one conv, flattened."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.qkv, self.proj = nn.Conv2d(3, 32, 3, 2, 1), nn.Conv2d(32, 48, 1), nn.Conv2d(16, 10, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        b, _, h, w = x.shape
        q, k, v = (t.flatten(2) for t in torch.split(self.qkv(x), [16, 16, 16], dim=1))
        attn = ((q.transpose(-2, -1) @ k) * 0.25).softmax(dim=-1)
        return self.proj((v @ attn.transpose(-2, -1)).reshape(b, 16, h, w))


def test_single_head_attention_on_a_map_is_modelled_and_kept_whole() -> None:
    torch.manual_seed(0)
    traced = _check_exact(SingleHead().eval(), torch.randn(1, 3, 16, 16))
    (attention,) = [n for n in traced.network.nodes if n.op is OpKind.ATTENTION]
    assert attention.attrs.qk_dim == 16 and not _head_groups(traced.network)


def test_spatial_reduction_attention_shrinks_q_and_kv_by_whole_heads() -> None:
    """PVT-v2: q from the tokens, k and v from one projection of a strided conv's tokens."""
    timm = import_timm()
    torch.manual_seed(0)
    model = timm.create_model("pvt_v2_b0", pretrained=False).eval()
    traced = _check_exact(model, torch.randn(1, 3, 64, 64))
    net = traced.network
    head = net.group("stages.1.blocks.0.attn.q")
    assert head.producers == ("stages.1.blocks.0.attn.q", "stages.1.blocks.0.attn.kv") and head.full_width == 2


def test_a_relative_position_bias_loses_the_rows_of_the_heads_removed() -> None:
    """EfficientFormer: each head's q, k, v side by side in one projection, a (heads, positions)
    bias added to the scores. Silence head 1: removing one head leaves the outputs unchanged, so
    the kept heads kept their own bias rows."""
    timm = import_timm()
    torch.manual_seed(0)
    model = timm.create_model("efficientformer_l1", pretrained=False).eval()
    mixer = model.get_submodule("stages.3.blocks.4.token_mixer")
    with torch.no_grad():
        mixer.attention_biases.normal_()
        mixer.qkv.weight.view(8, 192, -1)[1] = 0
        mixer.qkv.bias.view(8, 192)[1] = 0
    x = torch.randn(1, 3, 224, 224)
    traced = netopt.trace(model, x)
    (heads,) = _head_groups(traced.network)
    smaller = traced.materialize(traced.network.with_widths({heads: 7}))
    attention = next(m for m in smaller.modules() if isinstance(m, Attention))
    assert tuple(attention.attention_biases.shape) == (7, 49)
    assert max_abs_diff(smaller, model, x) <= 1e-4


class MultiQuery(nn.Module):
    """MobileNetV4's multi-query attention on a map: 4 query heads of 8 share one k and one v head
    (strided k and v), written as timm writes it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, 2, 1)
        self.query = nn.Conv2d(32, 4 * 8, 1, bias=False)
        self.key = nn.Sequential(nn.Conv2d(32, 32, 3, 2, 1, groups=32), nn.Conv2d(32, 8, 1, bias=False))
        self.value = nn.Sequential(nn.Conv2d(32, 32, 3, 2, 1, groups=32), nn.Conv2d(32, 8, 1, bias=False))
        self.output, self.head = nn.Conv2d(4 * 8, 32, 1), nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        b, _, h, w = x.shape
        q = self.query(x).reshape(b, 4, 8, -1).transpose(-1, -2).contiguous()
        k, v = (t.reshape(b, 8, -1).transpose(1, 2).unsqueeze(1).contiguous() for t in (self.key(x), self.value(x)))
        o = F.scaled_dot_product_attention(q, k, v)
        o = o.transpose(1, 2).reshape(b, h, w, 4 * 8).permute(0, 3, 1, 2).contiguous()
        return self.head((x + self.output(o)).mean((2, 3)))


def test_multi_query_attention_shrinks_its_query_heads_and_keeps_the_shared_head() -> None:
    torch.manual_seed(0)
    model, x = MultiQuery().eval(), torch.randn(1, 3, 16, 16)
    traced = netopt.trace(model, x)
    (heads,) = _head_groups(traced.network)
    assert traced.network.group(heads).full_width == 4
    assert max_abs_diff(traced.materialize(), model, x) <= 1e-5
    smaller = traced.network.with_widths({heads: 2})
    smaller.lint()
    module = traced.materialize(smaller)
    assert module.get_submodule("query").out_channels == 16 and module.get_submodule("output").in_channels == 16
    assert module_params(module) == netopt.ir.params(smaller) and module_macs(module, x) == netopt.ir.macs(smaller)
    assert module(x).shape == (1, 10)


class WindowBlock(nn.Module):
    """Swin's (shifted) window attention on a channels-last map, written as timm writes it: a roll,
    windows of 4 x 4, a (positions, heads) relative position bias table and the shifted-window mask."""

    def __init__(self, shift: int) -> None:
        super().__init__()
        from netopt.bridge.token_modules import shift_mask

        self.shift, self.norm = shift, nn.LayerNorm(DIM)
        self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)
        self.relative_position_bias_table = nn.Parameter(torch.randn(49, HEADS))
        self.register_buffer("relative_position_index", torch.randint(0, 49, (16, 16)))
        self.register_buffer("attn_mask", shift_mask((8, 8), (4, 4), (shift, shift)) if shift else None)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        y = torch.roll(self.norm(x), (-self.shift, -self.shift), (1, 2)) if self.shift else self.norm(x)
        y = y.view(b, 2, 4, 2, 4, c).permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, 16, c)
        q, k, v = self.qkv(y).reshape(-1, 16, 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(16, 16, -1)
        mask = bias.permute(2, 0, 1).contiguous().unsqueeze(0)
        if self.attn_mask is not None:
            mask = mask + self.attn_mask.view(1, 4, 1, 16, 16).expand(b, -1, HEADS, -1, -1).reshape(-1, HEADS, 16, 16)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(-1, 16, c)
        y = self.proj(y).view(-1, 2, 2, 4, 4, c).permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, c)
        return x + (torch.roll(y[:, :h, :w, :].contiguous(), (self.shift, self.shift), (1, 2)) if self.shift else y)


class Windows(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.blocks, self.head = nn.Conv2d(3, DIM, 4, 4), nn.Sequential(WindowBlock(0), WindowBlock(2)), \
            nn.Linear(DIM, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x).permute(0, 2, 3, 1)).mean((1, 2)))


def test_shifted_window_attention_shrinks_by_whole_heads_with_its_bias_and_mask() -> None:
    torch.manual_seed(0)
    model, x = Windows().eval(), torch.randn(2, 3, 32, 32)
    traced = _check_exact(model, x)
    windows = [n.attrs for n in traced.network.nodes if n.op is OpKind.ATTENTION]
    assert [(a.window, a.grid, a.shift, a.bias_positions) for a in windows] == [((4, 4), (8, 8), (0, 0), 49),
                                                                                ((4, 4), (8, 8), (2, 2), 49)]
    block = model.blocks[1]
    with torch.no_grad():  # silence head 1 of the shifted block: removing one head there changes nothing
        block.qkv.weight.view(3, HEADS, HEAD_DIM, DIM)[:, 1] = 0
        block.qkv.bias.view(3, HEADS, HEAD_DIM)[:, 1] = 0
    traced = netopt.trace(model, x)
    gid = next(g for g in _head_groups(traced.network) if g.startswith("blocks.1"))
    smaller = traced.materialize(traced.network.with_widths({gid: 2}))
    assert max_abs_diff(smaller, model, x) <= 1e-4


def test_timm_tiny_vit_attends_in_windows_and_shrinks() -> None:
    timm = import_timm()
    torch.manual_seed(0)
    model = timm.create_model("tiny_vit_5m_224", pretrained=False).eval()
    traced = _check_exact(model, torch.randn(1, 3, 224, 224))
    assert {n.attrs.window for n in traced.network.nodes if n.op is OpKind.ATTENTION} == {(7, 7), (0, 0)}


def test_timm_swin_shifts_windows_merges_patches_and_shrinks() -> None:
    timm = import_timm()
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, depths=(2, 2, 2, 2)).eval()
    traced = _check_exact(model, torch.randn(1, 3, 224, 224))
    net = traced.network
    assert sum(n.op is OpKind.SPACE_TO_DEPTH for n in net.nodes) == 3
    assert {n.attrs.shift for n in net.nodes if n.op is OpKind.ATTENTION} == {(0, 0), (3, 3)}
    assert len(_head_groups(net)) == 8


class LinearAttention(nn.Module):
    """EfficientViT's ReLU linear attention, written as timm writes it: a 1x1 conv makes each head's
    q, k and v side by side, v gets a column of ones, the last column normalizes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.qkv, self.proj = nn.Conv2d(3, 32, 3, 2, 1), nn.Conv2d(32, 3 * 4 * 8, 1), nn.Conv2d(32, 32, 1)
        self.kernel, self.head = nn.ReLU(), nn.Linear(32, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        b, _, h, w = x.shape
        q, k, v = self.qkv(x).reshape(b, -1, 3 * 8, h * w).transpose(-1, -2).chunk(3, dim=-1)
        q, k, v = self.kernel(q), self.kernel(k), F.pad(v, (0, 1), mode="constant", value=1.0)
        q, k, v = q.float(), k.float(), v.float()
        out = q @ (k.transpose(-1, -2) @ v)
        out = out[..., :-1] / (out[..., -1:] + 1e-15)
        return self.head((x + self.proj(out.transpose(-1, -2).reshape(b, -1, h, w))).mean((2, 3)))


def test_linear_attention_is_modelled_and_shrinks_by_whole_heads() -> None:
    torch.manual_seed(0)
    traced = _check_exact(LinearAttention().eval(), torch.randn(1, 3, 16, 16))
    (attention,) = [n for n in traced.network.nodes if n.op is OpKind.ATTENTION]
    assert attention.attrs.linear and attention.attrs.eps == 1e-15
    (heads,) = _head_groups(traced.network)
    assert traced.network.group(heads).full_width == 4


@pytest.mark.parametrize("name", ["efficientvit_b0", "mobilenetv4_hybrid_medium"])
def test_timm_linear_and_multi_query_attention_models_are_exact(name: str) -> None:
    """EfficientViT's multi-scale qkv keeps its heads whole (fixed), the rest of the model shrinks."""
    timm = import_timm()
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    _check_exact(model, torch.randn(1, 3, 224, 224))


def test_timm_levit_normalizes_flattened_tokens_and_subsamples_them() -> None:
    """LeViT: BatchNorm1d on tokens flattened to (B * N, C), q from every other token of the grid,
    q and kv heads of different sizes in one group of heads."""
    timm = import_timm()
    torch.manual_seed(0)
    model = timm.create_model("levit_128s", pretrained=False).eval()
    traced = _check_exact(model, torch.randn(1, 3, 224, 224))
    net = traced.network
    assert sum(n.op is OpKind.AVGPOOL2D for n in net.nodes) == 2
    assert net.group("stages.1.downsample.attn_downsample.kv.linear").producers == (
        "stages.1.downsample.attn_downsample.kv.linear", "stages.1.downsample.attn_downsample.q.ln.linear")


def test_timm_mobilevit_attends_across_patches_at_each_offset() -> None:
    """MobileViT unfolds a map into the tokens at each offset of its 2 x 2 patches and folds them back."""
    timm = import_timm()
    torch.manual_seed(0)
    model = timm.create_model("mobilevit_xxs", pretrained=False).eval()
    traced = _check_exact(model, torch.randn(1, 3, 128, 128))
    assert {n.attrs.patch for n in traced.network.nodes if n.op is OpKind.ATTENTION} == {(2, 2)}
