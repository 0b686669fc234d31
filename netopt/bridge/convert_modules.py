"""Converters of the modules netopt keeps whole (one IR op each): torch.nn types in `MODULES`,
netopt's own modules, and other libraries' classes by qualified name in `FOREIGN`; with the norm,
resize and padding builders that the functional forms in convert.py share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import fx, nn

from netopt.bridge import modules as M
from netopt.bridge import token_modules as TM
from netopt.bridge.additive_modules import AdditiveAttention
from netopt.bridge.constant import Constant
from netopt.bridge.fxmeta import (
    CHANNELS_LAST,
    SHAPE,
    Converted,
    channel_count,
    channels_last,
    first,
    float_pair,
    opt_pair,
    pair,
    refuse,
)
from netopt.bridge.separable_modules import FoldPatches, SeparableAttention, UnfoldPatches
from netopt.bridge.window_modules import WindowConv2d
from netopt.bridge.xca_modules import CrossCovarianceAttention
from netopt.ir.additive import AdditiveAttentionAttrs
from netopt.ir.constant import ConstantAttrs
from netopt.ir.ops import (
    AdaptivePoolAttrs,
    AttentionAttrs,
    BatchNormAttrs,
    ClassTokenAttrs,
    Conv2dAttrs,
    ConvTranspose2dAttrs,
    DropoutAttrs,
    DropPathAttrs,
    EcaAttrs,
    GeluAttrs,
    GrnAttrs,
    GroupNormAttrs,
    HeadSliceAttrs,
    LayerNormAttrs,
    LeakyReluAttrs,
    LinearAttrs,
    MapAttrs,
    MeanAttrs,
    NoAttrs,
    NormalizeAttrs,
    OperandAttrs,
    OpKind,
    PadAttrs,
    PoolAttrs,
    ScalarAttrs,
    ShuffleAttrs,
    SliceAttrs,
    SpaceToDepthAttrs,
    TokenSelectAttrs,
    UpsampleAttrs,
)
from netopt.ir.separable import PatchAttrs

__all__ = ["MODULES", "FOREIGN", "leaf_converter", "norm_over_channels", "resize", "padding_op", "grouped_norm"]


def _conv(node: fx.Node, m: nn.Conv2d) -> Converted:
    if channels_last(first(node)[0]):
        raise refuse(node, "a Conv2d applied to a channels-last (N, H, W, C) tensor",
                     "permute back to NCHW first")
    padding = m.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        else:  # "same" with stride 1: symmetric when the dilated kernel is odd
            spans = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size, strict=True)]
            if any(s % 2 for s in spans):
                raise refuse(node, "padding='same' with an even kernel pads unevenly",
                             "use explicit padding")
            padding = (spans[0] // 2, spans[1] // 2)
    attrs = Conv2dAttrs(
        out_channels=m.out_channels, kernel_size=pair(m.kernel_size), stride=pair(m.stride),
        padding=pair(padding), dilation=pair(m.dilation), groups=m.groups,
        bias=m.bias is not None, padding_mode=m.padding_mode, window=tuple(getattr(m, "window", (0, 0))),
    )
    return OpKind.CONV2D, attrs, first(node)


def _conv_transpose(node: fx.Node, m: nn.ConvTranspose2d) -> Converted:
    if len(node.args) > 1 or node.kwargs or m.padding_mode != "zeros" or channels_last(first(node)[0]):
        raise refuse(node, "ConvTranspose2d called with output_size, or with non-zero padding_mode",
                     "give output_padding to the module instead")
    attrs = ConvTranspose2dAttrs(
        out_channels=m.out_channels, kernel_size=pair(m.kernel_size), stride=pair(m.stride),
        padding=pair(m.padding), output_padding=pair(m.output_padding), dilation=pair(m.dilation),
        groups=m.groups, bias=m.bias is not None,
    )
    return OpKind.CONV_TRANSPOSE2D, attrs, first(node)


def _linear(node: fx.Node, m: nn.Linear) -> Converted:
    if channels_last(first(node)[0]) and len(first(node)[0].meta[SHAPE]) == 4:  # over every position: a 1x1 conv
        attrs = Conv2dAttrs(out_channels=m.out_features, kernel_size=(1, 1), bias=m.bias is not None)
        return OpKind.CONV2D, attrs, first(node)
    return OpKind.LINEAR, LinearAttrs(out_features=m.out_features, bias=m.bias is not None), first(node)


def _layer_norm(node: fx.Node, m: nn.LayerNorm) -> Converted:
    return norm_over_channels(node, first(node)[0], tuple(m.normalized_shape), m.eps, m.weight is not None,
                              m.bias is not None)


def norm_over_channels(node: fx.Node, x: fx.Node, normalized: tuple[int, ...], eps: float,
                       affine: bool, bias: bool = True) -> Converted:
    shape = x.meta[SHAPE]
    over_channels = len(shape) == 2 or (channels_last(x) and len(shape) in (3, 4))  # 3: tokens
    if not over_channels or normalized != (channel_count(node, x),):
        raise refuse(node, f"LayerNorm over {normalized} of a tensor of shape {tuple(shape)}",
                     "only a LayerNorm over the channels (channels-last, or of a vector) is modelled; "
                     "")
    # bias=False only beside a weight (LayerNorm2dNoBias): without one, the default keeps the JSON as it was
    return OpKind.LAYERNORM, LayerNormAttrs(eps=float(eps), affine=affine, bias=bias or not affine), (x,)


def _drop_path(p: Callable[[Any], float], mode: Callable[[Any], str], scale: Callable[[Any], bool]
               ) -> Callable[[fx.Node, Any], Converted]:
    def convert(node: fx.Node, m: Any) -> Converted:
        attrs = DropPathAttrs(p=float(p(m)), mode=str(mode(m)), scale_by_keep=bool(scale(m)))
        return OpKind.DROPPATH, attrs, first(node)
    return convert


def _upsample(node: fx.Node, m: nn.Upsample) -> Converted:
    return resize(node, first(node)[0], m.size, m.scale_factor, m.mode, m.align_corners,
                  bool(m.recompute_scale_factor))


def resize(node: fx.Node, x: fx.Node, size: Any, scale: Any, mode: str, align_corners: Any,
           recompute: bool) -> Converted:
    if mode not in ("nearest", "bilinear") or len(x.meta[SHAPE]) != 4 or channels_last(x):
        raise refuse(node, f"resizing a tensor of shape {tuple(x.meta[SHAPE])} with mode {mode!r}",
                     "nearest and bilinear resizing of NCHW maps are modelled")
    if recompute or (size is None) == (scale is None):
        size, scale = tuple(node.meta[SHAPE][2:]), None
    attrs = UpsampleAttrs(
        mode=mode, size=None if size is None else pair(size),
        scale_factor=None if scale is None else float_pair(scale),
        align_corners=None if mode == "nearest" else bool(align_corners),
    )
    return OpKind.UPSAMPLE, attrs, (x,)



def _pad_module(node: fx.Node, m: Any) -> Converted:
    return padding_op(node, first(node)[0], tuple(m.padding), "constant", float(getattr(m, "value", 0.0)))


def padding_op(node: fx.Node, x: fx.Node, pad: tuple[int, ...], mode: str, value: float | None) -> Converted:
    if not any(pad):  # pads nothing, in any layout (Swin and EfficientViT pad windows only when needed)
        return OpKind.IDENTITY, NoAttrs(), (x,)
    if mode != "constant" or len(pad) not in (2, 4) or any(p < 0 for p in pad) or len(x.meta[SHAPE]) != 4 \
            or channels_last(x):
        raise refuse(node, f"padding {pad} (mode {mode!r}) of a tensor of shape {tuple(x.meta[SHAPE])}",
                     "constant, non-negative padding of the spatial dims of an NCHW map is modelled; "
                     "")
    full = (*pad, 0, 0) if len(pad) == 2 else pad
    return OpKind.PAD, PadAttrs(pad=tuple(int(p) for p in full), value=float(value or 0.0)), (x,)  # type: ignore[arg-type]


def _group_norm(node: fx.Node, m: nn.GroupNorm) -> Converted:
    return grouped_norm(node, first(node)[0], m.num_groups, m.eps, (m.weight is not None, m.bias is not None))


def grouped_norm(node: fx.Node, x: fx.Node, groups: int, eps: float, held: tuple[bool, bool]) -> Converted:
    """`held`: whether the norm has a weight, and a bias."""
    if len(x.meta[SHAPE]) != 4 or channels_last(x):
        raise refuse(node, f"GroupNorm of a tensor of shape {tuple(x.meta[SHAPE])}",
                     "GroupNorm of NCHW maps is modelled; ")
    attrs = GroupNormAttrs(num_groups=int(groups), eps=float(eps), affine=held[0], bias=held[1])
    return OpKind.GROUP_NORM, attrs, (x,)


def _grn(node: fx.Node, m: Any) -> Converted:
    """timm's GlobalResponseNorm, named by its class rather than matched by what it computes: its
    forward is five nodes (norm, mean, add eps, divide, addcmul) that mean GRN only together, and the
    class also says which layout it expects, checked here against the input's."""
    x = first(node)[0]
    if len(x.meta[SHAPE]) != 4 or (m.channel_dim == -1) != channels_last(x):
        raise refuse(node, f"a GlobalResponseNorm (channel_dim={m.channel_dim}) applied to a tensor of "
                     f"shape {tuple(x.meta[SHAPE])}", "")
    return OpKind.GRN, GrnAttrs(eps=float(m.eps)), (x,)


