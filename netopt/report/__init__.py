"""Plots and tables of a result: the family's trade-off, widths before and after, markdown tables.

The plots import matplotlib, so they load on first use; `tables` imports nothing heavy.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from netopt.report.tables import markdown_table

if TYPE_CHECKING:
    from netopt.report.plots import plot_family, plot_widths

__all__ = ["markdown_table", "plot_family", "plot_widths"]


def __getattr__(name: str) -> Any:
    if name in ("plot_family", "plot_widths"):
        return getattr(import_module("netopt.report.plots"), name)
    raise AttributeError(f"module 'netopt.report' has no attribute {name!r}")
