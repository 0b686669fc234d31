"""`Node` and `Network`: the immutable structural IR.

A `Network` is a fixed structure (nodes at full width) plus the widths of its channel groups.
`with_widths` returns a new Network that shares the structural analysis of its parent, so a
search can derive thousands of candidates cheaply. Nothing here imports torch.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from netopt.errors import FormatError, IRError, LintError, WidthError
from netopt.ir.bypass import Branch, branches, reduce
from netopt.ir.groups import INPUT, Analysis, ChannelGroup, Layout, analyze
from netopt.ir.node import Node
from netopt.ir.ops import CONVOLUTIONS, RULES, Conv2dAttrs, ConvTranspose2dAttrs, OpKind, ScalarAttrs, attrs_from_dict

__all__ = ["Node", "Network", "FORMAT", "FORMAT_VERSION"]

FORMAT = "netopt.ir.network"
FORMAT_VERSION = 1

Shape = tuple[int, ...]


class _Shared:
    """Structural analysis, computed once and shared by all width assignments of a structure."""

    def __init__(self) -> None:
        self.analysis: Analysis | None = None
        self.branches: dict[str, Branch] | None = None


@dataclass(frozen=True)
class Network:
    """A network structure at full width plus the current width of every channel group.

    Build one with `netopt.trace` (from torch), `netopt.ir.Builder`, or `Network.from_json`.
    """

    nodes: tuple[Node, ...]
    input_shape: tuple[int, ...]
    outputs: tuple[str, ...]
    step: int = 8
    width_overrides: tuple[tuple[str, int], ...] = ()
    _shared: _Shared = field(default_factory=_Shared, compare=False, repr=False, hash=False)
    _local: dict[str, Any] = field(default_factory=dict, compare=False, repr=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "width_overrides", tuple(sorted(self.width_overrides)))
        problems = self._syntax_problems()
        if problems:
            raise LintError(problems)

    def __hash__(self) -> int:
        cached = self._local.get("hash")
        if cached is None:
            cached = self._local["hash"] = hash((self.nodes, self.input_shape, self.outputs, self.step,
                                                 self.width_overrides))
        return int(cached)

    def __repr__(self) -> str:
        return (
            f"Network({len(self.nodes)} nodes, input {self.input_shape}, "
            f"{len(self.groups)} groups, outputs {list(self.outputs)})"
        )

    # --- structure ------------------------------------------------------------------------

    @property
    def analysis(self) -> Analysis:
        """Spatial shapes, channel layouts and groups; raises IRError on a broken structure."""
        shared = self._shared
        if shared.analysis is None:
            shared.analysis = analyze(self.nodes, self.input_shape, self.outputs, self.step)
        return shared.analysis

    def node(self, name: str) -> Node:
        index = self._local.get("index")
        if index is None:
            index = self._local["index"] = {n.name: n for n in self.nodes}
        try:
            return index[name]
        except KeyError:
            raise IRError(f"no node named {name!r}; see Network.nodes for the names") from None

    @property
    def bypassable(self) -> dict[str, Branch]:
        """The residual branch each bypass group lies in: at width 0 that branch is removed."""
        shared = self._shared
        if shared.branches is None:
            shared.branches = branches(self.nodes, self.outputs, self.analysis)
        return shared.branches

    def layout(self, name: str) -> Layout:
        """Which groups own the channels of `name`'s output, in channel order."""
        return self.analysis.layouts[name]

    # --- widths ---------------------------------------------------------------------------

    @property
    def widths(self) -> dict[str, int]:
        """Current width of every prunable group, by group id."""
        a = self.analysis
        overrides = dict(self.width_overrides)
        return {g: overrides.get(g, a.info[g].full_width) for g in a.prunable}

    @property
    def full_widths(self) -> dict[str, int]:
        a = self.analysis
        return {g: a.info[g].full_width for g in a.prunable}

    @property
    def groups(self) -> tuple[ChannelGroup, ...]:
        """The prunable channel groups, in the order their first producer runs."""
        cached = self._local.get("groups")
        if cached is None:
            widths = self.widths
            cached = self._local["groups"] = tuple(self._group(g, widths[g]) for g in widths)
        return cached

    def group(self, gid: str) -> ChannelGroup:
        by_id = self._local.get("by_id")
        if by_id is None:
            by_id = self._local["by_id"] = {g.id: g for g in self.groups}
        if gid in by_id:
            return by_id[gid]  # type: ignore[no-any-return]
        raise WidthError(
            f"unknown group {gid!r}: this network's prunable groups are "
            f"{_preview(self.analysis.prunable)}; use an id from Network.groups"
        )

    def _group(self, gid: str, width: int) -> ChannelGroup:
        a = self.analysis
        info = a.info[gid]
        step = a.group_step(gid)
        return ChannelGroup(
            id=gid, width=width, full_width=info.full_width, min_width=step, step=step,
            blocks=info.blocks, producers=info.producers, consumers=info.consumers,
            bypass=gid in self.bypassable,
        )

    def with_widths(self, widths: Mapping[str, int]) -> Network:
        """A new Network with the given groups at the given widths; others keep theirs."""
        if not isinstance(widths, Mapping):
            raise WidthError(f"widths must be a mapping {{group id: width}}, got {type(widths).__name__} {widths!r}; "
                             "e.g. {net.groups[0].id: 16}")
        merged = dict(self.width_overrides)
        for gid, width in widths.items():
            group = self.group(gid)
            if isinstance(width, bool) or not isinstance(width, numbers.Real) or width != int(width):
                raise WidthError(f"width {width!r} for group {gid!r} is not a whole number")
            if not group.is_valid(int(width)):
                raise WidthError(_width_message(group, int(width)))
            merged[gid] = int(width)
        full = self.full_widths
        kept = tuple((g, w) for g, w in merged.items() if w != full[g])
        return replace(self, width_overrides=kept, _shared=self._shared, _local={})

    # --- channel-level bypass ---------------------------------------------------------------

    @property
    def bypassed(self) -> tuple[Branch, ...]:
        """The residual branches removed at the current widths (their bypass groups are at 0)."""
        cached = self._local.get("bypassed")
        if cached is None:
            zero = [g for g, w in self.width_overrides if w == 0]
            cached = tuple(dict.fromkeys(self.bypassable[g] for g in zero))
            self._local["bypassed"] = cached
        return cached  # type: ignore[no-any-return]

    @property
    def removed(self) -> frozenset[str]:
        """Names of the nodes in removed branches (empty unless a bypass group is at width 0)."""
        cached = self._local.get("removed")
        if cached is None:
            cached = self._local["removed"] = frozenset().union(*(b.nodes for b in self.bypassed))
        return cached  # type: ignore[no-any-return]

    def reduced(self) -> Network:
        """This network without its removed branches (each of their adds passes its shortcut
        through); itself where none is removed. What costs count and `materialize` builds."""
        if not self.removed:
            return self
        cached = self._local.get("reduced")
        if cached is None:
            bare = Network(reduce(self.nodes, self.bypassed), self.input_shape, self.outputs, step=self.step)
            moved: dict[str, str] = {}  # a group's id where its first producer was removed changes
            for node in bare.nodes:
                for old, new in zip(self.layout(node.name), bare.layout(node.name), strict=True):
                    moved.setdefault(old.group, new.group)
            prunable = set(bare.analysis.prunable)
            cached = bare.with_widths({moved[g]: w for g, w in self.width_overrides
                                       if g in moved and moved[g] in prunable})
            self._local["reduced"] = cached
        return cached  # type: ignore[no-any-return]

    def scaled(self, fraction: float) -> Network:
        """Every group at the largest valid width not above `fraction` of its full width
        (and never below its minimum): the uniform width multiplier, on the group grid."""
        return self.with_widths({
            g.id: max(w for w in g.valid_widths() if w <= max(g.min_width, fraction * g.full_width))
            for g in self.groups
        })

    def at_full_width(self) -> Network:
        return replace(self, width_overrides=(), _shared=self._shared, _local={})

    # --- shapes at the current widths ------------------------------------------------------

    @property
    def shapes(self) -> dict[str, Shape]:
        """Output shape of every node (and of "input"), without the batch dimension."""
        cached = self._local.get("shapes")
        if cached is None:
            a, widths = self.analysis, dict(self.width_overrides)
            cached = {
                name: (a.channels(lay, widths), *a.spatial[name]) for name, lay in a.layouts.items()
            }
            self._local["shapes"] = cached
        return cached

    def shape(self, name: str) -> Shape:
        return self.shapes[name]

    def conv_groups(self, name: str) -> int:
        """The `groups` a conv node has at the current widths (depthwise follows its input)."""
        node = self.node(name)
        assert isinstance(node.attrs, Conv2dAttrs | ConvTranspose2dAttrs)
        c_in_full = self.analysis.channels(self.layout(node.inputs[0]), {})
        if node.attrs.groups == c_in_full and node.attrs.groups > 1:
            return self.shape(node.inputs[0])[0]
        return node.attrs.groups

    def slice_bounds(self, name: str) -> tuple[int, int]:
        """Channels [start, stop) that slice node `name` takes from its input at the current
        widths (whole segments shrink; a cut segment is fixed at full width)."""
        attrs = self.node(name).attrs
        a, widths = self.analysis, dict(self.width_overrides)
        start: int | None = None
        stop = offset = current = 0
        for seg in self.layout(self.node(name).inputs[0]):
            full = a.info[seg.group].full_width * seg.inner
            now = widths.get(seg.group, a.info[seg.group].full_width) * seg.inner
            lo, hi = max(attrs.start, offset), min(attrs.stop, offset + full)
            if lo < hi:
                whole = lo == offset and hi == offset + full
                start = (current if whole else current + lo - offset) if start is None else start
                stop = current + now if whole else current + hi - offset
            offset += full
            current += now
        return (start or 0), stop

    # --- checks ---------------------------------------------------------------------------

    def _syntax_problems(self) -> list[str]:
        problems: list[str] = []
        seen: set[str] = {INPUT}
        for node in self.nodes:
            problems += _node_problems(node, seen)
            seen.add(node.name)
        if not self.outputs:
            problems.append("the network has no outputs; name at least one node in outputs")
        problems += [
            f"output {o!r} is not a node; name a node of the network" for o in self.outputs
            if o not in seen or o == INPUT
        ]
        if len(self.input_shape) not in (1, 3) or any(d <= 0 for d in self.input_shape):
            problems.append(
                f"input_shape {self.input_shape} must be (C, H, W) or (F,) with positive sizes, "
                "without the batch dimension"
            )
        if self.step < 1:
            problems.append(f"step {self.step} must be >= 1 (the channel grid of every group)")
        return problems

    def lint(self) -> None:
        """Check every invariant; raise `LintError` listing each broken one, with its fix."""
        problems = self._syntax_problems()
        if not problems:
            try:
                _ = self.analysis
            except IRError as exc:
                problems.append(str(exc))
        if not problems:
            problems += self._width_problems() + self._shape_problems() + self._dead_nodes()
        if problems:
            raise LintError(problems)

    def _width_problems(self) -> list[str]:
        problems = []
        prunable = set(self.analysis.prunable)
        for gid, width in self.width_overrides:
            if gid not in prunable:
                problems.append(f"width set for {gid!r}, which is not a prunable group")
            elif not self._group(gid, width).is_valid(width):
                problems.append(_width_message(self._group(gid, width), width))
        return problems

    def _shape_problems(self) -> list[str]:
        problems = []
        removed = self.removed
        for node in self.nodes:
            if node.name in removed:
                continue
            shape = self.shape(node.name)
            if any(d <= 0 for d in shape):
                problems.append(f"node {node.name!r} has output shape {shape}; every size must be > 0")
            if node.op in CONVOLUTIONS:
                g, c_in = self.conv_groups(node.name), self.shape(node.inputs[0])[0]
                if c_in % g or shape[0] % g:
                    problems.append(
                        f"conv {node.name!r}: groups={g} does not divide in={c_in}/out={shape[0]}"
                        " at these widths; use widths that are multiples of the group's blocks"
                    )
        return problems

    def _dead_nodes(self) -> list[str]:
        used = set(self.outputs)
        for node in reversed(self.nodes):
            if node.name in used:
                used.update(node.inputs)
        return [
            f"node {n.name!r} feeds no output; remove it or add it to outputs"
            for n in self.nodes if n.name not in used
        ]

    # --- serialization --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "input_shape": list(self.input_shape),
            "step": self.step,
            "nodes": [
                {"name": n.name, "op": n.op.value, "inputs": list(n.inputs), "attrs": asdict(n.attrs)}
                for n in self.nodes
            ],
            "outputs": list(self.outputs),
            "widths": dict(self.width_overrides),
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Network:
        _check_header(data)
        try:
            nodes = tuple(_node_from_dict(d) for d in data["nodes"])
            net = cls(nodes, tuple(data["input_shape"]), tuple(data["outputs"]), step=int(data["step"]))
            widths = {str(k): v for k, v in data.get("widths", {}).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"malformed network document: {exc!r}; re-export it with to_json()") from exc
        return net.with_widths(widths)

    @classmethod
    def from_json(cls, text: str) -> Network:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FormatError(f"network JSON does not parse: {exc}; is the file complete?") from exc
        if not isinstance(data, dict):
            raise FormatError("network JSON must be an object written by Network.to_json()")
        return cls.from_dict(data)


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
    n = len(node.inputs)
    arity = RULES[node.op].arity
    if isinstance(node.attrs, ScalarAttrs) and node.attrs.scalar is not None:
        arity = 1
    elif node.op in (OpKind.ADD, OpKind.MUL):
        arity = 2
    if (arity is None and n >= 1) or n == arity:
        return []
    want = "one or more" if arity is None else str(arity)
    return [f"node {node.name!r} ({node.op.value}) takes {want} input(s), got {n}"]


