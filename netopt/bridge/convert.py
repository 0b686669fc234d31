"""Tables that turn torch.fx nodes into IR ops: one converter per module type or function.

A converter gets the fx node and what it calls, and returns (OpKind, attrs, tensor inputs).
Unknown callables are refused by the caller with a message that names the node.

Modules are recognized by what they are: a torch.nn type in `MODULES` (exactly that type)
is a leaf; so is a class of another library named in `FOREIGN` (or a subclass of one), so
netopt never imports timm or torchvision. Any other module is traced into, so a subclass
that adds to `forward` (timm's `BatchNormAct2d`, `Conv2dSame`, `LayerNorm2d`) shows what it
does: `F.batch_norm`, `F.pad` + `F.conv2d`, permutes around `F.layer_norm`. Functional ops
whose parameters are read from a module (`get_attr`) are bound to that module, and a
parameter multiplied per channel (layer scale) becomes a SCALE bound to the parameter.

Channels-last regions (ConvNeXt: `permute(0, 2, 3, 1)`, LayerNorm and Linear over the last
dim, `permute(0, 3, 1, 2)`) are converted to what they compute in NCHW: the permutes become
identities, the LayerNorm a channel norm and each Linear a 1x1 convolution.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from netopt.bridge import modules as M
from netopt.bridge import token_modules as TM
from netopt.errors import UnsupportedOpError
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

__all__ = ["MODULES", "FOREIGN", "FUNCTIONS", "METHODS", "Converted", "leaf_converter", "param_path", "pieces",
           "function_converter", "shuffle_stage", "SHUFFLE", "sum_stage", "SUMMED",
           "CHANNELS_LAST", "PIECES", "SHAPES", "DTYPE"]

CHANNELS_LAST = "netopt_channels_last"
"""fx node meta key: the tensor is an NCHW map permuted to (N, H, W, C)."""
PIECES = "netopt_pieces"
"""fx node meta key: the channel ranges [start, stop) of the pieces a split/chunk returned."""
SHAPES = "netopt_shapes"
"""fx node meta key: the shapes of the tensors a node returned as a tuple."""
SHAPE = "netopt_shape"
DTYPE = "netopt_dtype"
"""fx node meta key: the dtype of the tensor the node returned on the example input."""

Converted = tuple[OpKind, Any, tuple[fx.Node, ...]]


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _opt_pair(v: Any) -> tuple[int | None, int | None]:
    return (v, v) if v is None or isinstance(v, int) else (v[0], v[1])


def _first(node: fx.Node) -> tuple[fx.Node, ...]:
    return (node.args[0],) if node.args else (node.kwargs["input"],)  # type: ignore[return-value]


def _refuse(node: fx.Node, what: str, fix: str) -> UnsupportedOpError:
    """The caller adds the opaque=[...] path of the enclosing module where `fix` has none."""
    return UnsupportedOpError(f"node {node.name!r}: {what}" + (f"; {fix}" if fix else ""))


# --- modules --------------------------------------------------------------------------------


def _conv(node: fx.Node, m: nn.Conv2d) -> Converted:
    if _channels_last(_first(node)[0]):
        raise _refuse(node, "a Conv2d applied to a channels-last (N, H, W, C) tensor",
                      "permute back to NCHW first")
    padding = m.padding
    if isinstance(padding, str):
        if padding == "valid":
            padding = (0, 0)
        else:  # "same" with stride 1: symmetric when the dilated kernel is odd
            spans = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size, strict=True)]
            if any(s % 2 for s in spans):
                raise _refuse(node, "padding='same' with an even kernel pads unevenly",
                              "use explicit padding")
            padding = (spans[0] // 2, spans[1] // 2)
    attrs = Conv2dAttrs(
        out_channels=m.out_channels, kernel_size=_pair(m.kernel_size), stride=_pair(m.stride),
        padding=_pair(padding), dilation=_pair(m.dilation), groups=m.groups,
        bias=m.bias is not None, padding_mode=m.padding_mode,
    )
    return OpKind.CONV2D, attrs, _first(node)


def _conv_transpose(node: fx.Node, m: nn.ConvTranspose2d) -> Converted:
    if len(node.args) > 1 or node.kwargs or m.padding_mode != "zeros" or _channels_last(_first(node)[0]):
        raise _refuse(node, "ConvTranspose2d called with output_size, or with non-zero padding_mode",
                      "give output_padding to the module instead")
    attrs = ConvTranspose2dAttrs(
        out_channels=m.out_channels, kernel_size=_pair(m.kernel_size), stride=_pair(m.stride),
        padding=_pair(m.padding), output_padding=_pair(m.output_padding), dilation=_pair(m.dilation),
        groups=m.groups, bias=m.bias is not None,
    )
    return OpKind.CONV_TRANSPOSE2D, attrs, _first(node)


def _linear(node: fx.Node, m: nn.Linear) -> Converted:
    if _channels_last(_first(node)[0]) and len(_first(node)[0].meta[SHAPE]) == 4:  # over every position: a 1x1 conv
        attrs = Conv2dAttrs(out_channels=m.out_features, kernel_size=(1, 1), bias=m.bias is not None)
        return OpKind.CONV2D, attrs, _first(node)
    return OpKind.LINEAR, LinearAttrs(out_features=m.out_features, bias=m.bias is not None), _first(node)


def _channels_last(x: Any) -> bool:
    return isinstance(x, fx.Node) and bool(x.meta.get(CHANNELS_LAST))


def _channels(node: fx.Node, x: fx.Node) -> int:
    """The channel count of `x` (last dim when channels-last, else dim 1)."""
    shape = x.meta[SHAPE]
    return int(shape[-1] if _channels_last(x) or len(shape) == 2 else shape[1])


def _layer_norm(node: fx.Node, m: nn.LayerNorm) -> Converted:
    return _norm_over_channels(node, _first(node)[0], tuple(m.normalized_shape), m.eps, m.weight is not None,
                               m.bias is not None)


def _norm_over_channels(node: fx.Node, x: fx.Node, normalized: tuple[int, ...], eps: float,
                        affine: bool, bias: bool = True) -> Converted:
    shape = x.meta[SHAPE]
    over_channels = len(shape) == 2 or (_channels_last(x) and len(shape) in (3, 4))  # 3: tokens
    if not over_channels or normalized != (_channels(node, x),):
        raise _refuse(node, f"LayerNorm over {normalized} of a tensor of shape {tuple(shape)}",
                      "only a LayerNorm over the channels (channels-last, or of a vector) is modelled; "
                      "")
    # bias=False only beside a weight (LayerNorm2dNoBias): without one, the default keeps the JSON as it was
    return OpKind.LAYERNORM, LayerNormAttrs(eps=float(eps), affine=affine, bias=bias or not affine), (x,)


def _drop_path(p: Callable[[Any], float], mode: Callable[[Any], str], scale: Callable[[Any], bool]
               ) -> Callable[[fx.Node, Any], Converted]:
    def convert(node: fx.Node, m: Any) -> Converted:
        attrs = DropPathAttrs(p=float(p(m)), mode=str(mode(m)), scale_by_keep=bool(scale(m)))
        return OpKind.DROPPATH, attrs, _first(node)
    return convert


def _upsample(node: fx.Node, m: nn.Upsample) -> Converted:
    return _resize(node, _first(node)[0], m.size, m.scale_factor, m.mode, m.align_corners,
                   bool(m.recompute_scale_factor))


def _resize(node: fx.Node, x: fx.Node, size: Any, scale: Any, mode: str, align_corners: Any,
            recompute: bool) -> Converted:
    if mode not in ("nearest", "bilinear") or len(x.meta[SHAPE]) != 4 or _channels_last(x):
        raise _refuse(node, f"resizing a tensor of shape {tuple(x.meta[SHAPE])} with mode {mode!r}",
                      "nearest and bilinear resizing of NCHW maps are modelled")
    if recompute or (size is None) == (scale is None):
        size, scale = tuple(node.meta[SHAPE][2:]), None
    attrs = UpsampleAttrs(
        mode=mode, size=None if size is None else _pair(size),
        scale_factor=None if scale is None else _float_pair(scale),
        align_corners=None if mode == "nearest" else bool(align_corners),
    )
    return OpKind.UPSAMPLE, attrs, (x,)


def _float_pair(v: Any) -> tuple[float, float]:
    return (float(v), float(v)) if isinstance(v, int | float) else (float(v[0]), float(v[1]))


def _pad_module(node: fx.Node, m: Any) -> Converted:
    return _padding(node, _first(node)[0], tuple(m.padding), "constant", float(getattr(m, "value", 0.0)))


def _padding(node: fx.Node, x: fx.Node, pad: tuple[int, ...], mode: str, value: float | None) -> Converted:
    if not any(pad):  # pads nothing, in any layout (Swin and EfficientViT pad windows only when needed)
        return OpKind.IDENTITY, NoAttrs(), (x,)
    if mode != "constant" or len(pad) not in (2, 4) or any(p < 0 for p in pad) or len(x.meta[SHAPE]) != 4 \
            or _channels_last(x):
        raise _refuse(node, f"padding {pad} (mode {mode!r}) of a tensor of shape {tuple(x.meta[SHAPE])}",
                      "constant, non-negative padding of the spatial dims of an NCHW map is modelled; "
                      "")
    full = (*pad, 0, 0) if len(pad) == 2 else pad
    return OpKind.PAD, PadAttrs(pad=tuple(int(p) for p in full), value=float(value or 0.0)), (x,)  # type: ignore[arg-type]


def _group_norm(node: fx.Node, m: nn.GroupNorm) -> Converted:
    return _grouped_norm(node, _first(node)[0], m.num_groups, m.eps, (m.weight is not None, m.bias is not None))


def _grouped_norm(node: fx.Node, x: fx.Node, groups: int, eps: float, held: tuple[bool, bool]) -> Converted:
    """`held`: whether the norm has a weight, and a bias."""
    if len(x.meta[SHAPE]) != 4 or _channels_last(x):
        raise _refuse(node, f"GroupNorm of a tensor of shape {tuple(x.meta[SHAPE])}",
                      "GroupNorm of NCHW maps is modelled; ")
    attrs = GroupNormAttrs(num_groups=int(groups), eps=float(eps), affine=held[0], bias=held[1])
    return OpKind.GROUP_NORM, attrs, (x,)


def _grn(node: fx.Node, m: Any) -> Converted:
    """timm's GlobalResponseNorm, named by its class rather than matched by what it computes: its
    forward is five nodes (norm, mean, add eps, divide, addcmul) that mean GRN only together, and the
    class also says which layout it expects, checked here against the input's."""
    x = _first(node)[0]
    if len(x.meta[SHAPE]) != 4 or (m.channel_dim == -1) != _channels_last(x):
        raise _refuse(node, f"a GlobalResponseNorm (channel_dim={m.channel_dim}) applied to a tensor of "
                      f"shape {tuple(x.meta[SHAPE])}", "")
    return OpKind.GRN, GrnAttrs(eps=float(m.eps)), (x,)


