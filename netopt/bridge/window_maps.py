"""fx -> IR for maps cut into windows that become the batch (EfficientViT-M's local window attention).

timm's `LocalWindowAttention` permutes a map (B, C, H, W) to channels last, views it as windows
and makes them the batch, (B * windows, C, wh, ww), runs its cascaded group attention on each
window as on a map, and merges the windows back. The IR sees the whole map throughout (meta
`WINDOW_MAP`: the shape the IR sees and the windows): every op between that treats each position
apart (1x1 convs, BatchNorm, activations, the cascade's slices and adds, concat) commutes with the
cut; the two ops that look across positions carry the window and cut it themselves: a kxk conv
(`Conv2dAttrs.window`: its padding is each window's) and the ATTENTION (`window`, `grid` on a map).
Anything else on windows (pooling, a strided conv, flatten to a vector) is refused in one line.
As for Swin's tokens (netopt.bridge.windows), no partition op enters the IR.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import fx

from netopt.bridge.convert import CHANNELS_LAST, Converted
from netopt.bridge.stages import (
    HEADS,
    WINDOW_MAP,
    Stage,
    dims_of,
    enclosing,
    first_input,
    mark_tokens,
    refuse,
    shape_of,
    stage_of,
)
from netopt.ir import OpKind
from netopt.ir.ops import AttentionAttrs, Conv2dAttrs, NoAttrs

__all__ = ["window_map_stage", "convert", "follow", "PER_POSITION"]

PER_POSITION = frozenset({
    OpKind.CONV2D, OpKind.BATCHNORM, OpKind.RELU, OpKind.RELU6, OpKind.HARDSWISH, OpKind.HARDSIGMOID, OpKind.SILU,
    OpKind.SIGMOID, OpKind.GELU, OpKind.LEAKY_RELU, OpKind.ADD, OpKind.MUL, OpKind.SUB, OpKind.DIV, OpKind.NEG,
    OpKind.SLICE, OpKind.CONCAT, OpKind.IDENTITY, OpKind.DROPOUT, OpKind.DROPPATH, OpKind.SCALE, OpKind.ATTENTION,
})
"""Ops that may read windows made the batch: each position apart (CONV2D and ATTENTION take the window)."""


def window_map_stage(node: fx.Node, name: str, x: Any, st: Stage | None) -> Stage | None:
    """A step of the merge back: windows (B * windows, C, wh, ww) to channels last, viewed as
    (B, H/wh, W/ww, wh, ww, C) and swapped to (B, H/wh, wh, W/ww, ww, C)."""
    after = shape_of(node)
    if st is None and name == "permute" and isinstance(x, fx.Node) and WINDOW_MAP in x.meta \
            and dims_of(node, 4) == (0, 2, 3, 1):
        return Stage("wm_last", x, window=x.meta[WINDOW_MAP][1])
    if st is None or not st.kind.startswith("wm_"):
        return None
    h, w, wh, ww = st.window
    if name in ("view", "reshape") and st.kind == "wm_last" and len(after) == 6 \
            and after[1:5] == (h // wh, w // ww, wh, ww):
        return replace(st, kind="wm_unwin6")
    swapped = (name == "transpose" and sorted(dims_of(node, 6)) == [2, 3]) or \
        (name == "permute" and dims_of(node, 6) == (0, 1, 3, 2, 4, 5))
    if st.kind == "wm_unwin6" and swapped:
        return replace(st, kind="wm_unwin_t")
    if name == "contiguous":
        return st
    return None


def convert(node: fx.Node, name: str | None) -> Converted | None:
    """The cut into windows (`permute(0, 3, 1, 2)` of Swin-style windows (B * windows, wh, ww, C)) and
    the merge back (windows reshaped to the channels-last map): identities of the map the IR sees."""
    x = first_input(node)
    st = stage_of(x)
    if st is None:
        return None
    if name == "permute" and st.kind == "win4" and dims_of(node, 4) == (0, 3, 1, 2):
        h, w, wh, ww, *shift = st.window
        if any(shift):
            raise refuse(node, f"windows of a map shifted by {tuple(shift)} made the batch; netopt models "
                               f"unshifted windows there: pass opaque=[{enclosing(node)!r}]")
        b, c = shape_of(st.src)[0], shape_of(st.src)[-1]
        mark_tokens(node, False)
        node.meta[WINDOW_MAP] = ((b, c, h, w), (h, w, wh, ww))
        return OpKind.IDENTITY, NoAttrs(), (st.src,)
    if name in ("reshape", "view") and st.kind == "wm_unwin_t":
        b, c, h, w = st.src.meta[WINDOW_MAP][0]
        if shape_of(node) == (b, h, w, c):
            mark_tokens(node, True)  # the channels-last map again
            return OpKind.IDENTITY, NoAttrs(), (st.src,)
    return None


def follow(node: fx.Node, kind: OpKind, attrs: Any, inputs: tuple[Any, ...]) -> tuple[OpKind, Any]:
    """An op on windows made the batch: a per-position op makes windows too (a kxk conv and the
    attention take the window); any other op is refused."""
    wins = [i.meta[WINDOW_MAP] for i in inputs if isinstance(i, fx.Node) and WINDOW_MAP in i.meta]
    if not wins or WINDOW_MAP in node.meta or node.meta.get(CHANNELS_LAST):  # made, or merged back
        return kind, attrs
    (b, _, h, w), window = wins[0]
    if kind not in PER_POSITION or len(wins) != len(inputs) or any(v[1] != window for v in wins):
        raise refuse(node, f"a {kind.value} on a map cut into windows that are the batch, or mixing it with "
                           f"tensors that are not; netopt models only ops that treat each position apart there "
                           f"(and kxk convs of stride 1 and attention): pass opaque=[{enclosing(node)!r}]")
    if isinstance(attrs, Conv2dAttrs) and attrs.kernel_size != (1, 1):
        attrs = replace(attrs, window=window[2:])
    if isinstance(attrs, AttentionAttrs):
        attrs = replace(attrs, window=window[2:], grid=(h, w))
        channels = node.meta[HEADS][1]
    else:
        channels = shape_of(node)[1]
    if len(shape_of(node)) != 4 and not isinstance(attrs, AttentionAttrs):
        raise refuse(node, f"a {kind.value} of shape {shape_of(node)} on windows made the batch; pass "
                           f"opaque=[{enclosing(node)!r}]")
    node.meta[WINDOW_MAP] = ((b, channels, h, w), window)
    return kind, attrs
