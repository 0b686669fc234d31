"""Tokens and heads: the attributes and shape rules of the ops vision transformers add to the IR.

A token tensor has a rank-1 spatial shape (N,): in torch it is (B, N, C), channels last. Maps are
(H, W) and vectors (). These ops say how a network moves between them (`TOKENS`, `TO_MAP`,
`TOKEN_SELECT`), what it prepends or adds (`CLASS_TOKEN`, `POS_EMBED`: parameters that shrink with
the channels) and how heads attend (`ATTENTION`). `netopt.ir.ops.RULES` declares them; this module
holds their parts so that ops.py stays one table. Nothing here imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from netopt.errors import IRError

__all__ = ["MapAttrs", "ClassTokenAttrs", "TokenSelectAttrs", "AttentionAttrs", "HeadSliceAttrs", "tokens_spatial",
           "map_spatial", "SpaceToDepthAttrs", "unfold_spatial",
           "class_token_spatial", "token_spatial", "select_spatial", "attention_spatial"]

Spatial = tuple[int, ...]
_OMIT = {"netopt_omit_at_default": True}  # ops.OMIT_AT_DEFAULT's metadata (ops.py imports this module)


@dataclass(frozen=True, kw_only=True)
class MapAttrs:
    """Tokens back to a feature map (`x.transpose(1, 2).reshape(B, C, H, W)`): N must be H * W."""

    height: int
    width: int


@dataclass(frozen=True, kw_only=True)
class ClassTokenAttrs:
    """`tokens` learned tokens (1, k, C) put before the others (`cat([cls.expand(B, -1, -1), x], 1)`)."""

    tokens: int = 1


@dataclass(frozen=True, kw_only=True)
class TokenSelectAttrs:
    """Tokens [start, stop) of a token tensor (`x[:, a:b]`), or with `stop` None the one token
    `x[:, start]` as a vector (the class token a classifier reads)."""

    start: int
    stop: int | None = None


@dataclass(frozen=True, kw_only=True)
class HeadSliceAttrs:
    """Channels [start, stop) of every head of `unit` channels (`x.view(B, heads, unit, N).split(...)`:
    q, k and v of a 1x1 conv whose heads each hold their q, k and v side by side)."""

    unit: int
    start: int
    stop: int


@dataclass(frozen=True, kw_only=True)
class AttentionAttrs:
    """Softmax attention of q, k, v split into heads of `qk_dim` (q, k) and `v_dim` (v) channels:
    softmax(q k^T * scale) v per head, over the tokens or the positions of a map (1x1-conv
    attention). `scale` is the original's, kept when heads go. With `bias_positions` R > 0 a learned
    (heads, R) relative position bias, looked up for every (query, key) pair, is added to the scaled
    scores (EfficientFormer, LeViT): it loses the rows of removed heads. With a `window` (wh, ww) the
    tokens, a `grid` (H, W) in row-major order, attend only within windows of wh x ww (Swin, TinyViT),
    after a cyclic `shift` of the grid by (-sh, -sw) with Swin's mask between regions; the bias
    then has wh * ww positions a side. With a `patch` (ph, pw) instead, tokens attend to the tokens
    at the same offset in every ph x pw patch of the grid (MobileViT's unfolding). `linear`:
    ReLU-kernel linear attention (EfficientViT): per head q (k^T [v, 1]), its last column (the
    normalizer, plus `eps`) dividing the others. `talking`: the scores mixed across heads by a
    learned (heads, heads) 1x1 conv with a bias before the softmax and by another after it (talking
    heads, EfficientFormerV2): they lose the rows and columns of removed heads. `bias_row`: the first
    row of its module's bias table the heads read (EfficientViT-M's cascade: an attention node a head);
    on maps, a `window` cuts the map (grid (H, W)) into windows attending apart. `channels`:
    cross-covariance attention (XCA: XCiT, EdgeNeXt), across channels instead of tokens: per head
    softmax(temperature_h * q^ k^T) v with q^, k^ each channel's L2-normalized values over the
    tokens, a (d x d) map; the learned per-head temperature loses the rows of removed heads."""

    qk_dim: int
    v_dim: int
    scale: float
    bias_positions: int = 0
    window: tuple[int, int] = field(default=(0, 0), metadata=_OMIT)
    grid: tuple[int, int] = field(default=(0, 0), metadata=_OMIT)
    shift: tuple[int, int] = field(default=(0, 0), metadata=_OMIT)
    linear: bool = field(default=False, metadata=_OMIT)
    patch: tuple[int, int] = field(default=(0, 0), metadata=_OMIT)
    eps: float = field(default=0.0, metadata=_OMIT)
    talking: bool = field(default=False, metadata=_OMIT)
    bias_row: int = field(default=0, metadata=_OMIT)
    channels: bool = field(default=False, metadata=_OMIT)

    @property
    def keys(self) -> int:
        """Keys each query sees in a window or at its patch offset (0: all of them)."""
        if self.patch[0]:
            return self.grid[0] // self.patch[0] * (self.grid[1] // self.patch[1])
        return self.window[0] * self.window[1]


@dataclass(frozen=True, kw_only=True)
class SpaceToDepthAttrs:
    """Each `block` x `block` patch of a map as one position (Swin's patch merging: (H, W, C) ->
    (H/2, W/2, 4C)); its channels are the input's, once per offset (j, i) in the patch, j outer."""

    block: int = 2