def _bn(node: fx.Node, m: nn.modules.batchnorm._BatchNorm) -> Converted:
    attrs = BatchNormAttrs(eps=m.eps, momentum=m.momentum, affine=m.affine,
                           track_running_stats=m.track_running_stats)
    return OpKind.BATCHNORM, attrs, _first(node)


def _unary(kind: OpKind) -> Callable[[fx.Node, Any], Converted]:
    return lambda node, m: (kind, NoAttrs(), _first(node))


def _gelu(node: fx.Node, m: nn.GELU) -> Converted:
    return OpKind.GELU, GeluAttrs(approximate=m.approximate), _first(node)


def _maxpool(node: fx.Node, m: nn.MaxPool2d) -> Converted:
    if m.return_indices:
        raise _refuse(node, "MaxPool2d(return_indices=True) is not modelled", "")
    stride = m.stride if m.stride is not None else m.kernel_size
    attrs = PoolAttrs(kernel_size=_pair(m.kernel_size), stride=_pair(stride), padding=_pair(m.padding),
                      dilation=_pair(m.dilation), ceil_mode=m.ceil_mode)
    return OpKind.MAXPOOL2D, attrs, _first(node)


def _avgpool(node: fx.Node, m: nn.AvgPool2d) -> Converted:
    if m.divisor_override is not None:
        raise _refuse(node, "AvgPool2d(divisor_override=...) is not modelled", "")
    stride = m.stride if m.stride is not None else m.kernel_size
    attrs = PoolAttrs(kernel_size=_pair(m.kernel_size), stride=_pair(stride), padding=_pair(m.padding),
                      ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad)
    return OpKind.AVGPOOL2D, attrs, _first(node)