def _width_message(group: ChannelGroup, width: int) -> str:
    valid = group.valid_widths(bypass=True)
    zero = "; or 0, which removes its residual branch" if group.bypass else ""
    return (
        f"width {width} is invalid for group {group.id!r}: it must be between "
        f"{group.min_width} and {group.full_width} and a multiple of {group.step} "
        f"(or the full width{zero}); valid: {_preview(valid)}"
    )


def _preview(items: tuple[Any, ...], limit: int = 12) -> str:
    shown = ", ".join(map(str, items[:limit]))
    return f"[{shown}{', ...' if len(items) > limit else ''}]"


def _check_header(data: Mapping[str, Any]) -> None:
    if data.get("format") != FORMAT:
        raise FormatError(
            f"not a netopt network document (format {data.get('format')!r}, expected {FORMAT!r})"
        )
    if data.get("version") != FORMAT_VERSION:
        raise FormatError(
            f"network format version {data.get('version')!r} is not supported by this netopt "
            f"(reads version {FORMAT_VERSION}); upgrade netopt or re-export the network"
        )


def _node_from_dict(d: Mapping[str, Any]) -> Node:
    try:
        op = OpKind(d["op"])
    except ValueError:
        known = ", ".join(k.value for k in OpKind)
        raise FormatError(f"node {d.get('name')!r} has unknown op {d['op']!r}; known: {known}") from None
    attrs = attrs_from_dict(RULES[op].attrs, dict(d.get("attrs", {})))
    return Node(str(d["name"]), op, tuple(d["inputs"]), attrs)

