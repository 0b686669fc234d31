"""A griffe extension: a docstring's bare doctest (`>>>` lines and their output) renders as code.

netopt's docstrings are prose with a doctest where an example helps (STYLE.md), not Google-style
sections; without this, Markdown would read `>>>` as nested quotes and `[...]` output as links.
"""

from __future__ import annotations

from typing import Any

import griffe

FENCE = "```"


def fence_doctests(text: str) -> str:
    """`text` with each run of doctest lines (from a `>>>` line to the next blank line) fenced as pycon."""
    out: list[str] = []
    inside = fenced = False
    for line in text.split("\n"):
        if line.lstrip().startswith(FENCE):
            fenced = not fenced
        if not fenced and not inside and line.lstrip().startswith(">>>"):
            out.append(FENCE + "pycon")
            inside = True
        elif inside and not line.strip():
            out.append(FENCE)
            inside = False
        out.append(line)
    return "\n".join([*out, FENCE] if inside else out)


class DoctestBlocks(griffe.Extension):
    """Fence bare doctests in every docstring as it is loaded."""

    def on_instance(self, *, node: Any, obj: griffe.Object, agent: Any, **kwargs: Any) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
