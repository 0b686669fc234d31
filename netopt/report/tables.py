"""Markdown tables: the one helper for every table netopt and its benchmarks print."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["markdown_table"]


def markdown_table(header: Sequence[object], rows: Sequence[Sequence[object]], *, pad: bool = False) -> str:
    """`header` and `rows` as a markdown table; `pad` aligns the columns for reading as text.

    Unpadded, a row may have fewer cells than the header (a failed run's one-cell reason)."""
    if pad:
        widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]

        def line(row: Sequence[object]) -> str:
            return "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

        rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    else:
        def line(row: Sequence[object]) -> str:
            return "| " + " | ".join(map(str, row)) + " |"

        rule = "|---" * len(header) + "|"
    return "\n".join([line(header), rule, *map(line, rows)])
