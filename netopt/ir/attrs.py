"""The attribute dataclasses of the IR's ops (one frozen class per kind of attributes, as in `RULES`
of ops.py) and their JSON form: `attrs_to_dict` and `attrs_from_dict`, with `OMIT_AT_DEFAULT` for
fields added after networks were stored. The attributes of the token ops live in tokens.py."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from netopt.errors import IRError

__all__ = [
    "OMIT_AT_DEFAULT",
    "NoAttrs",
    "Conv2dAttrs",
    "ConvTranspose2dAttrs",
    "LinearAttrs",
    "BatchNormAttrs",
    "PoolAttrs",
    "AdaptivePoolAttrs",
    "MeanAttrs",
    "ScalarAttrs",
    "OperandAttrs",
    "GroupNormAttrs",
    "NormalizeAttrs",
    "GrnAttrs",
    "DropoutAttrs",
    "GeluAttrs",
    "OpaqueAttrs",
    "LayerNormAttrs",
    "ShuffleAttrs",
    "EcaAttrs",
    "LeakyReluAttrs",
    "DropPathAttrs",
    "PadAttrs",
    "UpsampleAttrs",
    "SliceAttrs",
    "attrs_to_dict",
    "attrs_from_dict",
]

OMIT_AT_DEFAULT = "netopt_omit_at_default"
"""Metadata key of an attrs field added after networks were stored: `attrs_to_dict` omits it at its default."""


@dataclass(frozen=True)
class NoAttrs:
    """Attributes of ops that have none."""


@dataclass(frozen=True, kw_only=True)
class Conv2dAttrs:
    """nn.Conv2d at full width; `groups == in_channels > 1` makes it depthwise (channel-wise). With a
    `window` (wh, ww) it runs on each window of the map apart, padded at the window's edges (a conv
    inside windows that are the batch: EfficientViT-M); stride 1, and the windows keep their size."""

    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = False
    padding_mode: str = "zeros"
    window: tuple[int, int] = field(default=(0, 0), metadata={OMIT_AT_DEFAULT: True})


@dataclass(frozen=True, kw_only=True)
class ConvTranspose2dAttrs:
    """nn.ConvTranspose2d at full width (upsampling decoders); `groups` as for Conv2d."""

    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    output_padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = False


@dataclass(frozen=True, kw_only=True)
class LinearAttrs:
    out_features: int
    bias: bool = True


@dataclass(frozen=True, kw_only=True)
class BatchNormAttrs:
    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = True
    track_running_stats: bool = True


@dataclass(frozen=True, kw_only=True)
class PoolAttrs:
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False
    count_include_pad: bool = True


@dataclass(frozen=True, kw_only=True)
class AdaptivePoolAttrs:
    output_size: tuple[int | None, int | None]


@dataclass(frozen=True, kw_only=True)
class MeanAttrs:
    """Mean over the spatial dims (2, 3) of an NCHW tensor."""

    keepdim: bool = False


@dataclass(frozen=True, kw_only=True)
class ScalarAttrs:
    """ADD/MUL: with `scalar` set the op has one tensor input and a constant operand."""

    scalar: float | None = None


@dataclass(frozen=True, kw_only=True)
class OperandAttrs(ScalarAttrs):
    """SUB/DIV: `x - y`, `x / y`; with `scalar`, `x - scalar` or (`reverse`) `scalar - x`."""

    reverse: bool = False


@dataclass(frozen=True, kw_only=True)
class GroupNormAttrs:
    """nn.GroupNorm at full width: statistics over each of `num_groups` equal blocks of channels;
    `num_groups` equal to the channels normalizes each channel alone (its count follows the width).
    `affine`: a weight per channel; `bias`: a bias per channel (timm's NoBias norms have none)."""

    num_groups: int
    eps: float = 1e-5
    affine: bool = True
    bias: bool = True


@dataclass(frozen=True, kw_only=True)
class NormalizeAttrs:
    """`F.normalize(x, dim=channels)`: each position's channels over their L2 norm (at least `eps`),
    SwiftFormer's q and k. A removed channel adds nothing to the norm, so the rest stay as they were."""

    eps: float = 1e-12


@dataclass(frozen=True, kw_only=True)
class GrnAttrs:
    """ConvNeXt-V2's global response norm: x + bias + weight * x * n, with n each channel's spatial
    L2 norm over the mean of those norms across channels."""

    eps: float = 1e-6


@dataclass(frozen=True, kw_only=True)
class DropoutAttrs:
    p: float = 0.5


@dataclass(frozen=True, kw_only=True)
class GeluAttrs:
    approximate: str = "none"


@dataclass(frozen=True, kw_only=True)
class OpaqueAttrs:
    """A block kept whole: its output shape and parameter count come from the traced module."""

    module_type: str
    out_shape: tuple[int, ...]
    params: int = 0
    macs: int = 0


@dataclass(frozen=True, kw_only=True)
class LayerNormAttrs:
    """LayerNorm over the channels of each position (timm's LayerNorm2d, ConvNeXt's
    channels-last LayerNorm): statistics across channels; with `affine` a weight per channel and,
    with `bias` too, a bias per channel (timm's LayerNorm2dNoBias has none)."""

    eps: float = 1e-6
    affine: bool = True
    bias: bool = field(default=True, metadata={OMIT_AT_DEFAULT: True})


@dataclass(frozen=True, kw_only=True)
class ShuffleAttrs:
    """ShuffleNet's channel shuffle: (N, g*c, H, W) -> view (N, g, c, H, W) -> transpose -> back."""

    groups: int


@dataclass(frozen=True, kw_only=True)
class EcaAttrs:
    """Efficient channel attention: x * sigmoid(conv1d_k(mean_hw(x))) with one k-tap filter that
    slides across the channels, so its `kernel_size` weights do not depend on the width."""

    kernel_size: int


@dataclass(frozen=True, kw_only=True)
class LeakyReluAttrs:
    negative_slope: float = 0.01


@dataclass(frozen=True, kw_only=True)
class DropPathAttrs:
    """Stochastic depth: in training each sample ("row") or the whole batch ("batch") is
    dropped with probability `p`; the identity in eval."""

    p: float = 0.0
    mode: str = "row"
    scale_by_keep: bool = True


@dataclass(frozen=True, kw_only=True)
class PadAttrs:
    """Constant padding of the spatial dims: (left, right, top, bottom), as `F.pad` takes it."""

    pad: tuple[int, int, int, int]
    value: float = 0.0


@dataclass(frozen=True, kw_only=True)
class UpsampleAttrs:
    """Resizing by `scale_factor` or to `size` (one of them), as `F.interpolate` does it."""

    mode: str = "nearest"
    size: tuple[int, int] | None = None
    scale_factor: tuple[float, float] | None = None
    align_corners: bool | None = None


@dataclass(frozen=True, kw_only=True)
class SliceAttrs:
    """Channels [start, stop) of the input at full width (`x[:, start:stop]`, a piece of split)."""

    start: int
    stop: int


def attrs_to_dict(attrs: Any) -> dict[str, Any]:
    """An attribute dataclass as JSON data. A field added later (metadata `OMIT_AT_DEFAULT`) is left
    out at its default, so that every network written before it keeps its text and identity hash.

    >>> attrs_to_dict(LayerNormAttrs()), attrs_to_dict(LayerNormAttrs(bias=False))["bias"]
    ({'eps': 1e-06, 'affine': True}, False)
    """
    data = asdict(attrs)
    for f in fields(attrs):
        if f.metadata.get(OMIT_AT_DEFAULT) and data[f.name] == f.default:
            del data[f.name]
    return data


def attrs_from_dict(cls: type[Any], data: dict[str, Any]) -> Any:
    """Rebuild an attribute dataclass from JSON data (lists become tuples)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise IRError(
            f"unknown attribute(s) {unknown} for {cls.__name__}; known: {sorted(known)}. "
            "Remove them or check the format version."
        )
    return cls(**{k: _tuplify(v) for k, v in data.items()})


def _tuplify(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value