def _adaptive(kind: OpKind) -> Callable[[fx.Node, Any], Converted]:
    def convert(node: fx.Node, m: Any) -> Converted:
        if getattr(m, "return_indices", False):
            raise _refuse(node, "adaptive max pooling with return_indices is not modelled", "")
        return kind, AdaptivePoolAttrs(output_size=_opt_pair(m.output_size)), _first(node)
    return convert


def _dropout(node: fx.Node, m: nn.Module) -> Converted:
    return OpKind.DROPOUT, DropoutAttrs(p=float(getattr(m, "p", 0.0))), _first(node)


def _nn_flatten(node: fx.Node, m: nn.Flatten) -> Converted:
    if (m.start_dim, m.end_dim) != (1, -1):
        raise _refuse(node, f"Flatten(start_dim={m.start_dim}, end_dim={m.end_dim})",
                      "only flattening everything after the batch dim is modelled")
    return OpKind.FLATTEN, NoAttrs(), _first(node)


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
    nn.LeakyReLU: lambda node, m: (OpKind.LEAKY_RELU, LeakyReluAttrs(negative_slope=m.negative_slope), _first(node)),
    nn.Upsample: _upsample,
    nn.UpsamplingNearest2d: _upsample,
    nn.UpsamplingBilinear2d: _upsample,
    nn.ZeroPad2d: _pad_module,
    nn.ConstantPad2d: _pad_module,
    nn.Dropout1d: _dropout,
    nn.GroupNorm: _group_norm,
    nn.Conv2d: _conv,
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
    M.Eca: lambda node, m: (OpKind.ECA, EcaAttrs(kernel_size=m.conv.kernel_size[0]), _first(node)),
    TM.Tokens: _layout(OpKind.TOKENS, lambda m: NoAttrs(), lambda m: True),
    TM.ToMap: _layout(OpKind.TO_MAP, lambda m: MapAttrs(height=m.height, width=m.width), lambda m: False),
    TM.TokenSelect: _layout(OpKind.TOKEN_SELECT, lambda m: TokenSelectAttrs(start=m.start, stop=m.stop),
                            lambda m: m.stop is not None),
    TM.ClassToken: _own(OpKind.CLASS_TOKEN, lambda m: ClassTokenAttrs(tokens=m.weight.shape[1])),
    TM.PositionEmbedding: _own(OpKind.POS_EMBED, lambda m: NoAttrs()),
    TM.Attention: _own(OpKind.ATTENTION, lambda m: AttentionAttrs(
        qk_dim=m.qk_dim, v_dim=m.v_dim, scale=m.scale,
        bias_positions=m.attention_biases.shape[1] if hasattr(m, "attention_biases") else 0,
        window=m.window, grid=m.grid, shift=m.shift, linear=m.linear, eps=m.eps, patch=m.patch)),
    TM.HeadSlice: _own(OpKind.HEAD_SLICE, lambda m: HeadSliceAttrs(unit=m.unit, start=m.start, stop=m.stop)),
    TM.TokenBatchNorm: lambda node, m: _layout(OpKind.BATCHNORM, lambda m: _bn(node, m)[1], lambda m: True)(node, m),
    TM.SpaceToDepth: _own(OpKind.SPACE_TO_DEPTH, lambda m: SpaceToDepthAttrs(block=m.block)),
    M.Sub: _own(OpKind.SUB, lambda m: OperandAttrs(scalar=m.scalar, reverse=m.reverse)),
    M.Div: _own(OpKind.DIV, lambda m: OperandAttrs(scalar=m.scalar, reverse=m.reverse)),
    M.Neg: _unary(OpKind.NEG),
    M.Grn: lambda node, m: (OpKind.GRN, GrnAttrs(eps=m.eps), _first(node)),
    M.ScalarAffine: _unary(OpKind.SCALAR_AFFINE),
    M.StarRelu: _unary(OpKind.STAR_RELU),
    M.Normalize: lambda node, m: (OpKind.NORMALIZE, NormalizeAttrs(eps=m.eps), _first(node)),
}

