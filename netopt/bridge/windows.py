"""fx -> IR for layouts where torch's tensor is not the one the IR sees: windows, patches, flat tokens.

Swin and TinyViT cut a channels-last map into windows (B * windows, wh * ww, C), perhaps after a
cyclic roll; MobileViT unfolds a map into the tokens at each offset of its patches; LeViT flattens
tokens to (B * N, C) for a BatchNorm1d. The per-token ops between see the grid's tokens (meta
`WINDOWED` / `FLAT`: the shape the IR sees) and the ATTENTION carries the window, grid, shift or
patch, so it makes the windows itself. Swin's patch merging is a SPACE_TO_DEPTH and LeViT's
`x[:, ::s, ::s]` a 1x1 pool of stride s.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import fx

from netopt.bridge.convert import CHANNELS_LAST, Converted, param_path
from netopt.bridge.stages import (
    FLAT,
    HEADS,
    ROLLED,
    WINDOWED,
    Stage,
    dims_of,
    first_input,
    is_heads,
    is_tokens,
    mark_tokens,
    refuse,
    second_arg,
    shape_of,
    stage_of,
    token_shape,
)
from netopt.ir import OpKind
from netopt.ir.ops import AttentionAttrs, MapAttrs, NoAttrs, PoolAttrs, SpaceToDepthAttrs

__all__ = ["window_stage", "patch_stage", "is_map_last", "window_mask", "window_layout", "patch_layout",
           "flatten_tokens", "unflatten_tokens", "subsample", "roll_back", "window_attrs", "follow_windows"]


def window_stage(node: fx.Node, name: str, x: fx.Node, st: Stage | None) -> Stage | None:
    """A step of a window partition (a channels-last map (B, H, W, C), perhaps rolled by -shift,
    viewed as (B * windows, wh * ww, C)) or of the merge back (windowed tokens to the map)."""
    before, after = shape_of(x), shape_of(node)
    if name == "roll" and st is None and is_map_last(x) and _roll(node)[1] == (1, 2) \
            and max(_roll(node)[0], default=1) <= 0:
        return Stage("rolled", x, window=(0, 0, 0, 0, *(-s for s in _roll(node)[0])))
    if name == "pad" and st is not None and st.kind == "rolled" and not any(second_arg(node) or ()):
        return st  # no padding: the windows tile the map
    if name in ("view", "reshape") and len(after) == 6 and ((st is None and is_map_last(x)) or
                                                             (st is not None and st.kind == "rolled")):
        b, h, w, c = before
        if after == (b, h // after[2], after[2], w // after[4], after[4], c) and not h % after[2] + w % after[4]:
            shift = st.window[4:] if st is not None else (0, 0)
            return Stage("win6", st.src if st is not None else x, window=(h, w, after[2], after[4], *shift))
    if st is not None and st.kind == "win6" and name == "permute" and dims_of(node, 6) == (0, 1, 3, 4, 2, 5) \
            and st.window[2] == st.window[3] and not any(st.window[4:]):
        return replace(st, kind="s2d")  # Swin's patch merging: (B, H/2, W/2, 2 (w), 2 (h), C), then flatten(3)
    if st is not None and st.kind in ("win6", "unwin6") and _swaps_windows(node, name):
        return replace(st, kind="win_t" if st.kind == "win6" else "unwin_t")
    if name == "contiguous" and st is not None and st.kind in ("win_t", "unwin_t", "win4", "unwin4"):
        return st
    if name in ("view", "reshape") and st is not None and st.kind == "win_t" and len(after) == 4:
        return replace(st, kind="win4")
    win = x.meta.get(WINDOWED) if st is None else None
    source = (x, win[1]) if win is not None and not is_heads(x) else None
    if st is not None and st.kind == "unwin4":
        source = (st.src, st.window)
    if name in ("view", "reshape") and source is not None:
        h, w, wh, ww = source[1][:4]
        if after == (before[0], wh, ww, before[-1]) and st is None:
            return Stage("unwin4", x, window=source[1])
        if len(after) == 6 and after[1:] == (h // wh, w // ww, wh, ww, before[-1]):
            return Stage("unwin6", source[0], window=source[1])
    return None


_PATCH_STEPS: dict[tuple[str, str, tuple[int, ...]], str] = {
    ("unfold", "transpose", (1, 2)): "unfold_t", ("unfold_cnp", "transpose", (1, 3)): "unfold_pnc",
    ("fold", "transpose", (1, 3)): "fold_cnp", ("fold5", "transpose", (1, 2)): "fold_t",
}


def patch_stage(node: fx.Node, name: str, x: fx.Node, st: Stage | None) -> Stage | None:
    """A step of MobileViT's unfolding of a map (B, C, H, W) into the tokens at each offset of its
    ph x pw patches, (B * ph * pw, patches, C), or of the folding back."""
    before, after = shape_of(x), shape_of(node)
    reshape = name in ("reshape", "view")
    if st is None:
        win = x.meta.get(WINDOWED)
        if reshape and len(before) == 4 and len(after) == 4 and not x.meta.get(CHANNELS_LAST) and not is_heads(x):
            b, c, h, w = before
            if after[0] == b * c * (h // after[1]) and after[2:] == (w // after[3], after[3]) and h % after[1] == 0 \
                    and w % after[3] == 0:
                return Stage("unfold", x, window=(h, w, after[1], after[3], 0, 0, 1))
        if reshape and win is not None and len(win[1]) == 7 and not is_heads(x):
            h, w, ph, pw = win[1][:4]
            if after == (win[0][0], ph * pw, h // ph * (w // pw), before[-1]):
                return Stage("fold", x, window=win[1])
        return None
    if name == "contiguous" and st.kind in ("unfold", "unfold_t", "unfold_cnp", "unfold_pnc", "fold", "fold_cnp",
                                            "fold5", "fold_t"):
        return st
    if name == "transpose" and (kind := _PATCH_STEPS.get((st.kind, name, tuple(sorted(dims_of(node, len(before))))))):
        return replace(st, kind=kind)
    if reshape and st.kind == "unfold_t" and len(after) == 4 and after[3] == st.window[2] * st.window[3]:
        return replace(st, kind="unfold_cnp")
    if reshape and st.kind == "fold_cnp" and len(after) == 4 and after[2:] == st.window[2:4]:
        return replace(st, kind="fold5")
    return None


def is_map_last(x: fx.Node) -> bool:
    """A channels-last map (B, H, W, C), not split into heads."""
    return bool(x.meta.get(CHANNELS_LAST)) and len(shape_of(x)) == 4 and not is_heads(x) and WINDOWED not in x.meta


def _roll(node: fx.Node) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(shifts, dims) of a torch.roll over two dims, else ((), ())."""
    shifts = node.args[1] if len(node.args) > 1 else node.kwargs.get("shifts")
    dims = node.args[2] if len(node.args) > 2 else node.kwargs.get("dims")
    if not isinstance(shifts, list | tuple) or not isinstance(dims, list | tuple) or len(dims) != 2:
        return (), ()
    return tuple(int(s) for s in shifts), tuple(int(d) % 4 for d in dims)  # type: ignore[arg-type]


