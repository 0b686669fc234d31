"""fx -> IR for MobileViT v2: the patch unfolding and folding, and separable self-attention.

timm's `MobileVitV2Block` and `LinearSelfAttention` write, on a map x (B, C, H, W):

    x = x.reshape(B, C, nh, ph, nw, pw).permute(0, 1, 3, 5, 2, 4).reshape(B, C, ph * pw, nh * nw)
    q, k, v = qkv_proj(x).split([1, d, d], dim=1)
    out = F.relu(v) * (k * attn_drop(F.softmax(q, dim=-1))).sum(-1, keepdim=True).expand_as(v)
    ...
    x = x.reshape(B, C, ph, pw, nh, nw).permute(0, 1, 4, 2, 5, 3).reshape(B, C, H, W)

The 6-d views and permutes are *steps* (meta `STAGE`), not IR nodes; the last reshape of each is an
UNFOLD_PATCHES or FOLD_PATCHES node (the channels stay first: the unfolded tensor is a map of
spatial (P, N) to the IR). The softmax, the weighted k and its sum are steps too, and the final
product is one SEPARABLE_ATTENTION node of (q, k, v): the context (B, d, P, 1) has no IR tensor,
and q's one channel meets k's d channels only inside it. A step read any other way is refused in
one line naming the node.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from torch import fx, nn

from netopt.bridge.fxmeta import CHANNELS_LAST, SHAPE, Converted, arg_at, refuse
from netopt.bridge.stages import HEADS, WINDOWED, first_input, node_name, second_arg, shape_of
from netopt.bridge.stages import STAGE as TOKEN_STAGE
from netopt.ir import OpKind
from netopt.ir.ops import NoAttrs
from netopt.ir.separable import PatchAttrs

__all__ = ["STAGE", "Step", "stage", "convert"]

STAGE = "netopt_separable_stage"
"""fx node meta key: the `Step` of a patch layout or of separable attention a node is at."""

_UNFOLD, _FOLD = (0, 1, 3, 5, 2, 4), (0, 1, 4, 2, 5, 3)


@dataclass(frozen=True)
class Step:
    """`kind`: six (a map or an unfolded tensor viewed in 6-d), unfold, fold, probs, weighted,
    context; `src` the IR tensor it reads (q for attention), `k` the keys, `patch` and `grid`."""

    kind: str
    src: fx.Node
    k: fx.Node | None = None
    dims: tuple[int, ...] = ()
    patch: tuple[int, int] = (0, 0)
    grid: tuple[int, int] = (0, 0)


def step_of(x: Any) -> Step | None:
    return x.meta.get(STAGE) if isinstance(x, fx.Node) else None


def _plain(x: Any) -> bool:
    """A channels-first tensor of the IR (B, C, ...), no step of any rearrangement."""
    return isinstance(x, fx.Node) and SHAPE in x.meta and len(shape_of(x)) >= 3 and not x.meta.get(CHANNELS_LAST) \
        and not any(key in x.meta for key in (STAGE, TOKEN_STAGE, HEADS, WINDOWED))


def stage(node: fx.Node) -> Step | None:
    """The step `node` is at, or None when it is an IR op (or none of this module's)."""
    x = first_input(node)
    step = step_of(x)
    if node.op == "call_module" and step is not None and step.kind == "probs":
        module = node.graph.owning_module.get_submodule(str(node.target))  # type: ignore[union-attr]
        return step if isinstance(module, nn.Dropout | nn.Identity) else None  # attention dropout (eval)
    name = node_name(node)
    if name is None or not isinstance(x, fx.Node):
        return None
    if step is not None and name in ("contiguous", "dropout", "expand_as"):
        return step if step.kind in ("six", "unfold", "fold", "probs", "context") else None
    if name in ("reshape", "view", "permute"):
        return _layout_step(node, name, x, step)
    if name == "softmax" and step is None and _plain(x) and arg_at(node, 1, "dim") in (-1, len(shape_of(x)) - 1):
        return Step("probs", x)
    if name == "mul":
        return _weighted(node)
    if name == "sum" and step is not None and step.kind == "weighted" and arg_at(node, 2, "keepdim", False) is True \
            and arg_at(node, 1, "dim") in (-1, len(shape_of(x)) - 1):
        return replace(step, kind="context")
    return None


def _layout_step(node: fx.Node, name: str, x: fx.Node, step: Step | None) -> Step | None:
    """A 6-d view of a (B, C, A, D) tensor as (B, C, a, b, c, d) with a * b = A and c * d = D, then
    its permute: (0, 1, 3, 5, 2, 4) unfolds a map, (0, 1, 4, 2, 5, 3) folds an unfolded one."""
    before, after = shape_of(x), shape_of(node)
    if name != "permute" and step is None and _plain(x) and len(before) == 4 and len(after) == 6 \
            and after[:2] == before[:2] and after[2] * after[3] == before[2] and after[4] * after[5] == before[3]:
        return Step("six", x, dims=after[2:])
    if name != "permute" or step is None or step.kind != "six":
        return None
    a, b, c, d = step.dims
    args: Any = node.args[1:] if len(node.args) > 2 else node.args[1]
    dims = tuple(int(i) % 6 for i in args)
    if dims == _UNFOLD:  # (B, C, nh, ph, nw, pw) -> (B, C, ph, pw, nh, nw)
        return replace(step, kind="unfold", patch=(b, d), grid=(a * b, c * d))
    if dims == _FOLD:  # (B, C, ph, pw, nh, nw) -> (B, C, nh, ph, nw, pw)
        return replace(step, kind="fold", patch=(a, b), grid=(c * a, d * b))
    return None


def _weighted(node: fx.Node) -> Step | None:
    """`k * probs` (either order): the keys weighted by the query's softmax."""
    a, b = first_input(node), second_arg(node)
    for probs, k in ((step_of(a), b), (step_of(b), a)):
        if probs is not None and probs.kind == "probs" and _plain(k) and shape_of(k)[2:] == shape_of(probs.src)[2:]:
            return replace(probs, kind="weighted", k=k)
    return None


def convert(node: fx.Node) -> Converted | None:
    """The IR op that ends a step: UNFOLD_PATCHES, FOLD_PATCHES or SEPARABLE_ATTENTION; a step
    read any other way is refused."""
    a, b = first_input(node), second_arg(node) if len(node.args) > 1 else None
    step = step_of(a) or step_of(b)
    if step is None:
        return None
    name, after = node_name(node), shape_of(node)
    src = shape_of(step.src)
    if name in ("reshape", "view") and step.kind in ("unfold", "fold"):
        attrs = PatchAttrs(patch=step.patch, grid=step.grid)
        want = (*src[:2], *(attrs.unfolded if step.kind == "unfold" else attrs.grid))
        if after == want:
            kind = OpKind.UNFOLD_PATCHES if step.kind == "unfold" else OpKind.FOLD_PATCHES
            return kind, attrs, (step.src,)
    v = b if step_of(a) is step else a
    if name == "mul" and step.kind == "context" and _plain(v) and shape_of(v) == shape_of(step.k):
        return OpKind.SEPARABLE_ATTENTION, NoAttrs(), (step.src, step.k, v)  # type: ignore[return-value]
    raise refuse(node, f"{name or node.target} of a {step.kind} step of MobileViT v2's patches or separable "
                       "attention; netopt models x.reshape(B, C, nh, ph, nw, pw).permute(0, 1, 3, 5, 2, 4) "
                       "(and back) and v * (k * softmax(q, -1)).sum(-1, keepdim=True) only", "")