def _eca(node: fx.Node, m: Any) -> Converted:
    conv = m.conv
    sigmoid = type(m.gate).__name__ == "Sigmoid"  # torch's or timm's own
    plain = getattr(m, "conv2", None) is None and sigmoid and isinstance(conv, nn.Conv1d)
    if not plain or conv.bias is not None or (conv.in_channels, conv.out_channels) != (1, 1) \
            or conv.padding != ((conv.kernel_size[0] - 1) // 2,):
        raise _refuse(node, "an EcaModule with an MLP, a bias or another gate than sigmoid",
                      f"pass opaque=[{node.target!r}] to keep it whole")
    return OpKind.ECA, EcaAttrs(kernel_size=int(conv.kernel_size[0])), _first(node)


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


# --- functions and methods ------------------------------------------------------------------


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


_VIEWS = frozenset({"reshape", "view", "expand", "unsqueeze", "squeeze", "flatten", "expand_as", "view_as"})


def param_path(x: Any) -> str | None:
    """The qualified name of the parameter or buffer `x` reads (directly or through a view)."""
    while isinstance(x, fx.Node):
        if x.op == "get_attr":
            return str(x.target)
        name = x.target if x.op == "call_method" else getattr(x.target, "__name__", None)
        if name not in _VIEWS or not x.args:
            return None
        x = x.args[0]
    return None


def _per_channel(node: fx.Node, x: fx.Node, p: fx.Node) -> bool:
    """Whether parameter `p` broadcasts over `x` as one value per channel."""
    x_shape, p_shape = tuple(x.meta[SHAPE]), tuple(p.meta[SHAPE])
    if len(p_shape) > len(x_shape):
        return False
    p_shape = (1,) * (len(x_shape) - len(p_shape)) + p_shape
    ch = len(x_shape) - 1 if _channels_last(x) or len(x_shape) == 2 else 1
    return all(d == (x_shape[ch] if i == ch else 1) for i, d in enumerate(p_shape))


def _binary(kind: OpKind) -> Callable[[fx.Node], Converted]:
    def convert(node: fx.Node) -> Converted:
        if node.kwargs.get("alpha", 1) != 1:
            raise _refuse(node, "add with alpha is not modelled", "compute it with a plain add")
        a, b = node.args[0], _arg(node, 1, "other")
        if kind is OpKind.ADD and isinstance(a, fx.Node) and SUMMED in a.meta and isinstance(b, fx.Node):
            return kind, ScalarAttrs(), (*a.meta[SUMMED], b)  # the last add of Python's sum(xs)
        params = [x for x in (a, b) if param_path(x) is not None]
        if kind is OpKind.MUL and len(params) == 1:
            (x,) = [t for t in (a, b) if t is not params[0]]
            if isinstance(x, fx.Node) and _per_channel(node, x, params[0]):  # type: ignore[arg-type]
                return OpKind.SCALE, NoAttrs(), (x,)
        tensors = tuple(x for x in (a, b) if isinstance(x, fx.Node))
        scalars = [x for x in (a, b) if isinstance(x, int | float) and not isinstance(x, bool)]
        if len(tensors) == 2:
            return kind, ScalarAttrs(), tensors
        if len(tensors) == 1 and len(scalars) == 1:
            return kind, ScalarAttrs(scalar=float(scalars[0])), tensors
        raise _refuse(node, f"{kind.value} of {node.args!r} is not tensor-tensor or tensor-number",
                      "")
    return convert


def _operand(kind: OpKind, swap: bool = False) -> Callable[[fx.Node], Converted]:
    """SUB/DIV of two tensors, or of a tensor and a number on either side (`1 - x`: reverse);
    `swap` for torch.rsub, which takes its second argument minus its first."""
    def convert(node: fx.Node) -> Converted:
        if node.kwargs.get("alpha", 1) != 1 or node.kwargs.get("rounding_mode") is not None:
            raise _refuse(node, f"{kind.value} with alpha or rounding_mode", "compute it with plain operators")
        a, b = node.args[0], _arg(node, 1, "other")
        a, b = (b, a) if swap else (a, b)
        if isinstance(a, fx.Node) and isinstance(b, fx.Node):
            return kind, OperandAttrs(), (a, b)
        x, number = (a, b) if isinstance(a, fx.Node) else (b, a)
        if isinstance(x, fx.Node) and isinstance(number, int | float) and not isinstance(number, bool):
            return kind, OperandAttrs(scalar=float(number), reverse=x is b), (x,)
        raise _refuse(node, f"{kind.value} of {node.args!r} is not tensor-tensor or tensor-number", "")
    return convert


def _cast(node: fx.Node) -> Converted:
    """A cast to the dtype the tensor already has (`.to(torch.float32)`, `.float()`, `.to(device)`)
    is an identity; the IR has one float dtype, so any other cast is refused."""
    x = node.args[0]
    assert isinstance(x, fx.Node)
    before, after = x.meta.get(DTYPE), node.meta.get(DTYPE)
    if before is None or before != after:
        raise _refuse(node, f"a cast from {before} to {after}",
                      "the IR models tensors of one float dtype: cast the model and its input instead")
    return OpKind.IDENTITY, NoAttrs(), (x,)


def _cat(node: fx.Node) -> Converted:
    dim = _arg(node, 1, "dim", 0)
    inputs = tuple(_arg(node, 0, "tensors"))
    rank = len(inputs[0].meta[SHAPE])
    if _channels_last(inputs[0]) and dim in (rank - 1, -1):  # channels-last: the channels are the last dim
        return OpKind.CONCAT, NoAttrs(), inputs
    if dim not in (1, 1 - rank):
        raise _refuse(node, f"concatenation along dim {dim}",
                      "only channel concatenation (dim=1) is modelled")
    return OpKind.CONCAT, NoAttrs(), inputs


def _flatten_fn(node: fx.Node) -> Converted:
    start, end = _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)
    if (start, end) != (1, -1):
        raise _refuse(node, f"flatten(start_dim={start}, end_dim={end})",
                      "only flattening everything after the batch dim (start_dim=1) is modelled")
    return OpKind.FLATTEN, NoAttrs(), (node.args[0],)  # type: ignore[return-value]