def _bn(node: fx.Node, m: nn.modules.batchnorm._BatchNorm) -> Converted:
    attrs = BatchNormAttrs(eps=m.eps, momentum=m.momentum, affine=m.affine,
                           track_running_stats=m.track_running_stats)
    return OpKind.BATCHNORM, attrs, first(node)


def _unary(kind: OpKind) -> Callable[[fx.Node, Any], Converted]:
    return lambda node, m: (kind, NoAttrs(), first(node))


def _gelu(node: fx.Node, m: nn.GELU) -> Converted:
    return OpKind.GELU, GeluAttrs(approximate=m.approximate), first(node)


def _maxpool(node: fx.Node, m: nn.MaxPool2d) -> Converted:
    if m.return_indices:
        raise refuse(node, "MaxPool2d(return_indices=True) is not modelled", "")
    stride = m.stride if m.stride is not None else m.kernel_size
    attrs = PoolAttrs(kernel_size=pair(m.kernel_size), stride=pair(stride), padding=pair(m.padding),
                      dilation=pair(m.dilation), ceil_mode=m.ceil_mode)
    return OpKind.MAXPOOL2D, attrs, first(node)


def _avgpool(node: fx.Node, m: nn.AvgPool2d) -> Converted:
    if m.divisor_override is not None:
        raise refuse(node, "AvgPool2d(divisor_override=...) is not modelled", "")
    stride = m.stride if m.stride is not None else m.kernel_size
    attrs = PoolAttrs(kernel_size=pair(m.kernel_size), stride=pair(stride), padding=pair(m.padding),
                      ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad)
    return OpKind.AVGPOOL2D, attrs, first(node)


