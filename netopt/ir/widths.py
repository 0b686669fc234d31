"""The width assignment: which widths a network may be given, and what its slices take at them."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Mapping

from netopt.errors import WidthError
from netopt.ir.checks import width_message
from netopt.ir.groups import Analysis, ChannelGroup, Layout
from netopt.ir.ops import SliceAttrs

__all__ = ["assigned", "regrouped", "slice_bounds"]


def assigned(overrides: tuple[tuple[str, int], ...], widths: Mapping[str, int], group: Callable[[str], ChannelGroup],
             full: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    """`overrides` with `widths` applied, each checked against its group; full widths left out
    (so that equal assignments compare and hash alike)."""
    if not isinstance(widths, Mapping):
        raise WidthError(f"widths must be a mapping {{group id: width}}, got {type(widths).__name__} {widths!r}; "
                         "e.g. {net.groups[0].id: 16}")
    merged = dict(overrides)
    for gid, width in widths.items():
        g = group(gid)
        if isinstance(width, bool) or not isinstance(width, numbers.Real) or width != int(width):
            raise WidthError(f"width {width!r} for group {gid!r} is not a whole number")
        if not g.is_valid(int(width)):
            raise WidthError(width_message(g, int(width)))
        merged[gid] = int(width)
    return tuple((g, w) for g, w in merged.items() if w != full[g])


def regrouped(pairs: Iterable[tuple[Layout, Layout]], prunable: Iterable[str],
              overrides: tuple[tuple[str, int], ...]) -> dict[str, int]:
    """The widths of `overrides` under a reduced network's group ids, from the (before, after)
    layouts of each node they share: a group whose first producer was removed changes its id."""
    moved: dict[str, str] = {}
    for old_layout, new_layout in pairs:
        for old, new in zip(old_layout, new_layout, strict=True):
            moved.setdefault(old.group, new.group)
    kept = set(prunable)
    return {moved[g]: w for g, w in overrides if g in moved and moved[g] in kept}


def slice_bounds(attrs: SliceAttrs, layout: Layout, analysis: Analysis, widths: Mapping[str, int]) -> tuple[int, int]:
    """Channels [start, stop) a slice with `attrs` takes from an input of `layout` at `widths`
    (whole segments shrink; a cut segment is fixed at full width)."""
    start: int | None = None
    stop = offset = current = 0
    for seg in layout:
        full = analysis.info[seg.group].full_width * seg.inner
        now = widths.get(seg.group, analysis.info[seg.group].full_width) * seg.inner
        lo, hi = max(attrs.start, offset), min(attrs.stop, offset + full)
        if lo < hi:
            whole = lo == offset and hi == offset + full
            start = (current if whole else current + lo - offset) if start is None else start
            stop = current + now if whole else current + hi - offset
        offset += full
        current += now
    return (start or 0), stop