def _need_tokens(name: str, spatial: Sequence[Spatial], what: str) -> Spatial:
    if any(len(s) != 1 for s in spatial):
        raise IRError(
            f"node {name!r} ({what}) needs token tensors (spatial (N,)) but gets {list(spatial)}; "
            "turn the feature map into tokens first (a tokens op)"
        )
    return spatial[0]


def tokens_spatial(name: str, attrs: Any, spatial: Sequence[Spatial]) -> Spatial:
    if len(spatial[0]) != 2:
        raise IRError(f"tokens node {name!r} needs a (C, H, W) feature map, got spatial {spatial[0]}; "
                      "apply it to a feature map")
    return (math.prod(spatial[0]),)


def map_spatial(name: str, attrs: Any, spatial: Sequence[Spatial]) -> Spatial:
    (n,) = _need_tokens(name, spatial, "to_map")
    if n != attrs.height * attrs.width:
        raise IRError(f"to_map node {name!r} folds {n} tokens into {attrs.height}x{attrs.width}; "
                      "height * width must equal the token count")
    return (attrs.height, attrs.width)


def class_token_spatial(name: str, attrs: Any, spatial: Sequence[Spatial]) -> Spatial:
    (n,) = _need_tokens(name, spatial, "class_token")
    return (n + attrs.tokens,)


def token_spatial(name: str, attrs: Any, spatial: Sequence[Spatial]) -> Spatial:
    return _need_tokens(name, spatial, "pos_embed")


def select_spatial(name: str, attrs: Any, spatial: Sequence[Spatial]) -> Spatial:
    (n,) = _need_tokens(name, spatial, "token_select")
    stop = attrs.start + 1 if attrs.stop is None else attrs.stop
    if not 0 <= attrs.start < stop <= n:
        raise IRError(f"token_select node {name!r} takes tokens [{attrs.start}, {stop}) of {n}; "
                      f"they must satisfy 0 <= start < stop <= {n}")
    return () if attrs.stop is None else (stop - attrs.start,)


def unfold_spatial(name: str, attrs: Any, spatial: Sequence[Spatial]) -> Spatial:
    if len(spatial[0]) != 2 or attrs.block < 1 or any(d % attrs.block for d in spatial[0]):
        raise IRError(f"space_to_depth node {name!r} cuts a map of spatial {spatial[0]} into {attrs.block}x"
                      f"{attrs.block} patches; it needs a (C, H, W) map whose H and W the block divides")
    return tuple(d // attrs.block for d in spatial[0])


def attention_spatial(name: str, attrs: Any, spatial: Sequence[Spatial]) -> Spatial:
    q, k, v = spatial
    if len({len(s) for s in spatial}) != 1 or len(q) not in (1, 2) or math.prod(k) != math.prod(v):
        raise IRError(f"attention node {name!r} gets q, k, v of spatial sizes {list(spatial)}; they must all be "
                      "tokens or all maps, and k and v must have as many positions")
    tiles = attrs.patch if attrs.patch[0] else attrs.window
    if attrs.keys and (q != k or q not in ((math.prod(attrs.grid),), attrs.grid) or any(
            g % w for g, w in zip(attrs.grid, tiles, strict=True))):
        raise IRError(f"attention node {name!r} attends in windows {attrs.window} of a grid {attrs.grid} but gets "
                      f"q, k of spatial sizes {q}, {k}; the tokens must be the grid's and the windows must tile it")
    return q