def _adaptive(kind: OpKind) -> Callable[[fx.Node, Any], Converted]:
    def convert(node: fx.Node, m: Any) -> Converted:
        if getattr(m, "return_indices", False):
            raise refuse(node, "adaptive max pooling with return_indices is not modelled", "")
        return kind, AdaptivePoolAttrs(output_size=opt_pair(m.output_size)), first(node)
    return convert


def _dropout(node: fx.Node, m: nn.Module) -> Converted:
    return OpKind.DROPOUT, DropoutAttrs(p=float(getattr(m, "p", 0.0))), first(node)


def _nn_flatten(node: fx.Node, m: nn.Flatten) -> Converted:
    if (m.start_dim, m.end_dim) != (1, -1):
        raise refuse(node, f"Flatten(start_dim={m.start_dim}, end_dim={m.end_dim})",
                     "only flattening everything after the batch dim is modelled")
    return OpKind.FLATTEN, NoAttrs(), first(node)


def _own(kind: OpKind, attrs: Callable[[Any], Any]) -> Callable[[fx.Node, Any], Converted]:
    return lambda node, m: (kind, attrs(m), tuple(node.args))  # type: ignore[arg-type]


def _layout(kind: OpKind, attrs: Callable[[Any], Any], tokens: Callable[[Any], bool]
            ) -> Callable[[fx.Node, Any], Converted]:
    """netopt's own module of a layout op: its output is tokens (channels last) or not."""
    def convert(node: fx.Node, m: Any) -> Converted:
        node.meta[CHANNELS_LAST] = tokens(m)
        return kind, attrs(m), tuple(node.args)  # type: ignore[arg-type]
    return convert


