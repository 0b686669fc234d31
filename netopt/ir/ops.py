"""The closed set of operations the IR models, with their shape rules; their attribute classes
live in attrs.py (and tokens.py) and are re-exported here.

Each `OpKind` has one `OpRule` in `RULES`: how many tensor inputs it takes, the attribute class,
how channels flow through it (`Role`) and how it maps input spatial shapes to its output's.
Channels are not computed here: they come from channel groups and widths (see `groups.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

from netopt.errors import IRError
from netopt.ir.additive import AdditiveAttentionAttrs, additive_spatial
from netopt.ir.attrs import (
    OMIT_AT_DEFAULT,
    AdaptivePoolAttrs,
    BatchNormAttrs,
    Conv2dAttrs,
    ConvTranspose2dAttrs,
    DropoutAttrs,
    DropPathAttrs,
    EcaAttrs,
    GeluAttrs,
    GrnAttrs,
    GroupNormAttrs,
    LayerNormAttrs,
    LeakyReluAttrs,
    LinearAttrs,
    MeanAttrs,
    NoAttrs,
    NormalizeAttrs,
    OpaqueAttrs,
    OperandAttrs,
    PadAttrs,
    PoolAttrs,
    ScalarAttrs,
    ShuffleAttrs,
    SliceAttrs,
    UpsampleAttrs,
    attrs_from_dict,
    attrs_to_dict,
)
from netopt.ir.constant import ConstantAttrs, constant_spatial
from netopt.ir.separable import PatchAttrs, fold_patches_spatial, separable_spatial, unfold_patches_spatial
from netopt.ir.tokens import (
    AttentionAttrs,
    ClassTokenAttrs,
    HeadSliceAttrs,
    MapAttrs,
    SpaceToDepthAttrs,
    TokenSelectAttrs,
    attention_spatial,
    class_token_spatial,
    map_spatial,
    select_spatial,
    token_spatial,
    tokens_spatial,
    unfold_spatial,
)

__all__ = [
    "OpKind",
    "Role",
    "OpRule",
    "Energy",
    "Fusion",
    "RULES",
    "Conv2dAttrs",
    "ConvTranspose2dAttrs",
    "CONVOLUTIONS",
    "MAC_OPS",
    "LinearAttrs",
    "BatchNormAttrs",
    "PoolAttrs",
    "AdaptivePoolAttrs",
    "MeanAttrs",
    "ScalarAttrs",
    "DropoutAttrs",
    "GeluAttrs",
    "OpaqueAttrs",
    "NoAttrs",
    "LayerNormAttrs",
    "DropPathAttrs",
    "PadAttrs",
    "UpsampleAttrs",
    "SliceAttrs",
    "LeakyReluAttrs",
    "ShuffleAttrs",
    "EcaAttrs",
    "OperandAttrs",
    "GroupNormAttrs",
    "GrnAttrs",
    "NormalizeAttrs",
    "Spatial",
    "attrs_from_dict",
    "attrs_to_dict",
    "OMIT_AT_DEFAULT",
    "MapAttrs",
    "ClassTokenAttrs",
    "TokenSelectAttrs",
    "AttentionAttrs",
    "HeadSliceAttrs",
    "SpaceToDepthAttrs",
    "ConstantAttrs",
    "AdditiveAttentionAttrs",
    "PatchAttrs",
]

Spatial = tuple[int, ...]
"""Spatial part of a tensor shape without batch and channels: (H, W) for maps, () for vectors."""


class OpKind(StrEnum):
    """Every operation the IR can describe. Anything else is traced as OPAQUE or refused."""

    CONV2D = "conv2d"
    CONV_TRANSPOSE2D = "conv_transpose2d"
    LINEAR = "linear"
    BATCHNORM = "batchnorm"
    RELU = "relu"
    RELU6 = "relu6"
    HARDSWISH = "hardswish"
    HARDSIGMOID = "hardsigmoid"
    SILU = "silu"
    SIGMOID = "sigmoid"
    GELU = "gelu"
    MAXPOOL2D = "maxpool2d"
    AVGPOOL2D = "avgpool2d"
    ADAPTIVE_AVGPOOL2D = "adaptive_avgpool2d"
    ADAPTIVE_MAXPOOL2D = "adaptive_maxpool2d"
    MEAN = "mean"
    ADD = "add"
    MUL = "mul"
    CONCAT = "concat"
    FLATTEN = "flatten"
    DROPOUT = "dropout"
    IDENTITY = "identity"
    OPAQUE = "opaque"
    LAYERNORM = "layernorm"
    SCALE = "scale"
    DROPPATH = "droppath"
    PAD = "pad"
    UPSAMPLE = "upsample"
    SLICE = "slice"
    LEAKY_RELU = "leaky_relu"
    CHANNEL_SHUFFLE = "channel_shuffle"
    ECA = "eca"
    TOKENS = "tokens"
    TO_MAP = "to_map"
    CLASS_TOKEN = "class_token"
    POS_EMBED = "pos_embed"
    TOKEN_SELECT = "token_select"
    ATTENTION = "attention"
    HEAD_SLICE = "head_slice"
    SPACE_TO_DEPTH = "space_to_depth"
    SUB = "sub"
    DIV = "div"
    NEG = "neg"
    GROUP_NORM = "group_norm"
    GRN = "grn"
    SCALAR_AFFINE = "scalar_affine"
    STAR_RELU = "star_relu"
    NORMALIZE = "normalize"
    CONSTANT = "constant"
    ADDITIVE_ATTENTION = "additive_attention"
    UNFOLD_PATCHES = "unfold_patches"
    FOLD_PATCHES = "fold_patches"
    SEPARABLE_ATTENTION = "separable_attention"


class Role(Enum):
    """How an op treats channels; decides how channel groups form."""

    PRODUCE = "produce"  # new output channels, free to shrink (conv, linear)
    FOLLOW = "follow"  # channel-wise: output channel c depends on input channel c only
    COUPLE = "couple"  # elementwise over several tensors: their channels shrink in lockstep
    CONCAT = "concat"  # channels of the inputs side by side
    FLATTEN = "flatten"  # (C, H, W) -> (C*H*W,): channel c owns H*W consecutive features
    OPAQUE = "opaque"  # unknown inside: inputs and output keep their full width
    SLICE = "slice"  # a contiguous range of the input's channels
    SHUFFLE = "shuffle"  # channels interleaved across groups: inputs and output keep their full width
    ATTEND = "attend"  # q, k, v split into heads: their head groups merge, the output has v's channels
    PART = "part"  # the same range of channels of every head: whole heads shrink with their group
    UNFOLD = "unfold"  # positions of a patch as channels: the input's channels once per position
    BLOCKS = "blocks"  # channel-wise over equal blocks of channels (GroupNorm): the blocks stay equal
    SOURCE = "source"  # channels of its own, fixed, made from no input channel (a constant: the input gives the batch)


# --- shape rules ----------------------------------------------------------------------------


def _window_out(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    span = size + 2 * p - d * (k - 1) - 1
    out = (math.ceil(span / s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1  # PyTorch: the last window must start inside the input or left padding
    return out


def _need_map(name: str, spatial: Sequence[Spatial]) -> Spatial:
    if len(spatial[0]) != 2:
        raise IRError(
            f"node {name!r} needs a (C, H, W) feature map but its input is a vector; "
            "put it before the flatten, or use a linear layer"
        )
    return spatial[0]


def _conv_spatial(name: str, attrs: Any, spatial: Sequence[Spatial]) -> Spatial:
    hw = _need_map(name, spatial)
    out = tuple(
        _window_out(hw[i], attrs.kernel_size[i], attrs.stride[i], attrs.padding[i],
                    attrs.dilation[i], False)
        for i in range(2)
    )
    window = getattr(attrs, "window", (0, 0))
    if window[0] and (out != hw or attrs.stride != (1, 1) or any(d % w for d, w in zip(hw, window, strict=True))):
        raise IRError(f"conv node {name!r} runs in windows {window} of a map of spatial {hw} with stride "
                      f"{attrs.stride}; in windows a conv needs stride 1, the padding that keeps the size, "
                      "and windows that tile the map")
    return out


def _conv_transpose_spatial(name: str, attrs: Any, spatial: Sequence[Spatial]) -> Spatial:
    hw = _need_map(name, spatial)
    return tuple(
        (hw[i] - 1) * attrs.stride[i] - 2 * attrs.padding[i] + attrs.dilation[i] * (attrs.kernel_size[i] - 1)
        + attrs.output_padding[i] + 1
        for i in range(2)
    )


def _pool_spatial(name: str, attrs: Any, spatial: Sequence[Spatial]) -> Spatial:
    hw = _need_map(name, spatial)
    return tuple(
        _window_out(hw[i], attrs.kernel_size[i], attrs.stride[i], attrs.padding[i],
                    attrs.dilation[i], attrs.ceil_mode)
        for i in range(2)
    )


def _adaptive_spatial(name: str, attrs: Any, spatial: Sequence[Spatial]) -> Spatial:
    hw = _need_map(name, spatial)
    return tuple(hw[i] if attrs.output_size[i] is None else attrs.output_size[i] for i in range(2))


def _mean_spatial(name: str, attrs: Any, spatial: Sequence[Spatial]) -> Spatial:
    if len(spatial[0]) == 1:  # tokens: the mean over the tokens
        return (1,) if attrs.keepdim else ()
    _need_map(name, spatial)
    return (1, 1) if attrs.keepdim else ()


def _linear_spatial(name: str, attrs: Any, spatial: Sequence[Spatial]) -> Spatial:
    if len(spatial[0]) == 1:  # tokens: the same linear layer on every token
        return spatial[0]
    if spatial[0] != ():
        raise IRError(
            f"linear node {name!r} gets a feature map of spatial size {spatial[0]}; "
            "the IR models linear layers on (N, F) inputs: flatten first"
        )
    return ()


def _same_spatial(name: str, attrs: Any, spatial: Sequence[Spatial]) -> Spatial:
    return spatial[0]


def _flatten_spatial(name: str, attrs: Any, spatial: Sequence[Spatial]) -> Spatial:
    return ()


def _broadcast_spatial(name: str, attrs: Any, spatial: Sequence[Spatial]) -> Spatial:
    ranks = {len(s) for s in spatial}
    if len(ranks) != 1:
        raise IRError(
            f"elementwise node {name!r} mixes feature maps and vectors {list(spatial)}; "
            "both operands must have the same rank"
        )
    out = []
    for dims in zip(*spatial, strict=True):
        big = max(dims)
        if any(d not in (1, big) for d in dims):
            raise IRError(
                f"elementwise node {name!r} cannot broadcast spatial sizes {list(spatial)}; "
                "each dim must be equal or 1"
            )
        out.append(big)
    return tuple(out)


def _concat_spatial(name: str, attrs: Any, spatial: Sequence[Spatial]) -> Spatial:
    if len(set(spatial)) != 1:
        raise IRError(
            f"concat node {name!r} joins tensors of different spatial sizes {list(spatial)}; "
            "concatenation is along channels, so all other dims must match"
        )
    return spatial[0]


def _pad_spatial(name: str, attrs: Any, spatial: Sequence[Spatial]) -> Spatial:
    h, w = _need_map(name, spatial)
    left, right, top, bottom = attrs.pad
    return (h + top + bottom, w + left + right)


def _upsample_spatial(name: str, attrs: Any, spatial: Sequence[Spatial]) -> Spatial:
    hw = _need_map(name, spatial)
    if attrs.size is not None:
        return tuple(attrs.size)
    if attrs.scale_factor is None:
        raise IRError(f"upsample node {name!r} has neither size nor scale_factor; give one of them")
    return tuple(math.floor(hw[i] * attrs.scale_factor[i]) for i in range(2))


def _opaque_spatial(name: str, attrs: Any, spatial: Sequence[Spatial]) -> Spatial:
    return tuple(attrs.out_shape[1:])


SpatialRule = Callable[[str, Any, Sequence[Spatial]], Spatial]


class Energy(Enum):
    """How the analytical energy model counts an op's work (measure/energy.py prices each kind)."""

    MAC = "mac"  # CONV/FC: multiply-accumulates and the data they move
    OPAQUE = "opaque"  # a block kept whole: its measured MACs
    VIEW = "view"  # nothing at inference: the output is a view of the input
    PER_OUTPUT = "per_output"  # one operation per output element (activations, unfolded BN, scale)
    PER_INPUT = "per_input"  # one per input element (adaptive pooling, mean)
    WINDOW = "window"  # output elements times the pooling window
    COMBINE = "combine"  # output elements times (inputs - 1), or one each with a constant
    NORM = "norm"  # mean, variance, normalize and affine: four per output element
    L2NORM = "l2norm"  # an L2 norm across the channels (square and sum) and the divide: two per output element
    RESIZE = "resize"  # four per output element when bilinear, data movement only when nearest
    ATTENTION = "attention"  # ECA: pooled channels, a k-tap filter across them, the gate and its product
    SCORES = "scores"  # softmax attention: q k^T and the scores times v per head, and the softmax per score
    ADDITIVE = "additive"  # additive attention: q w, its norm over the tokens, the pooled query and its product with k
    CONTEXT = "context"  # separable attention: q's softmax over the last axis, k weighted and summed, v times it
    MOVE = "move"  # data movement only (concat, slice, pad, shuffle)


