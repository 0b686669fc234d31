"""Plots and tables of a result: the family's trade-off, widths before and after."""

from netopt.report.plots import plot_family, plot_widths

__all__ = ["plot_family", "plot_widths"]