SHUFFLE = "netopt_shuffle"
"""fx node meta key: (source, groups, transposed) of a channel shuffle under way."""


def shuffle_stage(node: fx.Node) -> tuple[fx.Node, int, bool] | None:
    """The first steps of a channel shuffle: view to (N, g, C/g, H, W), transpose(1, 2), contiguous."""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", None)
    x = node.args[0] if node.args else None
    if not isinstance(x, fx.Node) or SHAPE not in x.meta or SHAPE not in node.meta:
        return None
    before, after = tuple(x.meta[SHAPE]), tuple(node.meta[SHAPE])
    if name in ("view", "reshape") and len(before) == 4 and len(after) == 5 and not _channels_last(x) \
            and after[1] * after[2] == before[1] and after[3:] == before[2:] and after[1] > 1:
        return x, int(after[1]), False
    stage = x.meta.get(SHUFFLE)
    if stage is None:
        return None
    if name == "transpose" and sorted(d % 5 for d in node.args[1:3]) == [1, 2] and not stage[2]:  # type: ignore[operator]
        return stage[0], stage[1], True
    if name == "contiguous":
        return stage  # type: ignore[no-any-return]
    return None


SUMMED = "netopt_summed"
"""fx node meta key: the tensors a `torch.stack(xs)` summed over dim 0 (smp FPN's merge), or a partial
Python `sum(xs)` (`0 + x0 + x1 ...`), adds up: no IR node, one n-ary ADD at the sum's end."""


