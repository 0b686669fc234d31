"""`Node` and `Network`: the immutable structural IR.

A `Network` is a fixed structure (nodes at full width) plus the widths of its channel groups.
`with_widths` returns a new Network that shares the structural analysis of its parent, so a
search can derive thousands of candidates cheaply. Nothing here imports torch. The class keeps
every method users call; the lint rules live in `checks`, the JSON form in `document`, and the
checking of a width assignment in `widths`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from netopt.errors import IRError, LintError, WidthError
from netopt.ir import checks, document
from netopt.ir.bypass import Branch, branches, reduce
from netopt.ir.document import FORMAT, FORMAT_VERSION
from netopt.ir.groups import Analysis, ChannelGroup, Layout, analyze
from netopt.ir.node import Node
from netopt.ir.ops import Conv2dAttrs, ConvTranspose2dAttrs, SliceAttrs
from netopt.ir.widths import assigned, regrouped, slice_bounds

__all__ = ["Node", "Network", "FORMAT", "FORMAT_VERSION"]

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
        problems = checks.syntax_problems(self.nodes, self.input_shape, self.outputs, self.step)
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
            f"{checks.preview(self.analysis.prunable)}; use an id from Network.groups"
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
        """A new Network with the given groups at the given widths; others keep theirs.

        >>> from netopt.ir import Builder
        >>> b = Builder((3, 16, 16))
        >>> net = b.build(b.linear(b.flatten(b.adaptive_avgpool(b.relu(b.conv(b.input, 32, 3)))), 10))
        >>> net.widths
        {'conv2d0': 32}
        >>> smaller = net.with_widths({"conv2d0": 16})
        >>> smaller.widths, smaller.shape("linear0")
        ({'conv2d0': 16}, (10,))
        """
        kept = assigned(self.width_overrides, widths, self.group, self.full_widths)
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
            pairs = ((self.layout(n.name), bare.layout(n.name)) for n in bare.nodes)
            cached = self._local["reduced"] = bare.with_widths(
                regrouped(pairs, bare.analysis.prunable, self.width_overrides))
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
        node = self.node(name)
        assert isinstance(node.attrs, SliceAttrs)
        return slice_bounds(node.attrs, self.layout(node.inputs[0]), self.analysis, dict(self.width_overrides))

    # --- checks ---------------------------------------------------------------------------

    def lint(self) -> None:
        """Check every invariant; raise `LintError` listing each broken one, with its fix."""
        problems = checks.syntax_problems(self.nodes, self.input_shape, self.outputs, self.step)
        if not problems:
            try:
                _ = self.analysis
            except IRError as exc:
                problems.append(str(exc))
        if not problems:
            problems += checks.width_problems(self.width_overrides, self.analysis.prunable, self._group)
            problems += checks.shape_problems(self.nodes, self.removed, self.shape, self.conv_groups)
            problems += checks.dead_nodes(self.nodes, self.outputs)
        if problems:
            raise LintError(problems)

    # --- serialization (netopt.ir.document) -----------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The network's JSON document (format `netopt.ir.network`, version under `format_version`)."""
        return document.document(self)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def canonical_json(self) -> str:
        """Text that identifies this network at its widths, fixed across format versions: hash it
        for keys that must outlive a format change (lookup-table entries)."""
        return document.canonical_json(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Network:
        """The network of a document of this or an older format version."""
        net, widths = document.read(data, lambda p: (cls(p.nodes, p.input_shape, p.outputs, step=p.step), p.widths))
        return net.with_widths(widths)

    @classmethod
    def from_json(cls, text: str) -> Network:
        return cls.from_dict(document.parse(text))