class Fusion(Enum):
    """How a lookup table cuts networks into the units a runtime runs as one kernel (lut/units.py)."""

    HEAD = "head"  # starts a unit of its own
    FUSED = "fused"  # joins the unit before it when it is that unit's only reader and reads nothing else
    VIEW = "view"  # no kernel at inference: joins the unit before it where it can, else costs nothing
    FREE = "free"  # no kernel at inference, never part of a unit


@dataclass(frozen=True)
class OpRule:
    """Everything the torch-free layers know of one op kind, declared once: its attributes, how
    channels flow through it, its spatial rule, its arity (None: one or more), how the energy
    model counts it, how lookup tables fuse it, and the `netopt.testing.strategies` block that
    generates it for the property tests. The torch side (builder, converters) is in netopt.bridge;
    tests/test_op_registry.py fails when an op kind lacks any part."""

    attrs: type[Any]
    role: Role
    spatial: SpatialRule
    energy: Energy
    fusion: Fusion
    example: str | None  # None: only OPAQUE, which needs a module to build
    arity: int | None = 1


def _act(example: str = "conv") -> OpRule:
    return OpRule(NoAttrs, Role.FOLLOW, _same_spatial, Energy.PER_OUTPUT, Fusion.FUSED, example)


_F, _H = Fusion.FUSED, Fusion.HEAD