def _adds(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target is operator.add and len(node.args) == 2


def _sums_stack(node: fx.Node) -> bool:
    """`x.sum(0)` or `torch.sum(x, 0)`, without keepdim."""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", None)
    return name == "sum" and _arg(node, 1, "dim") in (0, (0,), [0]) and not _arg(node, 2, "keepdim", False)


def sum_stage(node: fx.Node) -> tuple[fx.Node, ...] | None:
    """The tensors `node` stacks for a `.sum(0)` alone, or the partial `sum(xs)` it passes to one
    more add (`0 + x0`, then `+ x1`, ...), else None: the sum's last op is one n-ary ADD of them."""
    if node.op == "call_function" and node.target is torch.stack:
        xs, dim = node.args[0], _arg(node, 1, "dim", 0)
        tensors = isinstance(xs, list | tuple) and len(xs) >= 2 and all(isinstance(x, fx.Node) for x in xs)
        ok = tensors and dim == 0 and node.users and all(_sums_stack(u) for u in node.users)
        return tuple(xs) if ok else None  # type: ignore[arg-type]
    users = list(node.users)
    if not _adds(node) or len(users) != 1 or not _adds(users[0]) or users[0].args[0] is not node \
            or not isinstance(users[0].args[1], fx.Node) or not isinstance(b := node.args[1], fx.Node):
        return None
    a = node.args[0]
    if isinstance(a, int | float) and not isinstance(a, bool) and a == 0:
        return (b,)
    return (*a.meta[SUMMED], b) if isinstance(a, fx.Node) and SUMMED in a.meta else None


def _sum(node: fx.Node) -> Converted:
    x = node.args[0]
    if not isinstance(x, fx.Node) or SUMMED not in x.meta or not _sums_stack(node):
        raise _refuse(node, "a sum over dims other than those of torch.stack(xs).sum(0)",
                      "only the sum of stacked tensors (one n-ary add) is modelled")
    return OpKind.ADD, ScalarAttrs(), x.meta[SUMMED]


def _reshape(node: fx.Node) -> Converted:
    source = node.args[0]
    assert isinstance(source, fx.Node)
    stage = source.meta.get(SHUFFLE)
    if stage is not None and stage[2] and tuple(node.meta[SHAPE]) == tuple(stage[0].meta[SHAPE]):
        return OpKind.CHANNEL_SHUFFLE, ShuffleAttrs(groups=stage[1]), (stage[0],)
    shape_in = tuple(source.meta[SHAPE])
    shape_out = tuple(node.meta[SHAPE])
    size = 1
    for d in shape_in[1:]:
        size *= d
    if shape_out == (shape_in[0], size):
        return OpKind.FLATTEN, NoAttrs(), (source,)
    if shape_out == shape_in:
        return OpKind.IDENTITY, NoAttrs(), (source,)
    raise _refuse(node, f"reshape from {shape_in} to {shape_out}",
                  "only (N, ...) -> (N, -1) is modelled")


def _mean_fn(node: fx.Node) -> Converted:
    dims = _arg(node, 1, "dim")
    keepdim = bool(_arg(node, 2, "keepdim", False))
    dims = tuple(dims) if isinstance(dims, list | tuple) else (dims,)
    rank = len(node.args[0].meta[SHAPE])  # type: ignore[union-attr]
    last = _channels_last(node.args[0])
    if rank != 4 or sorted(d % 4 for d in dims) != ([1, 2] if last else [2, 3]):
        raise _refuse(node, f"mean over dims {dims}",
                      "only the spatial mean (dims 2, 3; 1, 2 channels-last) is modelled")
    if last:  # MambaOut's head: the pooled (N, C) is a vector; with keepdim (N, 1, 1, C) stays channels-last
        node.meta[CHANNELS_LAST] = keepdim
    return OpKind.MEAN, MeanAttrs(keepdim=keepdim), (node.args[0],)  # type: ignore[return-value]


def _f_unary(kind: OpKind) -> Callable[[fx.Node], Converted]:
    return lambda node: (kind, NoAttrs(), (node.args[0],))  # type: ignore[return-value]


def _f_gelu(node: fx.Node) -> Converted:
    approximate = str(node.kwargs.get("approximate", "none"))
    return OpKind.GELU, GeluAttrs(approximate=approximate), (node.args[0],)  # type: ignore[return-value]


def _f_adaptive(kind: OpKind) -> Callable[[fx.Node], Converted]:
    def convert(node: fx.Node) -> Converted:
        size = _opt_pair(_arg(node, 1, "output_size"))
        return kind, AdaptivePoolAttrs(output_size=size), (node.args[0],)  # type: ignore[return-value]
    return convert


def _f_pool(kind: OpKind) -> Callable[[fx.Node], Converted]:
    def convert(node: fx.Node) -> Converted:
        k = _pair(_arg(node, 1, "kernel_size"))
        s = _arg(node, 2, "stride") or k
        p = _arg(node, 3, "padding", 0)
        ceil = bool(node.kwargs.get("ceil_mode", False))
        if kind is OpKind.MAXPOOL2D:
            attrs = PoolAttrs(kernel_size=k, stride=_pair(s), padding=_pair(p),
                              dilation=_pair(node.kwargs.get("dilation", 1)), ceil_mode=ceil)
        else:
            attrs = PoolAttrs(kernel_size=k, stride=_pair(s), padding=_pair(p), ceil_mode=ceil,
                              count_include_pad=bool(node.kwargs.get("count_include_pad", True)))
        return kind, attrs, (node.args[0],)  # type: ignore[return-value]
    return convert


def _f_dropout(node: fx.Node) -> Converted:
    return OpKind.DROPOUT, DropoutAttrs(p=float(_arg(node, 1, "p", 0.5))), (node.args[0],)  # type: ignore[return-value]


def _identity(node: fx.Node) -> Converted:
    return OpKind.IDENTITY, NoAttrs(), (node.args[0],)  # type: ignore[return-value]


def _owned(node: fx.Node, args: dict[str, Any], kind: str) -> None:
    """Refuse a functional op unless its parameters are the standard attributes of one module."""
    owners = set()
    for attr, arg in args.items():
        if arg is None:
            continue
        path = str(arg.target) if isinstance(arg, fx.Node) and arg.op == "get_attr" else ""
        if path.rpartition(".")[2] != attr:
            raise _refuse(node, f"{kind} with {attr} computed in forward ({getattr(arg, 'name', arg)!r})",
                          "netopt prunes weights a module holds as its own attributes")
        owners.add(path.rpartition(".")[0])
    if len(owners) != 1:
        raise _refuse(node, f"{kind} whose parameters come from {sorted(owners) or 'no module'}",
                      "netopt binds a functional op to the one module that holds its weights")


def _f_batch_norm(node: fx.Node) -> Converted:
    params = {a: _arg(node, i, a) for i, a in enumerate(("running_mean", "running_var", "weight", "bias"), 1)}
    _owned(node, params, "batch_norm")
    x = node.args[0]
    attrs = BatchNormAttrs(eps=float(_arg(node, 7, "eps", 1e-5)), momentum=_arg(node, 6, "momentum", 0.1),
                           affine=params["weight"] is not None, track_running_stats=params["running_mean"] is not None)
    return OpKind.BATCHNORM, attrs, (x,)  # type: ignore[return-value]


def _f_conv2d(node: fx.Node) -> Converted:
    weight, bias = _arg(node, 1, "weight"), _arg(node, 2, "bias")
    _owned(node, {"weight": weight, "bias": bias}, "conv2d")
    w_shape = weight.meta[SHAPE]
    padding = _arg(node, 4, "padding", 0)
    if isinstance(padding, str):
        if padding != "valid" or any(k != 1 for k in w_shape[2:]):
            raise _refuse(node, f"conv2d with padding={padding!r}", "use explicit padding")
        padding = 0
    groups = int(_arg(node, 6, "groups", 1))
    attrs = Conv2dAttrs(
        out_channels=int(w_shape[0]), kernel_size=_pair(tuple(w_shape[2:])), stride=_pair(_arg(node, 3, "stride", 1)),
        padding=_pair(padding), dilation=_pair(_arg(node, 5, "dilation", 1)), groups=groups, bias=bias is not None,
    )
    return OpKind.CONV2D, attrs, (node.args[0],)  # type: ignore[return-value]


def _f_linear(node: fx.Node) -> Converted:
    weight, bias = _arg(node, 1, "weight"), _arg(node, 2, "bias")
    _owned(node, {"weight": weight, "bias": bias}, "linear")
    out = int(weight.meta[SHAPE][0])
    if _channels_last(node.args[0]) and len(node.args[0].meta[SHAPE]) == 4:  # type: ignore[union-attr]
        return OpKind.CONV2D, Conv2dAttrs(out_channels=out, kernel_size=(1, 1), bias=bias is not None), (node.args[0],)  # type: ignore[return-value]
    return OpKind.LINEAR, LinearAttrs(out_features=out, bias=bias is not None), (node.args[0],)  # type: ignore[return-value]


def _f_leaky_relu(node: fx.Node) -> Converted:
    attrs = LeakyReluAttrs(negative_slope=float(_arg(node, 1, "negative_slope", 0.01)))
    return OpKind.LEAKY_RELU, attrs, (node.args[0],)  # type: ignore[return-value]


def _f_layer_norm(node: fx.Node) -> Converted:
    weight, bias = _arg(node, 2, "weight"), _arg(node, 3, "bias")
    _owned(node, {"weight": weight, "bias": bias}, "layer_norm")
    normalized = tuple(_arg(node, 1, "normalized_shape"))
    return _norm_over_channels(node, node.args[0], normalized, float(_arg(node, 4, "eps", 1e-5)),  # type: ignore[arg-type]
                               weight is not None, bias is not None)


def _f_normalize(node: fx.Node) -> Converted:
    """`F.normalize(x, p=2, dim=channels)`: an L2 norm across the channels, as the IR models it."""
    x, p, dim = node.args[0], _arg(node, 1, "p", 2.0), _arg(node, 2, "dim", 1)
    rank = len(x.meta[SHAPE])  # type: ignore[union-attr]
    channel = rank - 1 if _channels_last(x) or rank == 2 else 1
    if p != 2 or dim % rank != channel:
        raise _refuse(node, f"normalize with p={p}, dim={dim} of a tensor of shape {tuple(x.meta[SHAPE])}",  # type: ignore[union-attr]
                      "only the L2 norm across the channels is modelled")
    return OpKind.NORMALIZE, NormalizeAttrs(eps=float(_arg(node, 3, "eps", 1e-12))), (x,)  # type: ignore[return-value]


def _f_group_norm(node: fx.Node) -> Converted:
    weight, bias = _arg(node, 2, "weight"), _arg(node, 3, "bias")
    _owned(node, {"weight": weight, "bias": bias}, "group_norm")
    return _grouped_norm(node, node.args[0], int(_arg(node, 1, "num_groups")),  # type: ignore[arg-type]
                         float(_arg(node, 4, "eps", 1e-5)), (weight is not None, bias is not None))


def _f_pad(node: fx.Node) -> Converted:
    return _padding(node, node.args[0], tuple(_arg(node, 1, "pad")), str(_arg(node, 2, "mode", "constant")),  # type: ignore[arg-type]
                    _arg(node, 3, "value", None))


def _f_interpolate(node: fx.Node) -> Converted:
    if _arg(node, 6, "antialias", False):
        raise _refuse(node, "interpolate(antialias=True)", "")
    return _resize(node, node.args[0], _arg(node, 1, "size"), _arg(node, 2, "scale_factor"),  # type: ignore[arg-type]
                   str(_arg(node, 3, "mode", "nearest")), _arg(node, 4, "align_corners"),
                   bool(_arg(node, 5, "recompute_scale_factor")))


def _permute(node: fx.Node) -> Converted:
    args: Any = node.args
    x = args[0]
    dims: tuple[int, ...] = tuple(args[1]) if len(args) == 2 and isinstance(args[1], list | tuple) \
        else tuple(args[1:]) or tuple(node.kwargs.get("dims", ()))  # type: ignore[arg-type]
    rank = len(x.meta[SHAPE])
    dims = tuple(d % rank for d in dims)
    if rank == 4 and dims == (0, 2, 3, 1) and not _channels_last(x):
        node.meta[CHANNELS_LAST] = True
    elif rank == 4 and dims == (0, 3, 1, 2) and _channels_last(x):
        node.meta[CHANNELS_LAST] = False
    else:
        raise _refuse(node, f"permute{dims} of a tensor of shape {tuple(x.meta[SHAPE])}",
                      "only NCHW -> NHWC (0, 2, 3, 1) and back (0, 3, 1, 2) are modelled")
    return OpKind.IDENTITY, NoAttrs(), (x,)


def _getitem(node: fx.Node) -> Converted:
    x: Any
    index: Any
    x, index = node.args
    assert isinstance(x, fx.Node)
    if PIECES in x.meta:  # a piece of split/chunk
        start, stop = x.meta[PIECES][index]
        return _slice(x.args[0], start, stop)  # type: ignore[arg-type]
    shape = x.meta.get(SHAPE)
    index = index if isinstance(index, tuple) else (index,)
    if shape is None or len(shape) < 2 or _channels_last(x) or not _channel_index(index, len(shape)):
        raise _refuse(node, f"indexing {tuple(shape or ())} with {index!r}",
                      "only a range of channels (x[:, a:b]) is modelled")
    start, stop, _ = index[1].indices(shape[1])
    return _slice(x, start, stop)


def _channel_index(index: tuple[Any, ...], rank: int) -> bool:
    everything = slice(None)
    rest = index[2:]
    if rest and rest[-1] is Ellipsis:
        rest = rest[:-1]
    return (len(index) >= 2 and index[0] == everything and isinstance(index[1], slice)
            and index[1].step in (None, 1) and len(index) <= rank + 1 and all(r == everything for r in rest))


def _slice(x: fx.Node, start: int, stop: int) -> Converted:
    if start == 0 and stop == _channels(x, x):
        return OpKind.IDENTITY, NoAttrs(), (x,)
    return OpKind.SLICE, SliceAttrs(start=start, stop=stop), (x,)


def pieces(node: fx.Node) -> list[tuple[int, int]] | None:
    """Channel ranges of the tensors a split or chunk along the channels (dim 1; the last dim of
    a channels-last map) returns, else None."""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", None)
    if name not in ("split", "chunk") or node.op not in ("call_method", "call_function"):
        return None
    x = node.args[0]
    rank = len(x.meta[SHAPE])  # type: ignore[union-attr]
    dim = _arg(node, 2, "dim", 0)
    channels = rank - 1 if _channels_last(x) else 1
    if dim % rank != channels:
        return None
    bounds, start = [], 0
    for shape in node.meta[SHAPES]:
        bounds.append((start, start + shape[channels]))
        start += shape[channels]
    return bounds


def _f_stochastic_depth(node: fx.Node) -> Converted:
    attrs = DropPathAttrs(p=float(_arg(node, 1, "p", 0.0)), mode=str(_arg(node, 2, "mode", "row")))
    return OpKind.DROPPATH, attrs, (node.args[0],)  # type: ignore[return-value]


FOREIGN_FUNCTIONS: dict[str, Callable[[fx.Node], Converted]] = {
    "torchvision.ops.stochastic_depth.stochastic_depth": _f_stochastic_depth,
}
"""Functions of other libraries that fx keeps whole (`torch.fx.wrap`), by qualified name."""


def function_converter(target: Any) -> Callable[[fx.Node], Converted] | None:
    found = FUNCTIONS.get(target) if _hashable(target) else None
    if found is None:
        found = FOREIGN_FUNCTIONS.get(f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', '')}")
    return found


def _hashable(x: Any) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


FUNCTIONS: dict[Any, Callable[[fx.Node], Converted]] = {
    operator.add: _binary(OpKind.ADD),
    operator.iadd: _binary(OpKind.ADD),
    torch.add: _binary(OpKind.ADD),
    operator.mul: _binary(OpKind.MUL),
    operator.imul: _binary(OpKind.MUL),
    torch.mul: _binary(OpKind.MUL),
    torch.cat: _cat,
    torch.concat: _cat,
    torch.flatten: _flatten_fn,
    torch.reshape: _reshape,
    torch.mean: _mean_fn,
    torch.relu: _f_unary(OpKind.RELU),
    F.relu: _f_unary(OpKind.RELU),
    F.relu6: _f_unary(OpKind.RELU6),
    F.hardswish: _f_unary(OpKind.HARDSWISH),
    F.hardsigmoid: _f_unary(OpKind.HARDSIGMOID),
    F.silu: _f_unary(OpKind.SILU),
    torch.sigmoid: _f_unary(OpKind.SIGMOID),
    F.sigmoid: _f_unary(OpKind.SIGMOID),
    F.gelu: _f_gelu,
    F.adaptive_avg_pool2d: _f_adaptive(OpKind.ADAPTIVE_AVGPOOL2D),
    F.adaptive_max_pool2d: _f_adaptive(OpKind.ADAPTIVE_MAXPOOL2D),
    F.max_pool2d: _f_pool(OpKind.MAXPOOL2D),
    F.avg_pool2d: _f_pool(OpKind.AVGPOOL2D),
    F.dropout: _f_dropout,
    F.batch_norm: _f_batch_norm,
    F.conv2d: _f_conv2d,
    F.linear: _f_linear,
    F.leaky_relu: _f_leaky_relu,
    F.layer_norm: _f_layer_norm,
    F.pad: _f_pad,
    F.interpolate: _f_interpolate,
    torch.permute: _permute,
    operator.getitem: _getitem,
    operator.sub: _operand(OpKind.SUB),
    operator.isub: _operand(OpKind.SUB),
    torch.sub: _operand(OpKind.SUB),
    torch.subtract: _operand(OpKind.SUB),
    torch.rsub: _operand(OpKind.SUB, swap=True),
    operator.truediv: _operand(OpKind.DIV),
    operator.itruediv: _operand(OpKind.DIV),
    torch.div: _operand(OpKind.DIV),
    torch.true_divide: _operand(OpKind.DIV),
    operator.neg: _f_unary(OpKind.NEG),
    torch.neg: _f_unary(OpKind.NEG),
    F.group_norm: _f_group_norm,
    F.normalize: _f_normalize,
    torch.sum: _sum,
}

METHODS: dict[str, Callable[[fx.Node], Converted]] = {
    "sum": _sum,
    "add": _binary(OpKind.ADD),
    "add_": _binary(OpKind.ADD),
    "mul": _binary(OpKind.MUL),
    "mul_": _binary(OpKind.MUL),
    "relu": _f_unary(OpKind.RELU),
    "relu_": _f_unary(OpKind.RELU),
    "sigmoid": _f_unary(OpKind.SIGMOID),
    "flatten": _flatten_fn,
    "view": _reshape,
    "reshape": _reshape,
    "mean": _mean_fn,
    "contiguous": _identity,
    "permute": _permute,
    "sigmoid_": _f_unary(OpKind.SIGMOID),
    "sub": _operand(OpKind.SUB),
    "sub_": _operand(OpKind.SUB),
    "div": _operand(OpKind.DIV),
    "div_": _operand(OpKind.DIV),
    "neg": _f_unary(OpKind.NEG),
    "to": _cast,
    "float": _cast,
    "type_as": _cast,
}