def _swaps_windows(node: fx.Node, name: str) -> bool:
    """permute(0, 1, 3, 2, 4, 5) or transpose(2, 3) of a rank-6 window view."""
    if name == "permute":
        return dims_of(node, 6) == (0, 1, 3, 2, 4, 5)
    return name == "transpose" and sorted(dims_of(node, 6)) == [2, 3]


def window_mask(x: Any, scores: tuple[int, ...]) -> bool:
    """A buffer (or constant) of (N, N) masks added to a window's scores: Swin's shifted-window mask."""
    return param_path(x) is not None and shape_of(x)[-2:] == scores[-2:] and len(scores) >= 3


def window_layout(node: fx.Node, st: Stage, after: tuple[int, ...]) -> Converted | None:
    """A map's windows as tokens (TOKENS: the IR sees the grid's tokens, the attention makes the
    windows), or the windows merged back into the map (TO_MAP, still rolled by the shift)."""
    h, w, wh, ww, *shift = st.window
    b, c = shape_of(st.src)[0], shape_of(st.src)[-1]
    if st.kind == "s2d" and after == (b, h // wh, w // ww, wh * ww * c):
        mark_tokens(node, True)
        return OpKind.SPACE_TO_DEPTH, SpaceToDepthAttrs(block=wh), (st.src,)
    if st.kind in ("win_t", "win4") and len(after) == 3 and after[1:] == (wh * ww, c):
        mark_tokens(node, True)
        node.meta[WINDOWED] = ((b, h * w, c), st.window)
        return OpKind.TOKENS, NoAttrs(), (st.src,)
    if st.kind == "unwin_t" and len(after) == 4 and after[1:] == (h, w, c):
        mark_tokens(node, True)
        if any(shift):
            node.meta[ROLLED] = tuple(shift)
        return OpKind.TO_MAP, MapAttrs(height=h, width=w), (st.src,)
    return None


def patch_layout(node: fx.Node, st: Stage, after: tuple[int, ...]) -> Converted | None:
    """A map's tokens by patch offset (TOKENS: the IR sees the grid's tokens, the attention groups
    them), or folded back into the map (TO_MAP)."""
    h, w = st.window[:2]
    if st.kind == "unfold_pnc" and len(after) == 3:
        b, c = shape_of(st.src)[:2]
        mark_tokens(node, True)
        node.meta[WINDOWED] = ((b, h * w, c), st.window)
        return OpKind.TOKENS, NoAttrs(), (st.src,)
    if st.kind == "fold_t" and len(after) == 4 and after[2:] == (h, w):
        mark_tokens(node, False)
        return OpKind.TO_MAP, MapAttrs(height=h, width=w), (st.src,)
    return None


def flatten_tokens(node: fx.Node) -> Converted | None:
    """flatten(3) of a map's 2 x 2 patches: space to depth (Swin's patch merging); flatten(0, 1) of
    tokens for a BatchNorm1d (LeViT)."""
    x, st = first_input(node), stage_of(first_input(node))
    if st is not None and st.kind == "s2d":
        return window_layout(node, st, shape_of(node))
    if is_tokens(x) and not is_heads(x) and WINDOWED not in x.meta and node.args[1:] == (0, 1):
        b, n, c = shape_of(x)
        node.meta[FLAT] = (b, c, n)
        mark_tokens(node, False)  # (B * N, C): channels at dim 1, like vectors
        return OpKind.IDENTITY, NoAttrs(), (x,)
    return None


def unflatten_tokens(node: fx.Node) -> Converted | None:
    """`y.reshape_as(x)` of tokens flattened to (B * N, C): the tokens again."""
    x, like = first_input(node), second_arg(node)
    if isinstance(x, fx.Node) and FLAT in x.meta and is_tokens(like) and shape_of(node) == shape_of(like):
        mark_tokens(node, True)
        return OpKind.IDENTITY, NoAttrs(), (x,)
    return None


def _strided(node: fx.Node, x: Any, index: Any) -> Converted | None:
    """`x[:, ::s, ::s]` of a channels-last map (LeViT's token subsampling): a 1x1 pool of stride s."""
    if not isinstance(x, fx.Node) or not is_map_last(x) or not isinstance(index, tuple) or len(index) not in (3, 4) \
            or index[0] != slice(None) or not all(isinstance(i, slice) for i in index):
        return None
    steps = [i.step or 1 for i in index[1:3]]
    if any(i.start not in (None, 0) or i.stop is not None for i in index[1:3]) or steps == [1, 1] \
            or (len(index) == 4 and index[3] != slice(None)):
        return None
    mark_tokens(node, True)
    return OpKind.AVGPOOL2D, PoolAttrs(kernel_size=(1, 1), stride=(steps[0], steps[1])), (x,)


def subsample(node: fx.Node, x: Any, index: Any) -> Converted | None:
    """`x[:, ::s, ::s]` of a channels-last map: a 1x1 pool of stride s; `x[:, :H, :W]` of the whole
    map (a merge of windows that needed no padding): an identity."""
    if (found := _strided(node, x, index)) is not None:
        return found
    whole = isinstance(index, tuple) and all(isinstance(i, slice) and i.indices(d) == (0, d, 1)
                                             for i, d in zip(index, shape_of(x), strict=False))
    if isinstance(x, fx.Node) and is_map_last(x) and whole:
        if ROLLED in x.meta:
            node.meta[ROLLED] = x.meta[ROLLED]
        mark_tokens(node, True)
        return OpKind.IDENTITY, NoAttrs(), (x,)
    return None


def roll_back(node: fx.Node) -> Converted | None:
    """torch.roll by the shift a map merged from shifted windows has: the attention rolled it back."""
    x = first_input(node)
    if isinstance(x, fx.Node) and x.meta.get(ROLLED) and _roll(node) == (x.meta[ROLLED], (1, 2)):
        mark_tokens(node, True)
        return OpKind.IDENTITY, NoAttrs(), (x,)
    return None


def window_attrs(node: fx.Node, q: fx.Node, attrs: AttentionAttrs, masked: bool) -> AttentionAttrs:
    """The attention's windows, read off its q (tokens in windows), with Swin's mask if shifted."""
    if WINDOWED not in q.meta:
        return attrs
    h, w, wh, ww, sh, sw, *patch = q.meta[WINDOWED][1]
    node.meta[WINDOWED] = (token_shape(node), q.meta[WINDOWED][1])
    if patch:  # MobileViT: the tokens at one offset of every patch attend to each other
        return replace(attrs, patch=(wh, ww), grid=(h, w))
    if bool(sh or sw) != masked:
        raise refuse(node, f"attention in windows shifted by {(sh, sw)} {'with' if masked else 'without'} a mask; "
                            "netopt models Swin's shifted windows: a roll by -shift, the mask of its regions added")
    return replace(attrs, window=(wh, ww), grid=(h, w), shift=(sh, sw))


def follow_windows(node: fx.Node, kind: OpKind, inputs: tuple[fx.Node, ...]) -> None:
    """An op on windowed tokens that keeps every token where it is (Linear, LayerNorm, add, ...)
    makes windowed tokens; an identity of a map still to be rolled back is such a map too."""
    win = next((i.meta[WINDOWED] for i in inputs if WINDOWED in i.meta), None)
    shape = shape_of(node)
    if win is not None and WINDOWED not in node.meta and HEADS in node.meta:
        node.meta[WINDOWED] = (tuple(node.meta[HEADS]), win[1])
    elif win is not None and WINDOWED not in node.meta and shape[:-1] == shape_of(inputs[0])[:-1]:
        node.meta[WINDOWED] = ((*win[0][:-1], shape[-1]), win[1])
    if len(inputs) == 1 and FLAT in inputs[0].meta and shape == shape_of(inputs[0]):
        node.meta.setdefault(FLAT, inputs[0].meta[FLAT])  # the BatchNorm1d on flattened tokens
    if kind is OpKind.IDENTITY and len(inputs) == 1 and ROLLED in inputs[0].meta and shape == shape_of(inputs[0]):
        node.meta.setdefault(ROLLED, inputs[0].meta[ROLLED])
