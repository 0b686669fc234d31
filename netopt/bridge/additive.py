"""fx -> IR for SwiftFormer's efficient additive attention: one ADDITIVE_ATTENTION node.

timm's `EfficientAdditiveAttention` computes, on normalized query and key tokens q, k (B, N, D):

    attn = F.normalize(q @ w_g * scale, dim=1)             # (B, N, 1): a weight per token
    out = torch.sum(attn * q, dim=1, keepdim=True) * k      # the pooled query times every key

The steps from `q @ w_g` to the sum are *stages* (meta `STAGE`), not IR nodes; the last product
is the one IR node, reading q and k and bound to `w_g`. It is one op rather than a linear layer to
one channel, a normalize over tokens and a token sum because none of those pieces occurs alone in
the models netopt covers, and as one op its weight is a per-channel parameter sliced with q and k
(docs/decisions.md). Any other use of a stage is refused in one line naming the node.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import fx, nn

from netopt.bridge.fxmeta import SHAPE, Converted, arg_at, refuse
from netopt.bridge.stages import BOUND_TO, first_input, is_heads, is_tokens, node_name, second_arg, shape_of
from netopt.ir import OpKind
from netopt.ir.additive import AdditiveAttentionAttrs

__all__ = ["STAGE", "Step", "stage", "convert"]

STAGE = "netopt_additive_stage"
"""fx node meta key: the `Step` of additive attention a node is at (the node is no IR node)."""


@dataclass(frozen=True)
class Step:
    """A step of additive attention: `kind` (logits, attn, weighted, pooled), the query tokens `q`
    it started from, the path of the (D, 1) weight, and the scale and eps met so far."""

    kind: str
    q: fx.Node
    weight: str
    scale: float = 1.0
    eps: float = 1e-12


def step_of(x: Any) -> Step | None:
    return x.meta.get(STAGE) if isinstance(x, fx.Node) else None


def stage(node: fx.Node) -> Step | None:
    """The step `node` is at, or None when it is no step of additive attention."""
    name = node_name(node)
    if SHAPE not in node.meta or name is None or not node.args:
        return None
    if name == "matmul":
        return _logits(node)
    step, other = _staged(node)
    if step is None:
        return None
    if step.kind == "logits" and name in ("mul", "truediv", "div") and _number(other) and other is second_arg(node):
        return replace(step, scale=step.scale * (float(other) if name == "mul" else 1 / float(other)))
    if step.kind == "logits" and name == "normalize" and _over_tokens(node, arg_at(node, 2, "dim", 1)) \
            and arg_at(node, 1, "p", 2.0) == 2:
        return replace(step, kind="attn", eps=float(arg_at(node, 3, "eps", 1e-12)))
    if step.kind == "attn" and name == "mul" and other is step.q:
        return replace(step, kind="weighted")
    if step.kind == "weighted" and name == "sum" and _over_tokens(node, arg_at(node, 1, "dim")) \
            and arg_at(node, 2, "keepdim", False) is True:
        return replace(step, kind="pooled")
    return None


def convert(node: fx.Node) -> Converted | None:
    """`pooled * k`: the ADDITIVE_ATTENTION node of (q, k); a step read any other way is refused."""
    step, k = _staged(node)
    if step is None:
        return None
    if step.kind != "pooled" or node_name(node) != "mul" or not is_tokens(k) or is_heads(k) \
            or shape_of(k) != shape_of(step.q):
        raise refuse(node, f"{node_name(node) or node.target} of additive attention's {step.kind}; netopt models "
                           "it only as sum(normalize(q @ w * scale, dim=1) * q, dim=1, keepdim=True) * k", "")
    node.meta[BOUND_TO] = step.weight  # materialize slices the (D, 1) weight with the channels of q and k
    return OpKind.ADDITIVE_ATTENTION, AdditiveAttentionAttrs(scale=step.scale, eps=step.eps), (step.q, k)


def _logits(node: fx.Node) -> Step | None:
    """`q @ w` of query tokens q (B, N, D) and a (D, 1) parameter w: the first step."""
    q, w = node.args[0], second_arg(node)
    if node.target not in (operator.matmul, torch.matmul, "matmul") or not is_tokens(q) or is_heads(q) \
            or not isinstance(w, fx.Node) or w.op != "get_attr":
        return None
    weight = _parameter(node, str(w.target))
    if weight is None or tuple(weight.shape) != (shape_of(q)[-1], 1):
        return None
    return Step("logits", q, str(w.target))  # type: ignore[arg-type]


def _parameter(node: fx.Node, path: str) -> nn.Parameter | None:
    """The parameter at `path` of the traced module (None if it is a buffer or a constant)."""
    value: Any = node.graph.owning_module
    for atom in path.split("."):
        value = getattr(value, atom, None)
    return value if isinstance(value, nn.Parameter) else None


def _staged(node: fx.Node) -> tuple[Step | None, Any]:
    """The step one of `node`'s first two arguments is at, and the other argument."""
    a, b = first_input(node), second_arg(node) if len(node.args) > 1 or node.kwargs else None
    if (step := step_of(a)) is not None:
        return step, b
    return step_of(b), a


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _over_tokens(node: fx.Node, dim: Any) -> bool:
    """A reduction over dim 1 of a (B, N, C) tensor: the tokens."""
    dims = tuple(dim) if isinstance(dim, list | tuple) else (dim,)
    return len(dims) == 1 and isinstance(dims[0], int) and dims[0] % 3 == 1 and len(shape_of(node.args[0])) == 3
