"""Additive attention (SwiftFormer): its attributes and shape rule, declared in `netopt.ir.ops.RULES`.

One op holds the whole arithmetic between the normalized query and key tokens and the projection
after it. Its one weight (a value per channel) shrinks with the channels of q and k, which the op
couples into one group, so the to_query, to_key and proj layers around it shrink together. Nothing
here imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from netopt.errors import IRError

__all__ = ["AdditiveAttentionAttrs", "additive_spatial"]

Spatial = tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class AdditiveAttentionAttrs:
    """SwiftFormer's efficient additive attention of query and key tokens q, k (B, N, D):
    a = normalize_over_tokens(q @ w * scale), g = sum over tokens of a * q, out = g * k, with w
    one learned weight per channel (the original's (D, 1) `w_g`); `eps` is the normalize's.

    >>> AdditiveAttentionAttrs(scale=0.125).eps
    1e-12
    """

    scale: float
    eps: float = 1e-12


def additive_spatial(name: str, attrs: Any, spatial: Sequence[Spatial]) -> Spatial:
    """q and k must be token tensors of the same count; the output has their tokens."""
    q, k = spatial
    if len(q) != 1 or q != k:
        raise IRError(
            f"additive attention node {name!r} gets q and k of spatial sizes {q} and {k}; both must be "
            "token tensors (spatial (N,)) of the same count: turn the map into tokens first"
        )
    return q
