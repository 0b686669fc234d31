"""The invariants `Network.lint()` checks, each problem worded with the node, the rule and the fix."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from netopt.ir.groups import INPUT, ChannelGroup
from netopt.ir.node import Node
from netopt.ir.ops import CONVOLUTIONS, RULES, OpKind, ScalarAttrs

__all__ = ["dead_nodes", "preview", "shape_problems", "syntax_problems", "width_message", "width_problems"]


def syntax_problems(nodes: tuple[Node, ...], input_shape: tuple[int, ...], outputs: tuple[str, ...],
                    step: int) -> list[str]:
    """What a structure breaks before any analysis: names, inputs, attrs, arity, outputs, shape, step."""
    problems: list[str] = []
    seen: set[str] = {INPUT}
    for node in nodes:
        problems += _node_problems(node, seen)
        seen.add(node.name)
    if not outputs:
        problems.append("the network has no outputs; name at least one node in outputs")
    problems += [
        f"output {o!r} is not a node; name a node of the network" for o in outputs
        if o not in seen or o == INPUT
    ]
    if len(input_shape) not in (1, 3) or any(d <= 0 for d in input_shape):
        problems.append(
            f"input_shape {input_shape} must be (C, H, W) or (F,) with positive sizes, "
            "without the batch dimension"
        )
    if step < 1:
        problems.append(f"step {step} must be >= 1 (the channel grid of every group)")
    return problems


def width_problems(overrides: tuple[tuple[str, int], ...], prunable: tuple[str, ...],
                   group_at: Callable[[str, int], ChannelGroup]) -> list[str]:
    """Widths set for groups that are not prunable, or off their group's grid."""
    problems = []
    for gid, width in overrides:
        if gid not in prunable:
            problems.append(f"width set for {gid!r}, which is not a prunable group")
        elif not group_at(gid, width).is_valid(width):
            problems.append(width_message(group_at(gid, width), width))
    return problems


def shape_problems(nodes: tuple[Node, ...], removed: frozenset[str], shape: Callable[[str], tuple[int, ...]],
                   conv_groups: Callable[[str], int]) -> list[str]:
    """Empty outputs, and convolutions whose `groups` no longer divide their channels."""
    problems = []
    for node in nodes:
        if node.name in removed:
            continue
        out = shape(node.name)
        if any(d <= 0 for d in out):
            problems.append(f"node {node.name!r} has output shape {out}; every size must be > 0")
        if node.op in CONVOLUTIONS:
            g, c_in = conv_groups(node.name), shape(node.inputs[0])[0]
            if c_in % g or out[0] % g:
                problems.append(
                    f"conv {node.name!r}: groups={g} does not divide in={c_in}/out={out[0]}"
                    " at these widths; use widths that are multiples of the group's blocks"
                )
    return problems


def dead_nodes(nodes: tuple[Node, ...], outputs: tuple[str, ...]) -> list[str]:
    """Nodes no output depends on."""
    used = set(outputs)
    for node in reversed(nodes):
        if node.name in used:
            used.update(node.inputs)
    return [f"node {n.name!r} feeds no output; remove it or add it to outputs" for n in nodes if n.name not in used]


def _node_problems(node: Node, seen: set[str]) -> list[str]:
    problems = []
    rule = RULES[node.op]
    if not node.name or node.name in seen:
        why = "is reserved for the network input" if node.name == INPUT else "is used twice"
        problems.append(f"node name {node.name!r} {why}; give every node a unique name")
    missing = [i for i in node.inputs if i not in seen]
    if missing:
        problems.append(
            f"node {node.name!r} reads {missing}, which are not defined before it; "
            "list nodes in execution order"
        )
    if not isinstance(node.attrs, rule.attrs):
        problems.append(
            f"node {node.name!r} ({node.op.value}) has attrs {type(node.attrs).__name__}; "
            f"it needs {rule.attrs.__name__}"
        )
    problems += _arity_problems(node)
    return problems


def _arity_problems(node: Node) -> list[str]:
    """A plain ADD or MUL sums or multiplies two or more tensors (`sum(xs)` is one n-ary ADD);
    with a constant, one; any other op as many as RULES says (None: one or more)."""
    n = len(node.inputs)
    arity, least = RULES[node.op].arity, 1
    if isinstance(node.attrs, ScalarAttrs) and node.attrs.scalar is not None:
        arity = 1
    elif node.op in (OpKind.ADD, OpKind.MUL):
        least = 2
    if (arity is None and n >= least) or n == arity:
        return []
    if least == 2:
        return [f"node {node.name!r} ({node.op.value}) takes 2 input(s), got {n}; or more (one n-ary "
                f"{node.op.value}), or one and a scalar: give it another input or its scalar"]
    want = "one or more" if arity is None else str(arity)
    return [f"node {node.name!r} ({node.op.value}) takes {want} input(s), got {n}"]


def width_message(group: ChannelGroup, width: int) -> str:
    """Why `width` is not one `group` can have, and the widths it can."""
    valid = group.valid_widths(bypass=True)
    zero = "; or 0, which removes its residual branch" if group.bypass else ""
    return (
        f"width {width} is invalid for group {group.id!r}: it must be between "
        f"{group.min_width} and {group.full_width} and a multiple of {group.step} "
        f"(or the full width{zero}); valid: {preview(valid)}"
    )


def preview(items: tuple[Any, ...], limit: int = 12) -> str:
    """The first `limit` items, comma-separated, with "..." where there are more."""
    shown = ", ".join(map(str, items[:limit]))
    return f"[{shown}{', ...' if len(items) > limit else ''}]"
