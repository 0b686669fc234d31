"""MobileViT v2's separable self-attention and the patch layout it runs on: attributes and shape
rules, declared in `netopt.ir.ops.RULES`.

MobileViT v2 unfolds a map (C, H, W) into (C, P, N), the P pixels of each ph x pw patch by the N
patches (`UNFOLD_PATCHES`), and folds it back (`FOLD_PATCHES`). The channels stay first, so 1x1
convs, GroupNorm and elementwise ops act on the unfolded tensor as on a map of spatial (P, N).
`SEPARABLE_ATTENTION` reads q (one channel, or one per channel of k), k and v there and computes
v * sum_N(k * softmax_N(q)) over the last spatial axis: channel c of its output depends on
channel c of k and v alone, so k, v and the output shrink together (Role.COUPLE, q broadcast).
Nothing here imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from netopt.errors import IRError

__all__ = ["PatchAttrs", "unfold_patches_spatial", "fold_patches_spatial", "separable_spatial"]

Spatial = tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class PatchAttrs:
    """A map of spatial `grid` (H, W) cut into patches of `patch` (ph, pw) pixels: unfolded to
    (ph * pw, patches), pixel offset outer (row-major in the patch), patch index inner (row-major).

    >>> PatchAttrs(patch=(2, 2), grid=(8, 6)).patches
    12
    """

    patch: tuple[int, int]
    grid: tuple[int, int]

    @property
    def patches(self) -> int:
        """N: patches of the grid."""
        return self.grid[0] // self.patch[0] * (self.grid[1] // self.patch[1])

    @property
    def unfolded(self) -> Spatial:
        """(P, N): the spatial shape of the unfolded tensor."""
        return (self.patch[0] * self.patch[1], self.patches)


def _check_tiles(name: str, attrs: PatchAttrs) -> None:
    if min(*attrs.patch, *attrs.grid) < 1 or any(g % p for g, p in zip(attrs.grid, attrs.patch, strict=True)):
        raise IRError(f"patch node {name!r} cuts a grid {attrs.grid} into patches {attrs.patch}; "
                      "the patch sides must be positive and divide the grid's")


def unfold_patches_spatial(name: str, attrs: Any, spatial: Sequence[Spatial]) -> Spatial:
    _check_tiles(name, attrs)
    if tuple(spatial[0]) != tuple(attrs.grid):
        raise IRError(f"unfold_patches node {name!r} unfolds a grid {attrs.grid} but gets spatial {spatial[0]}; "
                      "its grid must be its input map's (H, W)")
    return attrs.unfolded  # type: ignore[no-any-return]


def fold_patches_spatial(name: str, attrs: Any, spatial: Sequence[Spatial]) -> Spatial:
    _check_tiles(name, attrs)
    if tuple(spatial[0]) != attrs.unfolded:
        raise IRError(f"fold_patches node {name!r} folds {attrs.unfolded} (pixels, patches) into {attrs.grid} but "
                      f"gets spatial {spatial[0]}; its input must be the unfolded tensor of that grid")
    return tuple(attrs.grid)


def separable_spatial(name: str, attrs: Any, spatial: Sequence[Spatial]) -> Spatial:
    """q, k and v share one spatial shape with a last axis (the one the softmax runs over)."""
    if len(set(map(tuple, spatial))) != 1 or not spatial[0] or math.prod(spatial[0]) < 1:
        raise IRError(f"separable attention node {name!r} gets q, k, v of spatial sizes {list(spatial)}; they must "
                      "have one spatial shape (the unfolded (P, N), or tokens (N,)) whose last axis it attends over")
    return tuple(spatial[0])