MODULES: dict[type, Callable[[fx.Node, Any], Converted]] = {
    nn.LayerNorm: _layer_norm,
    nn.ConvTranspose2d: _conv_transpose,
    nn.LeakyReLU: lambda node, m: (OpKind.LEAKY_RELU, LeakyReluAttrs(negative_slope=m.negative_slope), first(node)),
    nn.Upsample: _upsample,
    nn.UpsamplingNearest2d: _upsample,
    nn.UpsamplingBilinear2d: _upsample,
    nn.ZeroPad2d: _pad_module,
    nn.ConstantPad2d: _pad_module,
    nn.Dropout1d: _dropout,
    nn.GroupNorm: _group_norm,
    nn.Conv2d: _conv,
    WindowConv2d: _conv,  # a conv on each window of the map apart (netopt built it: Conv2dAttrs.window)
    nn.Linear: _linear,
    nn.BatchNorm2d: _bn,
    nn.BatchNorm1d: _bn,
    nn.ReLU: _unary(OpKind.RELU),
    nn.ReLU6: _unary(OpKind.RELU6),
    nn.Hardswish: _unary(OpKind.HARDSWISH),
    nn.Hardsigmoid: _unary(OpKind.HARDSIGMOID),
    nn.SiLU: _unary(OpKind.SILU),
    nn.Sigmoid: _unary(OpKind.SIGMOID),
    nn.GELU: _gelu,
    nn.MaxPool2d: _maxpool,
    nn.AvgPool2d: _avgpool,
    nn.AdaptiveAvgPool2d: _adaptive(OpKind.ADAPTIVE_AVGPOOL2D),
    nn.AdaptiveMaxPool2d: _adaptive(OpKind.ADAPTIVE_MAXPOOL2D),
    nn.Dropout: _dropout,
    nn.Dropout2d: _dropout,
    nn.Identity: _unary(OpKind.IDENTITY),
    nn.Flatten: _nn_flatten,
    M.Add: _own(OpKind.ADD, lambda m: ScalarAttrs(scalar=m.scalar)),
    M.Mul: _own(OpKind.MUL, lambda m: ScalarAttrs(scalar=m.scalar)),
    M.Concat: _own(OpKind.CONCAT, lambda m: NoAttrs()),
    M.Flatten: _own(OpKind.FLATTEN, lambda m: NoAttrs()),
    M.Mean: _own(OpKind.MEAN, lambda m: MeanAttrs(keepdim=m.keepdim)),
    M.ChannelNorm: _own(OpKind.LAYERNORM, lambda m: LayerNormAttrs(eps=m.eps, affine=m.weight is not None,
                                                                    bias=m.bias is not None or m.weight is None)),
    M.ChannelScale: _own(OpKind.SCALE, lambda m: NoAttrs()),
    M.DropPath: _own(OpKind.DROPPATH, lambda m: DropPathAttrs(p=m.p, mode=m.mode, scale_by_keep=m.scale_by_keep)),
    M.Pad: _own(OpKind.PAD, lambda m: PadAttrs(pad=m.pad, value=m.value)),
    M.Slice: _own(OpKind.SLICE, lambda m: SliceAttrs(start=m.start, stop=m.stop)),
    M.ChannelShuffle: _own(OpKind.CHANNEL_SHUFFLE, lambda m: ShuffleAttrs(groups=m.groups)),
    M.Eca: lambda node, m: (OpKind.ECA, EcaAttrs(kernel_size=m.conv.kernel_size[0]), first(node)),
    TM.Tokens: _layout(OpKind.TOKENS, lambda m: NoAttrs(), lambda m: True),
    TM.ToMap: _layout(OpKind.TO_MAP, lambda m: MapAttrs(height=m.height, width=m.width), lambda m: False),
    TM.TokenSelect: _layout(OpKind.TOKEN_SELECT, lambda m: TokenSelectAttrs(start=m.start, stop=m.stop),
                            lambda m: m.stop is not None),
    TM.ClassToken: _own(OpKind.CLASS_TOKEN, lambda m: ClassTokenAttrs(tokens=m.weight.shape[1])),
    TM.PositionEmbedding: _own(OpKind.POS_EMBED, lambda m: NoAttrs()),
    TM.Attention: _own(OpKind.ATTENTION, lambda m: AttentionAttrs(
        qk_dim=m.qk_dim, v_dim=m.v_dim, scale=m.scale,
        bias_positions=m.attention_biases.shape[1] if hasattr(m, "attention_biases") else 0,
        window=m.window, grid=m.grid, shift=m.shift, linear=m.linear, eps=m.eps, patch=m.patch,
        talking=hasattr(m, "talking_head1"))),
    TM.HeadSlice: _own(OpKind.HEAD_SLICE, lambda m: HeadSliceAttrs(unit=m.unit, start=m.start, stop=m.stop)),
    TM.TokenBatchNorm: lambda node, m: _layout(OpKind.BATCHNORM, lambda m: _bn(node, m)[1], lambda m: True)(node, m),
    TM.SpaceToDepth: _own(OpKind.SPACE_TO_DEPTH, lambda m: SpaceToDepthAttrs(block=m.block)),
    M.Sub: _own(OpKind.SUB, lambda m: OperandAttrs(scalar=m.scalar, reverse=m.reverse)),
    M.Div: _own(OpKind.DIV, lambda m: OperandAttrs(scalar=m.scalar, reverse=m.reverse)),
    M.Neg: _unary(OpKind.NEG),
    M.Grn: lambda node, m: (OpKind.GRN, GrnAttrs(eps=m.eps), first(node)),
    M.ScalarAffine: _unary(OpKind.SCALAR_AFFINE),
    M.StarRelu: _unary(OpKind.STAR_RELU),
    M.Normalize: lambda node, m: (OpKind.NORMALIZE, NormalizeAttrs(eps=m.eps), first(node)),
    AdditiveAttention: _own(OpKind.ADDITIVE_ATTENTION, lambda m: AdditiveAttentionAttrs(scale=m.scale, eps=m.eps)),
    UnfoldPatches: _own(OpKind.UNFOLD_PATCHES, lambda m: PatchAttrs(patch=m.patch, grid=m.grid)),
    FoldPatches: _own(OpKind.FOLD_PATCHES, lambda m: PatchAttrs(patch=m.patch, grid=m.grid)),
    SeparableAttention: _own(OpKind.SEPARABLE_ATTENTION, lambda m: NoAttrs()),
    Constant: _layout(OpKind.CONSTANT, lambda m: ConstantAttrs(shape=tuple(m.value.shape[1:])), lambda m: False),
    CrossCovarianceAttention: _own(OpKind.ATTENTION, lambda m: AttentionAttrs(qk_dim=m.dim, v_dim=m.dim, scale=1.0,
                                                                             channels=True)),
}