RULES: dict[OpKind, OpRule] = {
    OpKind.CONV2D: OpRule(Conv2dAttrs, Role.PRODUCE, _conv_spatial, Energy.MAC, _H, "conv"),
    OpKind.CONV_TRANSPOSE2D: OpRule(ConvTranspose2dAttrs, Role.PRODUCE, _conv_transpose_spatial, Energy.MAC, _H,
                                    "decoder"),
    OpKind.LINEAR: OpRule(LinearAttrs, Role.PRODUCE, _linear_spatial, Energy.MAC, _H, "conv"),
    OpKind.BATCHNORM: OpRule(BatchNormAttrs, Role.FOLLOW, _same_spatial, Energy.PER_OUTPUT, _F, "conv"),
    OpKind.RELU: _act(),
    OpKind.RELU6: _act(),
    OpKind.HARDSWISH: _act(),
    OpKind.HARDSIGMOID: _act("se"),
    OpKind.SILU: _act(),
    OpKind.SIGMOID: _act("se"),
    OpKind.GELU: OpRule(GeluAttrs, Role.FOLLOW, _same_spatial, Energy.PER_OUTPUT, _F, "convnext"),
    OpKind.LEAKY_RELU: OpRule(LeakyReluAttrs, Role.FOLLOW, _same_spatial, Energy.PER_OUTPUT, _F, "conv"),
    OpKind.MAXPOOL2D: OpRule(PoolAttrs, Role.FOLLOW, _pool_spatial, Energy.WINDOW, _H, "pool"),
    OpKind.AVGPOOL2D: OpRule(PoolAttrs, Role.FOLLOW, _pool_spatial, Energy.WINDOW, _H, "pool"),
    OpKind.ADAPTIVE_AVGPOOL2D: OpRule(AdaptivePoolAttrs, Role.FOLLOW, _adaptive_spatial, Energy.PER_INPUT, _H, "se"),
    OpKind.ADAPTIVE_MAXPOOL2D: OpRule(AdaptivePoolAttrs, Role.FOLLOW, _adaptive_spatial, Energy.PER_INPUT, _H,
                                      "pool"),
    OpKind.MEAN: OpRule(MeanAttrs, Role.FOLLOW, _mean_spatial, Energy.PER_INPUT, _H, "conv"),
    OpKind.ADD: OpRule(ScalarAttrs, Role.COUPLE, _broadcast_spatial, Energy.COMBINE, _H, "residual", arity=None),
    OpKind.MUL: OpRule(ScalarAttrs, Role.COUPLE, _broadcast_spatial, Energy.COMBINE, _H, "se", arity=None),
    OpKind.CONCAT: OpRule(NoAttrs, Role.CONCAT, _concat_spatial, Energy.MOVE, _H, "concat", arity=None),
    OpKind.FLATTEN: OpRule(NoAttrs, Role.FLATTEN, _flatten_spatial, Energy.VIEW, Fusion.FREE, "conv"),
    OpKind.DROPOUT: OpRule(DropoutAttrs, Role.FOLLOW, _same_spatial, Energy.VIEW, Fusion.VIEW, "residual"),
    OpKind.IDENTITY: OpRule(NoAttrs, Role.FOLLOW, _same_spatial, Energy.VIEW, Fusion.VIEW, "residual"),
    OpKind.OPAQUE: OpRule(OpaqueAttrs, Role.OPAQUE, _opaque_spatial, Energy.OPAQUE, _H, None, arity=None),
    OpKind.LAYERNORM: OpRule(LayerNormAttrs, Role.FOLLOW, _same_spatial, Energy.NORM, _H, "convnext"),
    OpKind.SCALE: OpRule(NoAttrs, Role.FOLLOW, _same_spatial, Energy.PER_OUTPUT, _H, "convnext"),
    OpKind.DROPPATH: OpRule(DropPathAttrs, Role.FOLLOW, _same_spatial, Energy.VIEW, Fusion.VIEW, "convnext"),
    OpKind.PAD: OpRule(PadAttrs, Role.FOLLOW, _pad_spatial, Energy.MOVE, _H, "resize"),
    OpKind.UPSAMPLE: OpRule(UpsampleAttrs, Role.FOLLOW, _upsample_spatial, Energy.RESIZE, _H, "resize"),
    OpKind.SLICE: OpRule(SliceAttrs, Role.SLICE, _same_spatial, Energy.MOVE, _H, "split"),
    OpKind.CHANNEL_SHUFFLE: OpRule(ShuffleAttrs, Role.SHUFFLE, _same_spatial, Energy.MOVE, _H, "shuffle"),
    OpKind.ECA: OpRule(EcaAttrs, Role.FOLLOW, _same_spatial, Energy.ATTENTION, _H, "eca"),
    OpKind.TOKENS: OpRule(NoAttrs, Role.FOLLOW, tokens_spatial, Energy.VIEW, Fusion.VIEW, "vit"),
    OpKind.TO_MAP: OpRule(MapAttrs, Role.FOLLOW, map_spatial, Energy.MOVE, _H, "vit"),
    OpKind.CLASS_TOKEN: OpRule(ClassTokenAttrs, Role.FOLLOW, class_token_spatial, Energy.MOVE, _H, "vit"),
    OpKind.POS_EMBED: OpRule(NoAttrs, Role.FOLLOW, token_spatial, Energy.PER_OUTPUT, _F, "vit"),
    OpKind.TOKEN_SELECT: OpRule(TokenSelectAttrs, Role.FOLLOW, select_spatial, Energy.VIEW, Fusion.VIEW, "vit"),
    OpKind.ATTENTION: OpRule(AttentionAttrs, Role.ATTEND, attention_spatial, Energy.SCORES, _H, "vit", arity=3),
    OpKind.HEAD_SLICE: OpRule(HeadSliceAttrs, Role.PART, _same_spatial, Energy.MOVE, _H, "psa"),
    OpKind.SPACE_TO_DEPTH: OpRule(SpaceToDepthAttrs, Role.UNFOLD, unfold_spatial, Energy.MOVE, _H, "merge"),
    OpKind.SUB: OpRule(OperandAttrs, Role.COUPLE, _broadcast_spatial, Energy.COMBINE, _H, "poolformer", arity=2),
    OpKind.DIV: OpRule(OperandAttrs, Role.COUPLE, _broadcast_spatial, Energy.COMBINE, _H, "arith", arity=2),
    OpKind.NEG: _act("arith"),
    OpKind.GROUP_NORM: OpRule(GroupNormAttrs, Role.BLOCKS, _same_spatial, Energy.NORM, _H, "poolformer"),
    OpKind.GRN: OpRule(GrnAttrs, Role.FOLLOW, _same_spatial, Energy.NORM, _H, "convnextv2"),
    OpKind.SCALAR_AFFINE: OpRule(NoAttrs, Role.FOLLOW, _same_spatial, Energy.PER_OUTPUT, _H, "arith"),
    OpKind.STAR_RELU: OpRule(NoAttrs, Role.FOLLOW, _same_spatial, Energy.PER_OUTPUT, _H, "arith"),
    OpKind.NORMALIZE: OpRule(NormalizeAttrs, Role.FOLLOW, _same_spatial, Energy.L2NORM, _H, "normalize"),
    OpKind.CONSTANT: OpRule(ConstantAttrs, Role.SOURCE, constant_spatial, Energy.MOVE, Fusion.FREE, "xca"),
    OpKind.ADDITIVE_ATTENTION: OpRule(AdditiveAttentionAttrs, Role.COUPLE, additive_spatial, Energy.ADDITIVE, _H,
                                      "additive", arity=2),
    OpKind.UNFOLD_PATCHES: OpRule(PatchAttrs, Role.FOLLOW, unfold_patches_spatial, Energy.MOVE, _H, "separable"),
    OpKind.FOLD_PATCHES: OpRule(PatchAttrs, Role.FOLLOW, fold_patches_spatial, Energy.MOVE, _H, "separable"),
    OpKind.SEPARABLE_ATTENTION: OpRule(NoAttrs, Role.COUPLE, separable_spatial, Energy.CONTEXT, _H, "separable",
                                       arity=3),
}

CONVOLUTIONS: frozenset[OpKind] = frozenset({OpKind.CONV2D, OpKind.CONV_TRANSPOSE2D})
"""Ops with `groups`: grouped, depthwise or dense."""

MAC_OPS: frozenset[OpKind] = frozenset(k for k, rule in RULES.items() if rule.energy is Energy.MAC)
"""The CONV and FC layers whose multiply-accumulates the paper counts."""

ALIASING: frozenset[OpKind] = frozenset(k for k, rule in RULES.items() if rule.energy is Energy.VIEW)
"""Ops whose output is a view of their input at inference: no new activation memory."""
