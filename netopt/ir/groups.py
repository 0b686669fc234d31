"""Channel groups: the sets of channels that must shrink in lockstep.

The analysis walks the nodes once, in order. Every producer (a conv or linear layer that is
not channel-wise) starts a group; channel-wise ops pass their input's layout on; the operands
of a residual add or an SE multiply are merged; concat lays its inputs' groups side by side;
flatten gives each channel its H*W features; a grouped conv or a GroupNorm keeps its blocks
equal. Groups that touch the network input, an output or an opaque block are fixed. The
result is structural: it does not depend on the widths.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from netopt.errors import IRError
from netopt.ir.heads import head_projections
from netopt.ir.ops import (
    RULES,
    AttentionAttrs,
    Conv2dAttrs,
    ConvTranspose2dAttrs,
    GroupNormAttrs,
    HeadSliceAttrs,
    LinearAttrs,
    OpaqueAttrs,
    SliceAttrs,
    SpaceToDepthAttrs,
    Spatial,
)
from netopt.ir.pieces import Piece, split_projections
from netopt.ir.single_head import single_head_pieces

if TYPE_CHECKING:
    from netopt.ir.node import Node

__all__ = ["Segment", "Layout", "ChannelGroup", "Analysis", "analyze", "INPUT"]

INPUT = "input"
"""Name of the network input; a node may not take it."""


@dataclass(frozen=True)
class Segment:
    """A run of channels owned by one group; each group channel spans `inner` channels."""

    group: str
    inner: int = 1


Layout = tuple[Segment, ...]


@dataclass(frozen=True, kw_only=True)
class ChannelGroup:
    """A prunable unit: `width` channels out of `full_width`, on a grid of `step`.

    `blocks` > 1 means a grouped conv splits the channels into that many equal blocks, which
    must all keep the same number of channels. `producers` are the layers whose filters make
    the channels; `consumers` the layers whose input channels shrink with them. A `bypass`
    group lies inside a residual branch and may also take width 0: the branch is removed
    (NetAdaptV2's channel-level bypass; see `netopt.ir.bypass`). The group of an attention's q, k
    and v projections counts whole heads: its widths, step and full width are numbers of heads.
    """

    id: str
    width: int
    full_width: int
    min_width: int
    step: int
    blocks: int = 1
    producers: tuple[str, ...] = ()
    consumers: tuple[str, ...] = ()
    bypass: bool = False

    def valid_widths(self, bypass: bool = False) -> tuple[int, ...]:
        """Every width this group may take, ascending: the step grid and the full width (and 0
        first, with `bypass`, where the group is a bypass group)."""
        grid = range(self.min_width, self.full_width, self.step)
        return (*((0,) if bypass and self.bypass else ()), *grid, self.full_width)

    def is_valid(self, width: int) -> bool:
        return width == self.full_width or (width == 0 and self.bypass) or (
            self.min_width <= width < self.full_width and width % self.step == 0
        )


@dataclass(frozen=True)
class GroupInfo:
    full_width: int
    blocks: int
    fixed: bool
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    unit: int = 1  # channels per group channel of a heads group (its width counts heads)


@dataclass(frozen=True)
class Analysis:
    """Structural facts of a network, shared by every width assignment of it."""

    spatial: Mapping[str, Spatial]
    layouts: Mapping[str, Layout]
    info: Mapping[str, GroupInfo]
    step: int
    prunable: tuple[str, ...] = field(default=())

    def group_step(self, gid: str) -> int:
        info = self.info[gid]
        return _grid(_unit_step(self.step, info.unit), info.blocks)

    def channels(self, layout: Layout, widths: Mapping[str, int]) -> int:
        return sum(widths.get(s.group, self.info[s.group].full_width) * s.inner for s in layout)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}
        self.rank: dict[str, int] = {}

    @property
    def order(self) -> list[str]:
        return list(self.parent)

    def add(self, key: str) -> None:
        self.parent[key] = key
        self.rank[key] = len(self.rank)

    def find(self, key: str) -> str:
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:  # the earlier-created group stays the root, so ids follow node order
            first, second = sorted((ra, rb), key=self.rank.__getitem__)
            self.parent[second] = first


class _Walker:
    """One pass over the nodes, building layouts and merging groups."""

    def __init__(self, input_shape: Sequence[int], step: int, heads: Mapping[str, tuple[int, int]]) -> None:
        self.heads = heads
        self.pieces: Mapping[str, tuple[Piece, ...]] = {}  # separable attention's qkv (netopt.ir.pieces)
        self.owners: dict[str, str] = {}  # the group of a piece -> the producer it is cut from
        self.uf = _UnionFind()
        self.full: dict[str, int] = {}
        self.fixed: set[str] = set()
        self.blocks: dict[str, int] = {}
        self.units: dict[str, int] = {}
        self.spatial: dict[str, Spatial] = {INPUT: tuple(input_shape[1:])}
        self.layouts: dict[str, Layout] = {}
        self.step = step
        self.producers: set[str] = set()
        self.consumers: dict[str, list[str]] = {}
        self._new_group(INPUT, input_shape[0], fixed=True)
        self.layouts[INPUT] = (Segment(INPUT),)

    def _new_group(self, gid: str, width: int, *, fixed: bool = False) -> Layout:
        self.uf.add(gid)
        self.full[gid] = width
        if fixed:
            self.fixed.add(gid)
        return (Segment(gid),)

    def full_channels(self, layout: Layout) -> int:
        return sum(self.full[s.group] * s.inner for s in layout)

    def fix(self, layouts: Sequence[Layout]) -> None:
        self.fixed.update(s.group for lay in layouts for s in lay)

    def visit(self, node: Node) -> None:
        rule = RULES[node.op]
        ins = [self.layouts[i] for i in node.inputs]
        self.spatial[node.name] = rule.spatial(node.name, node.attrs, [self.spatial[i] for i in node.inputs])
        handler = getattr(self, f"_{rule.role.value}")
        self.layouts[node.name] = handler(node, ins)

    def _produce(self, node: Node, ins: list[Layout]) -> Layout:
        attrs = node.attrs
        if node.name in self.pieces:  # separable attention cuts its output into pieces (netopt.ir.pieces)
            self._consume(node.name, ins[0])
            return self._pieces(node, self.pieces[node.name])
        if isinstance(attrs, LinearAttrs):
            self._consume(node.name, ins[0])
            if node.name in self.heads:  # attention splits its output into heads (netopt.ir.heads)
                return self._heads(node, attrs.out_features, *self.heads[node.name])
            return self._new_group(node.name, attrs.out_features)
        assert isinstance(attrs, Conv2dAttrs | ConvTranspose2dAttrs)
        if node.name in self.heads:  # a 1x1 conv attention splits into heads (netopt.ir.heads)
            self._consume(node.name, ins[0])
            return self._heads(node, attrs.out_channels, *self.heads[node.name])
        c_in = self.full_channels(ins[0])
        g = attrs.groups
        if c_in % g or attrs.out_channels % g:
            raise IRError(
                f"conv node {node.name!r}: groups={g} must divide in_channels={c_in} and "
                f"out_channels={attrs.out_channels}; fix the groups or the channel counts"
            )
        if g == c_in and g > 1:  # depthwise: channel c of the input makes channels c*k..c*k+k-1
            mult = attrs.out_channels // g
            return tuple(Segment(s.group, s.inner * mult) for s in ins[0])
        self._consume(node.name, ins[0])
        out = self._new_group(node.name, attrs.out_channels)
        if g > 1:
            self.blocks[node.name] = g
            if len(ins[0]) == 1 and ins[0][0].inner == 1:
                gid = ins[0][0].group
                self.blocks[gid] = math.lcm(self.blocks.get(gid, 1), g)
            else:
                self.fix(ins)
        return out

    def _heads(self, node: Node, channels: int, unit: int, parts: int) -> Layout:
        """A producer split into heads: `parts` runs of heads x `unit` channels, one group of heads."""
        if unit < 1 or parts < 1 or channels % (unit * parts):
            raise IRError(
                f"node {node.name!r}: {channels} output channels do not split into {parts} part(s) of "
                f"heads of {unit} channels; fix unit and parts (channels = parts * heads * unit)"
            )
        self._new_group(node.name, channels // (unit * parts))
        self.units[node.name] = unit
        return (Segment(node.name, unit),) * parts

    def _pieces(self, node: Node, pieces: Sequence[Piece]) -> Layout:
        """A producer cut into pieces, one group each (the first free one named after the node)."""
        layout: list[Segment] = []
        start, named = 0, False
        for width, fixed in pieces:
            gid = node.name if not (fixed or named) else f"{node.name}@{start}"
            named = named or not fixed
            layout.extend(self._new_group(gid, width, fixed=fixed))
            self.owners[gid] = node.name
            start += width
        return tuple(layout)

    def _attend(self, node: Node, ins: list[Layout]) -> Layout:
        """Attention: q, k and v lose whole heads together; anything else stays at full width."""
        attrs = node.attrs
        assert isinstance(attrs, AttentionAttrs)
        heads = [lay[0] for lay in ins if len(lay) == 1 and lay[0].group in self.units]
        dims = (attrs.qk_dim, attrs.qk_dim, attrs.v_dim)
        if self._one_head(attrs, ins):  # one head: q's channels pair with k's, v's are the output's
            self.uf.union(ins[0][0].group, ins[1][0].group)
            return ins[2]
        if self.full_channels(ins[1]) == attrs.qk_dim < self.full_channels(ins[0]):
            return self._multi_query(node, ins)
        if len(heads) != 3 or len({self.full[s.group] for s in heads}) != 1 \
                or any(s.inner != d for s, d in zip(heads, dims, strict=True)):
            self.fix(ins)
            return ins[2]
        for seg in heads[1:]:
            self.uf.union(heads[0].group, seg.group)
        return ins[2]

    def _one_head(self, attrs: AttentionAttrs, ins: list[Layout]) -> bool:
        """q, k and v of a softmax attention of one head, each a group of its own channels
        (netopt.ir.single_head cuts their projection into pieces)."""
        dims = (attrs.qk_dim, attrs.qk_dim, attrs.v_dim)
        return not (attrs.linear or attrs.talking or attrs.channels) and all(
            len(lay) == 1 and lay[0].inner == 1 and lay[0].group not in self.units and self.full[lay[0].group] == d
            for lay, d in zip(ins, dims, strict=True))

    def _multi_query(self, node: Node, ins: list[Layout]) -> Layout:
        """Multi-query attention: one k and v head every q head shares stays whole; the q heads
        shrink, and each keeps its v_dim output channels (else all stay at full width)."""
        attrs = node.attrs
        assert isinstance(attrs, AttentionAttrs)
        self.fix(ins[1:])
        q = ins[0]
        if len(q) == 1 and q[0].group in self.units and q[0].inner == attrs.qk_dim:
            return (Segment(q[0].group, attrs.v_dim),)
        self.fix(ins)
        return self._new_group(node.name, self.full_channels(q) // attrs.qk_dim * attrs.v_dim, fixed=True)

    def _part(self, node: Node, ins: list[Layout]) -> Layout:
        """The same channels of every head: whole heads shrink with their group; else full width."""
        attrs = node.attrs
        assert isinstance(attrs, HeadSliceAttrs)
        size = attrs.stop - attrs.start
        lay = ins[0]
        if len(lay) == 1 and lay[0].inner == attrs.unit and 0 <= attrs.start < attrs.stop <= attrs.unit:
            return (Segment(lay[0].group, size),)
        total = self.full_channels(lay)
        if attrs.unit < 1 or total % attrs.unit or not 0 <= attrs.start < attrs.stop <= attrs.unit:
            raise IRError(
                f"head slice node {node.name!r} takes channels [{attrs.start}, {attrs.stop}) of heads of "
                f"{attrs.unit} from {total} channels; unit must divide the channels and hold the range"
            )
        self.fix(ins)
        return self._new_group(node.name, total // attrs.unit * size, fixed=True)

    def _consume(self, name: str, layout: Layout) -> None:
        self.producers.add(name)
        for s in layout:
            names = self.consumers.setdefault(s.group, [])
            if name not in names:
                names.append(name)

    def _follow(self, node: Node, ins: list[Layout]) -> Layout:
        return ins[0]

    def _couple(self, node: Node, ins: list[Layout]) -> Layout:
        counts = [self.full_channels(lay) for lay in ins]
        widest = max(counts)
        if any(c not in (1, widest) for c in counts):
            raise IRError(
                f"elementwise node {node.name!r} combines tensors of {counts} channels; "
                "channels must be equal or 1 (broadcast)"
            )
        operands = [lay for lay, c in zip(ins, counts, strict=True) if c == widest]
        first = operands[0]
        for other in operands[1:]:
            if self._same_shape(first, other):
                for a, b in zip(first, other, strict=True):
                    self.uf.union(a.group, b.group)
            else:  # same channel count, different group structure: keep all at full width
                self.fix([first, other])
        return first

    def _same_shape(self, a: Layout, b: Layout) -> bool:
        return len(a) == len(b) and all(
            x.inner == y.inner and self.full[x.group] == self.full[y.group]
            for x, y in zip(a, b, strict=True)
        )

    def _concat(self, node: Node, ins: list[Layout]) -> Layout:
        return tuple(s for lay in ins for s in lay)

    def _unfold(self, node: Node, ins: list[Layout]) -> Layout:
        """Space to depth: the input's channels once per position of a block x block patch."""
        assert isinstance(node.attrs, SpaceToDepthAttrs)
        return ins[0] * (node.attrs.block ** 2)

    def _flatten(self, node: Node, ins: list[Layout]) -> Layout:
        hw = math.prod(self.spatial[node.inputs[0]])
        return tuple(Segment(s.group, s.inner * hw) for s in ins[0])

    def _slice(self, node: Node, ins: list[Layout]) -> Layout:
        """Whole segments inside the range shrink with their parents; a cut segment is fixed,
        and the piece of it that the slice keeps becomes a fixed group of its own."""
        attrs = node.attrs
        assert isinstance(attrs, SliceAttrs)
        total = self.full_channels(ins[0])
        if not 0 <= attrs.start < attrs.stop <= total:
            raise IRError(
                f"slice node {node.name!r} takes channels [{attrs.start}, {attrs.stop}) of a tensor with "
                f"{total}; start and stop must satisfy 0 <= start < stop <= {total}"
            )
        out: list[Segment] = []
        offset = 0
        for seg in ins[0]:
            size = self.full[seg.group] * seg.inner
            lo, hi = max(attrs.start, offset), min(attrs.stop, offset + size)
            if lo == offset and hi == offset + size:
                out.append(seg)
            elif lo < hi:
                self.fixed.add(seg.group)
                out.extend(self._new_group(f"{node.name}@{lo}", hi - lo, fixed=True))
            offset += size
        return tuple(out)

    def _blocks(self, node: Node, ins: list[Layout]) -> Layout:
        """GroupNorm: its G blocks of channels must stay equal, like a grouped conv's (G == 1 is
        free; G == C normalizes each channel alone and follows the width)."""
        attrs = node.attrs
        assert isinstance(attrs, GroupNormAttrs)
        c, g = self.full_channels(ins[0]), attrs.num_groups
        if g < 1 or c % g:
            raise IRError(
                f"group norm node {node.name!r}: num_groups={g} must divide its {c} channels; "
                "fix num_groups or the channel count"
            )
        if 1 < g < c:
            if len(ins[0]) == 1 and ins[0][0].inner == 1:
                gid = ins[0][0].group
                self.blocks[gid] = math.lcm(self.blocks.get(gid, 1), g)
            else:
                self.fix(ins)
        return ins[0]

    def _shuffle(self, node: Node, ins: list[Layout]) -> Layout:
        """Interleaved channels form no layout of whole groups: everything stays at full width."""
        self.fix(ins)
        return self._new_group(node.name, self.full_channels(ins[0]), fixed=True)

    def _source(self, node: Node, ins: list[Layout]) -> Layout:
        """A constant: a fixed group of its own channels; its input's channels are not read."""
        return self._new_group(node.name, node.attrs.shape[0], fixed=True)

    def _opaque(self, node: Node, ins: list[Layout]) -> Layout:
        assert isinstance(node.attrs, OpaqueAttrs)
        self.fix(ins)
        return self._new_group(node.name, node.attrs.out_shape[0], fixed=True)


def analyze(
    nodes: Sequence[Node], input_shape: Sequence[int], outputs: Sequence[str], step: int
) -> Analysis:
    """Infer spatial shapes and channel layouts, and form the channel groups."""
    walker = _Walker(input_shape, step, head_projections(nodes))
    walker.pieces = {**split_projections(nodes), **single_head_pieces(nodes)}
    for node in nodes:
        walker.visit(node)
    walker.fix([walker.layouts[o] for o in outputs])
    return _finish(walker)


def _finish(w: _Walker) -> Analysis:
    root = {gid: w.uf.find(gid) for gid in w.uf.order}
    layouts = {
        name: tuple(Segment(root[s.group], s.inner) for s in lay) for name, lay in w.layouts.items()
    }
    members: dict[str, list[str]] = {}
    for gid in w.uf.order:
        members.setdefault(root[gid], []).append(gid)
    info: dict[str, GroupInfo] = {}
    for r, ms in members.items():
        blocks = math.lcm(*(w.blocks.get(m, 1) for m in ms))
        fixed = any(m in w.fixed for m in ms) or w.full[r] % blocks != 0
        consumers = tuple(dict.fromkeys(c for m in ms for c in w.consumers.get(m, ())))
        producers = tuple(dict.fromkeys(w.owners.get(m, m) for m in ms if m in w.producers or m in w.owners))
        unit = max((w.units[m] for m in ms if m in w.units), default=1)
        info[r] = GroupInfo(w.full[r], blocks, fixed, producers, consumers, unit)
    prunable = tuple(
        r for r in members
        if not info[r].fixed and _grid(_unit_step(w.step, info[r].unit), info[r].blocks) < info[r].full_width
    )
    return Analysis(w.spatial, layouts, info, w.step, prunable)


def _unit_step(step: int, unit: int) -> int:
    """The step of a heads group, in heads: enough heads for the base step, at least one."""
    return max(1, math.ceil(step / unit))


def _grid(step: int, blocks: int) -> int:
    """A group's step: the smallest multiple of its blocks that is at least the base step."""
    return blocks * math.ceil(step / blocks)