def _eca(node: fx.Node, m: Any) -> Converted:
    conv = m.conv
    sigmoid = type(m.gate).__name__ == "Sigmoid"  # torch's or timm's own
    plain = getattr(m, "conv2", None) is None and sigmoid and isinstance(conv, nn.Conv1d)
    if not plain or conv.bias is not None or (conv.in_channels, conv.out_channels) != (1, 1) \
            or conv.padding != ((conv.kernel_size[0] - 1) // 2,):
        raise refuse(node, "an EcaModule with an MLP, a bias or another gate than sigmoid",
                     f"pass opaque=[{node.target!r}] to keep it whole")
    return OpKind.ECA, EcaAttrs(kernel_size=int(conv.kernel_size[0])), first(node)


FOREIGN: dict[str, Callable[[fx.Node, Any], Converted]] = {
    "timm.layers.eca.EcaModule": _eca,
    "timm.layers.grn.GlobalResponseNorm": _grn,
    "timm.models.hgnet.LearnableAffineBlock": _unary(OpKind.SCALAR_AFFINE),  # scale * x + bias, 1-element
    "timm.models.metaformer.StarReLU": _unary(OpKind.STAR_RELU),  # scale * relu(x) ** 2 + bias, 1-element
    "timm.layers.drop.DropPath": _drop_path(lambda m: m.drop_prob, lambda m: "row", lambda m: m.scale_by_keep),
    "torchvision.ops.stochastic_depth.StochasticDepth": _drop_path(lambda m: m.p, lambda m: m.mode, lambda m: True),
}
"""Leaf modules of other libraries, by the qualified name of their class (or of a base class)."""


def leaf_converter(m: nn.Module) -> Callable[[fx.Node, Any], Converted] | None:
    """The converter of a module netopt keeps whole as one op, or None to trace into it."""
    exact = MODULES.get(type(m))
    if exact is not None:
        return exact
    for cls in type(m).__mro__:
        foreign = FOREIGN.get(f"{cls.__module__}.{cls.__qualname__}")
        if foreign is not None:
            return foreign
    return None
