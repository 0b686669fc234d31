"""Hypothesis strategies for netopt's IR: random valid networks and random valid widths.

Public, for users who property-test their own constraints and estimators:

    from hypothesis import given
    from netopt.testing import strategies as nst

    @given(nst.networks_with_widths())
    def test_my_cost_never_grows_when_shrinking(pair):
        net, smaller = pair
        assert my_cost(smaller) <= my_cost(net)

`budgets()` draws budgets as users write them ("37%", or an absolute number), and
`constraints()` draws netopt's torch-free constraints (MACs, parameters, memory, energy)
with random budgets and schedules, for joint-budget properties.

`networks()` draws small CNNs built from the blocks real networks use: conv-BN-activation,
depthwise-separable, residual (plain and inverted), squeeze-and-excitation, concat branches
(Fire-style), grouped convs, pooling, PoolFormer, ConvNeXt(-V2), arithmetic with constants;
with a pooled or flattened linear head. Every network
it returns passes `lint()`. This module needs only hypothesis, not torch.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from hypothesis import strategies as st

from netopt.ir import Builder, Network, OpKind
from netopt.ir.additive import AdditiveAttentionAttrs
from netopt.ir.constant import ConstantAttrs
from netopt.ir.ops import (
    AdaptivePoolAttrs,
    GrnAttrs,
    GroupNormAttrs,
    NoAttrs,
    NormalizeAttrs,
    OperandAttrs,
    PoolAttrs,
    ScalarAttrs,
)
from netopt.ir.separable import PatchAttrs
from netopt.ir.tokens import (
    AttentionAttrs,
    ClassTokenAttrs,
    HeadSliceAttrs,
    MapAttrs,
    SpaceToDepthAttrs,
    TokenSelectAttrs,
)

if TYPE_CHECKING:
    from netopt.constraints import Constraint

__all__ = ["ACTIVATIONS", "BLOCKS", "CHANNEL_MIXING", "networks", "widths", "networks_with_widths", "budgets",
           "constraints"]

ACTIVATIONS = (OpKind.RELU, OpKind.RELU6, OpKind.HARDSWISH, OpKind.HARDSIGMOID,
               OpKind.SILU, OpKind.SIGMOID, OpKind.GELU, OpKind.LEAKY_RELU)

BLOCKS = ("conv", "dwsep", "residual", "inverted", "se", "concat", "grouped", "pool",
          "convnext", "split", "resize", "shuffle", "eca", "decoder", "poolformer", "convnextv2", "arith", "vit", "psa",
          "merge", "normalize", "talking", "additive", "separable", "xca")

CHANNEL_MIXING = ("convnext", "eca", "poolformer", "convnextv2", "vit", "psa", "normalize", "talking", "xca")
"""Blocks whose ops mix channels without weights (LayerNorm and GroupNorm statistics, ECA's filter
across channels, GRN's mean over channels, F.normalize's norm, XCA's softmax across a head's channels):
cutting a channel that contributes nothing to the layers after it still changes them."""

_channels = st.sampled_from((8, 12, 16, 24, 32))
Draw = st.DrawFn


def _c(b: Builder, x: str) -> int:
    """Channels of `x` at full width (the builder's network is not frozen yet)."""
    return Network(tuple(b.nodes), b.input_shape, (x,), step=b.step).shape(x)[0]


def _hw(b: Builder, x: str) -> tuple[int, ...]:
    return Network(tuple(b.nodes), b.input_shape, (x,), step=b.step).shape(x)[1:]


def _act(draw: Draw, b: Builder, x: str) -> str:
    return b.act(x, draw(st.sampled_from(ACTIVATIONS)))


def _conv_bn_act(draw: Draw, b: Builder, x: str, out: int, k: int = 3, stride: int = 1, groups: int = 1) -> str:
    return _act(draw, b, b.bn(b.conv(x, out, k, stride=stride, groups=groups)))


def _block(draw: Draw, b: Builder, x: str, kind: str) -> str:
    c = _c(b, x)
    if kind == "conv":
        stride = draw(st.sampled_from((1, 2))) if min(_hw(b, x)) >= 4 else 1
        return _conv_bn_act(draw, b, x, draw(_channels), draw(st.sampled_from((1, 3))), stride)
    if kind == "dwsep":
        mult = draw(st.sampled_from((1, 1, 2)))
        y = _conv_bn_act(draw, b, x, c * mult, 3, groups=c)
        return _conv_bn_act(draw, b, y, draw(_channels), 1)
    if kind == "residual":
        y = _conv_bn_act(draw, b, x, draw(_channels), 3)
        y = b.dropout(y, 0.1) if draw(st.booleans()) else y
        shortcut = b.add(OpKind.IDENTITY, [x]) if draw(st.booleans()) else x
        return b.add_(b.bn(b.conv(y, c, 3)), shortcut)
    if kind == "inverted":
        hidden = c * draw(st.sampled_from((2, 3)))
        y = _conv_bn_act(draw, b, x, hidden, 1)
        y = _conv_bn_act(draw, b, y, hidden, 3, groups=hidden)
        return b.add_(x, b.bn(b.conv(y, c, 1)))
    if kind == "se":
        s = b.adaptive_avgpool(x)
        s = b.act(b.conv(s, draw(st.sampled_from((8, 16))), 1, bias=True), OpKind.RELU)
        s = b.act(b.conv(s, c, 1, bias=True), draw(st.sampled_from((OpKind.SIGMOID, OpKind.HARDSIGMOID))))
        return b.mul(s, x) if draw(st.booleans()) else b.mul(x, s)
    if kind == "concat":
        squeeze = _conv_bn_act(draw, b, x, draw(st.sampled_from((8, 16))), 1)
        left = _conv_bn_act(draw, b, squeeze, draw(_channels), 1)
        right = _conv_bn_act(draw, b, squeeze, draw(_channels), 3)
        return b.concat(left, right)
    if kind == "grouped":
        g = draw(st.sampled_from([g for g in (2, 4) if c % g == 0] or [1]))
        return _conv_bn_act(draw, b, x, g * draw(st.sampled_from((4, 8))), 3, groups=g)
    if kind in _NEWER:
        return _NEWER[kind](draw, b, x, c)
    if min(_hw(b, x)) >= 2:  # pool
        h, w = _hw(b, x)
        which = draw(st.sampled_from(("max", "avg", "adaptive_max")))
        if which == "adaptive_max":
            return b.add(OpKind.ADAPTIVE_MAXPOOL2D, [x], AdaptivePoolAttrs(output_size=(h // 2, w // 2)))
        return b.maxpool(x, 2) if which == "max" else b.avgpool(x, 2)
    return x


def _convnext(draw: Draw, b: Builder, x: str, c: int) -> str:
    """ConvNeXt: depthwise 7x7, channel LayerNorm, an MLP of 1x1 convs, layer scale, drop-path."""
    y = b.layernorm(b.conv(x, c, 7, groups=c, bias=True))
    y = b.conv(b.act(b.conv(y, 4 * c, 1, bias=True), OpKind.GELU), c, 1, bias=True)
    return b.add_(x, b.droppath(b.scale(y)))


def _split(draw: Draw, b: Builder, x: str, c: int) -> str:
    """Two channel ranges of one tensor, each convolved, concatenated (GhostNet, CSP, Res2Net)."""
    cut = draw(st.integers(1, c - 1))
    left = _conv_bn_act(draw, b, b.slice(x, 0, cut), draw(_channels), 1)
    right = _conv_bn_act(draw, b, b.slice(x, cut, c), draw(_channels), 3)
    return b.concat(left, right)


def _resize(draw: Draw, b: Builder, x: str, c: int) -> str:
    """Upsample, then a padded stride-2 conv back to the size (a decoder step, TF 'same')."""
    y = b.upsample(x, 2.0, draw(st.sampled_from(("nearest", "bilinear"))))
    return _conv_bn_act(draw, b, b.pad(y, (0, 1, 0, 1)), draw(_channels), 3, stride=2)


def _shuffle(draw: Draw, b: Builder, x: str, c: int) -> str:
    """ShuffleNet: two branches concatenated and interleaved."""
    w = draw(st.sampled_from((8, 16)))
    both = b.concat(_conv_bn_act(draw, b, x, w, 1), _conv_bn_act(draw, b, x, w, 3))
    return b.shuffle(both, 2)


def _decoder(draw: Draw, b: Builder, x: str, c: int) -> str:
    """A U-Net decoder step: a transposed conv doubles the size, a stride-2 conv halves it again."""
    k = draw(st.sampled_from((2, 3)))
    y = b.conv_transpose(x, draw(_channels), k, stride=2, padding=k - 2, output_padding=k - 2, bias=True)
    return _conv_bn_act(draw, b, _act(draw, b, b.bn(y)), draw(_channels), 3, stride=2)


def _eca(draw: Draw, b: Builder, x: str, c: int) -> str:
    return b.eca(_conv_bn_act(draw, b, x, draw(_channels), 3), draw(st.sampled_from((3, 5))))


def _poolformer(draw: Draw, b: Builder, x: str, c: int) -> str:
    """PoolFormer / RepMixer: GroupNorm (one group, equal blocks, or one a channel), `pool(y) - y`, a residual."""
    g = draw(st.sampled_from([g for g in (1, 2, 4, c) if c % g == 0]))
    y = b.add(OpKind.GROUP_NORM, [x], GroupNormAttrs(num_groups=g, bias=draw(st.booleans())))
    pooled = b.add(OpKind.AVGPOOL2D, [y], PoolAttrs(kernel_size=(3, 3), stride=(1, 1), padding=(1, 1),
                                                     count_include_pad=False))
    return b.add_(x, b.add(OpKind.SUB, [pooled, y], OperandAttrs()))


def _convnextv2(draw: Draw, b: Builder, x: str, c: int) -> str:
    """ConvNeXt-V2: ConvNeXt's block with a global response norm after the MLP's activation."""
    y = b.layernorm(b.conv(x, c, 7, groups=c, bias=True))
    y = b.add(OpKind.GRN, [b.act(b.conv(y, 4 * c, 1, bias=True), OpKind.GELU)], GrnAttrs())
    return b.add_(x, b.conv(y, c, 1, bias=True))


def _arith(draw: Draw, b: Builder, x: str, c: int) -> str:
    """HGNetV2's learnable scalar affine or MetaFormer's StarReLU, a gate `1 - sigmoid`, a negation,
    and division by a constant (RepViT's `(a + b) / 2`) or by a tensor."""
    y = b.add(draw(st.sampled_from((OpKind.SCALAR_AFFINE, OpKind.STAR_RELU))), [_conv_bn_act(draw, b, x, c, 3)])
    s = b.act(y, OpKind.SIGMOID)
    z = b.mul(x, b.add(OpKind.SUB, [s], OperandAttrs(scalar=1.0, reverse=True)))
    z = b.add(OpKind.NEG, [z]) if draw(st.booleans()) else z
    if draw(st.booleans()):
        return b.add(OpKind.DIV, [z, b.add(OpKind.ADD, [s], ScalarAttrs(scalar=1.0))], OperandAttrs())
    return b.add(OpKind.DIV, [b.add_(x, z)], OperandAttrs(scalar=draw(st.sampled_from((2.0, 3.0)))))


def _normalize(draw: Draw, b: Builder, x: str, c: int) -> str:
    """SwiftFormer's q and k: a projection normalized (L2) across its channels, on the map or on its tokens."""
    if draw(st.booleans()):
        h, w = _hw(b, x)
        t = b.linear(b.add(OpKind.TOKENS, [x]), draw(_channels))
        t = b.linear(b.add(OpKind.NORMALIZE, [t], NormalizeAttrs()), c)
        return b.add(OpKind.TO_MAP, [t], MapAttrs(height=h, width=w))
    y = b.add(OpKind.NORMALIZE, [_conv_bn_act(draw, b, x, draw(_channels), 1)], NormalizeAttrs())
    return b.add_(x, b.conv(y, c, 1))


def _additive(draw: Draw, b: Builder, x: str, c: int) -> str:
    """SwiftFormer's additive attention on the map's tokens: q and k projections normalized across
    their channels, the attention, a projection plus q, a linear back to the map's width, a residual."""
    h, w = _hw(b, x)
    t, d = b.add(OpKind.TOKENS, [x]), draw(_channels)
    q, k = (b.add(OpKind.NORMALIZE, [b.linear(t, d)], NormalizeAttrs()) for _ in range(2))
    a = b.add(OpKind.ADDITIVE_ATTENTION, [q, k], AdditiveAttentionAttrs(scale=d ** -0.5))
    y = b.linear(b.add_(b.linear(a, d), q), c)
    return b.add_(x, b.add(OpKind.TO_MAP, [y], MapAttrs(height=h, width=w)))


def _vit(draw: Draw, b: Builder, x: str, c: int) -> str:
    """A transformer block on the map's tokens: (class token,) position embedding, multi-head
    attention with a fused qkv, an MLP, layer scale; the tokens folded back into the map."""
    h, w = _hw(b, x)
    t = b.add(OpKind.TOKENS, [x])
    cls = draw(st.booleans())
    t = b.add(OpKind.POS_EMBED, [b.add(OpKind.CLASS_TOKEN, [t], ClassTokenAttrs()) if cls else t])
    heads, dim = draw(st.sampled_from((1, 2, 3))), draw(st.sampled_from((4, 8)))
    qkv = b.linear(b.layernorm(t), 3 * heads * dim)
    q, k, v = (b.slice(qkv, i * heads * dim, (i + 1) * heads * dim) for i in range(3))
    bias = draw(st.sampled_from((0, 7)))  # a relative position bias of 7 positions, or none
    a = b.add(OpKind.ATTENTION, [q, k, v], _windows(draw, AttentionAttrs(qk_dim=dim, v_dim=dim, scale=dim ** -0.5,
                                                                         bias_positions=bias), h, w, cls))
    t = b.add_(t, b.linear(a, c))
    t = b.add_(t, b.scale(b.linear(b.act(b.linear(b.layernorm(t), 2 * c), OpKind.GELU), c)))
    t = b.add(OpKind.TOKEN_SELECT, [t], TokenSelectAttrs(start=1, stop=h * w + 1)) if cls else t
    return b.add(OpKind.TO_MAP, [t], MapAttrs(height=h, width=w))


def _windows(draw: Draw, attrs: AttentionAttrs, h: int, w: int, cls: bool) -> AttentionAttrs:
    """Swin's attention in windows of half the map a side, shifted or not (no class token), or
    EfficientViT's linear attention (no bias), or softmax attention over all the tokens."""
    if not attrs.bias_positions and draw(st.booleans()):
        return replace(attrs, linear=True, eps=1e-15, scale=1.0)
    if cls or h % 2 or w % 2 or not draw(st.booleans()):
        return attrs
    shift = draw(st.sampled_from((0, 1)))
    return replace(attrs, window=(h // 2, w // 2), grid=(h, w), shift=(shift, shift))


def _merge(draw: Draw, b: Builder, x: str, c: int) -> str:
    """Swin's patch merging: each 2 x 2 patch as one position of 4C channels, a 1x1 conv to C."""
    h, w = _hw(b, x)
    if h % 2 or w % 2:
        return x
    return b.bn(b.conv(b.add(OpKind.SPACE_TO_DEPTH, [x], SpaceToDepthAttrs(block=2)), c, 1))


def _psa(draw: Draw, b: Builder, x: str, c: int) -> str:
    """YOLO's PSA attention on a map: a 1x1 conv makes each head's q, k and v side by side, q is
    scaled, a depthwise conv encodes v's positions, a 1x1 conv projects, a residual."""
    heads, kd, hd = draw(st.sampled_from((1, 2, 3))), draw(st.sampled_from((4, 8))), draw(st.sampled_from((4, 8)))
    unit = 2 * kd + hd
    qkv = b.bn(b.conv(x, heads * unit, 1))
    q, k, v = (b.add(OpKind.HEAD_SLICE, [qkv], HeadSliceAttrs(unit=unit, start=s, stop=e))
               for s, e in ((0, kd), (kd, 2 * kd), (2 * kd, unit)))
    q = b.add(OpKind.MUL, [q], ScalarAttrs(scalar=kd ** -0.5))
    a = b.add(OpKind.ATTENTION, [q, k, v], AttentionAttrs(qk_dim=kd, v_dim=hd, scale=1.0))
    y = b.add_(a, b.bn(b.conv(v, heads * hd, 3, groups=heads * hd)))
    return b.add_(x, b.bn(b.conv(y, c, 1)))


def _xca(draw: Draw, b: Builder, x: str, c: int) -> str:
    """EdgeNeXt's global block on the map's tokens: a constant map (a buffer: its position encoding)
    through a 1x1 conv added to them, cross-covariance attention with a fused qkv, a projection, a residual."""
    h, w = _hw(b, x)
    fourier = b.add(OpKind.CONSTANT, [x], ConstantAttrs(shape=(draw(st.sampled_from((4, 8))), h, w)))
    t = b.add_(b.add(OpKind.TOKENS, [x]), b.add(OpKind.TOKENS, [b.conv(fourier, c, 1, bias=True)]))
    heads, dim = draw(st.sampled_from((1, 2, 3))), draw(st.sampled_from((4, 8)))
    qkv = b.linear(t, 3 * heads * dim)
    q, k, v = (b.slice(qkv, i * heads * dim, (i + 1) * heads * dim) for i in range(3))
    a = b.add(OpKind.ATTENTION, [q, k, v], AttentionAttrs(qk_dim=dim, v_dim=dim, scale=1.0, channels=True))
    return b.add(OpKind.TO_MAP, [b.add_(t, b.linear(a, c))], MapAttrs(height=h, width=w))


def _talking(draw: Draw, b: Builder, x: str, c: int) -> str:
    """EfficientFormerV2's attention on a map: q, k, v from 1x1 convs, a position bias, talking heads
    or none, a depthwise conv of v added, a projection; a residual, or in its downsampling form q from
    the map at stride 2 and the sum with a strided conv."""
    heads, kd, hd = draw(st.sampled_from((1, 2, 3))), draw(st.sampled_from((4, 8))), draw(st.sampled_from((4, 8)))
    h, w = _hw(b, x)
    down = h % 2 == 0 and w % 2 == 0 and draw(st.booleans())
    q = b.bn(b.conv(b.conv(x, c, 3, stride=2, groups=c) if down else x, heads * kd, 1))
    k, v = b.bn(b.conv(x, heads * kd, 1)), b.bn(b.conv(x, heads * hd, 1))
    attrs = AttentionAttrs(qk_dim=kd, v_dim=hd, scale=kd ** -0.5, bias_positions=draw(st.sampled_from((0, 7))),
                           talking=draw(st.booleans()))
    a = b.add(OpKind.ATTENTION, [q, k, v], attrs)
    local = b.bn(b.conv(v, heads * hd, 3, stride=2 if down else 1, groups=heads * hd))
    y = b.bn(b.conv(b.act(b.add_(a, local), OpKind.GELU), c, 1))
    return b.add_(y, b.bn(b.conv(x, c, 3, stride=2))) if down else b.add_(x, y)


def _separable(draw: Draw, b: Builder, x: str, c: int) -> str:
    """MobileViT v2: the map unfolded into its 2 x 2 patches' pixels by the patches, a 1x1 conv to
    q (one channel), k and v, separable attention of q, k and relu(v), a 1x1 conv, a residual, the
    patches folded back."""
    h, w = _hw(b, x)
    if h % 2 or w % 2:
        return x
    patches, d = PatchAttrs(patch=(2, 2), grid=(h, w)), draw(_channels)
    u = b.add(OpKind.UNFOLD_PATCHES, [x], patches)
    qkv = b.conv(u, 1 + 2 * d, 1, bias=draw(st.booleans()))
    q, k, v = b.slice(qkv, 0, 1), b.slice(qkv, 1, 1 + d), b.act(b.slice(qkv, 1 + d, 1 + 2 * d), OpKind.RELU)
    y = b.add_(u, b.conv(b.add(OpKind.SEPARABLE_ATTENTION, [q, k, v], NoAttrs()), c, 1))
    return b.add(OpKind.FOLD_PATCHES, [y], patches)


_NEWER = {"vit": _vit, "psa": _psa, "talking": _talking, "merge": _merge,
          "convnext": _convnext, "split": _split, "resize": _resize, "shuffle": _shuffle, "eca": _eca,
          "decoder": _decoder, "poolformer": _poolformer, "convnextv2": _convnextv2, "arith": _arith,
          "normalize": _normalize, "additive": _additive, "separable": _separable, "xca": _xca}


@st.composite
def networks(draw: Draw, max_blocks: int = 4, blocks: tuple[str, ...] = BLOCKS) -> Network:
    """A random valid CNN with a classifier head; widths at full size."""
    size = draw(st.sampled_from((8, 12, 16)))
    b = Builder((draw(st.sampled_from((1, 3))), size, size))
    x = _conv_bn_act(draw, b, b.input, draw(_channels), 3, draw(st.sampled_from((1, 2))))
    for kind in draw(st.lists(st.sampled_from(blocks), min_size=1, max_size=max_blocks)):
        x = _block(draw, b, x, kind)
    if draw(st.booleans()) or min(_hw(b, x)) > 4:
        x = b.adaptive_avgpool(x) if draw(st.booleans()) else b.mean(x, keepdim=True)
    x = b.flatten(x)
    if draw(st.booleans()):
        x = b.act(b.linear(x, draw(_channels)), OpKind.RELU)
        x = b.dropout(x)
    return b.build(b.linear(x, draw(st.integers(2, 10))))


@st.composite
def widths(draw: Draw, network: Network, min_groups: int = 0, bypass: bool = False) -> dict[str, int]:
    """Valid widths for a random subset of `network`'s groups (each from `valid_widths(bypass)`:
    with `bypass`, a group inside a residual branch may be 0, removing the branch)."""
    chosen: dict[str, int] = {}
    groups = network.groups
    picked = draw(st.lists(st.sampled_from(groups), unique_by=lambda g: g.id,
                           min_size=min(min_groups, len(groups)))) if groups else []
    for group in picked:
        chosen[group.id] = draw(st.sampled_from(group.valid_widths(bypass)))
    return chosen


@st.composite
def networks_with_widths(draw: Draw, max_blocks: int = 4) -> tuple[Network, Network]:
    """A random network at full width and a random valid shrinking of it."""
    net = draw(networks(max_blocks=max_blocks))
    return net, net.with_widths(draw(widths(net)))


def budgets(low: float = 0.05, high: float = 1.0,
            absolute: tuple[float, float] | None = None) -> st.SearchStrategy[str | float]:
    """Budgets relative to the start ("5%".."100%"), or absolute numbers in `absolute` when given."""
    relative = st.integers(round(low * 100), round(high * 100)).map(lambda p: f"{p}%")
    if absolute is None:
        return relative
    return st.one_of(relative, st.floats(*absolute, allow_nan=False, allow_infinity=False, exclude_min=True))


@st.composite
def constraints(draw: Draw, kinds: tuple[str, ...] = ("macs", "params", "memory", "energy"),
                low: float = 0.05, high: float = 1.0) -> Constraint:
    """One of netopt's torch-free constraints with a random relative budget and schedule."""
    from netopt.constraints import (
        EnergyConstraint,
        MACsConstraint,
        MemoryConstraint,
        ParamsConstraint,
        ReductionSchedule,
    )
    from netopt.measure.energy import EnergyModel
    from netopt.measure.memory import MemoryModel

    kind = draw(st.sampled_from(kinds))
    budget = draw(budgets(low, high))
    schedule = ReductionSchedule(f"{draw(st.integers(1, 20))}%", decay=draw(st.sampled_from((0.9, 0.96, 1.0))))
    if kind == "macs":
        return MACsConstraint(budget, schedule=schedule)
    if kind == "params":
        return ParamsConstraint(budget, schedule=schedule)
    if kind == "memory":
        return MemoryConstraint(budget, MemoryModel(), schedule)
    return EnergyConstraint(budget, EnergyModel(), schedule)
