"""The two figures every adaptation writes: the family's accuracy against a resource (the
trade-off frontier), and each group's width before and after (like the paper's Fig. 10)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from netopt.ir import Network

__all__ = ["Adaptation", "Member", "plot_family", "plot_widths"]


class Member(Protocol):
    """What the plots read of one network of a family (a `netopt.strategies.Candidate`)."""

    @property
    def network(self) -> Network: ...

    @property
    def accuracy(self) -> float: ...

    @property
    def resources(self) -> Mapping[str, float]: ...


class Adaptation(Protocol):
    """What the plots read of an adaptation's result (a `netopt.strategies.Result`): reporting
    sits below the strategies, so it names what it reads instead of importing them."""

    @property
    def final(self) -> Member: ...

    @property
    def family(self) -> Sequence[Member]: ...

    @property
    def start(self) -> Network | None: ...


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_family(result: Adaptation, resource: str, path: str | Path, unit: str = "") -> Path:
    """Holdout accuracy of every family member against `resource`, the final network marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    xs = [c.resources[resource] for c in result.family]
    ax.plot(xs, [c.accuracy for c in result.family], "o-", ms=3, label="family (short-term fine-tuned)")
    final = result.final
    ax.plot([final.resources[resource]], [final.accuracy], "*", ms=12, color="tab:red", label="final (long-term)")
    ax.set(xlabel=f"{resource} ({unit})" if unit else resource, ylabel="holdout score",
           title=f"accuracy vs {resource}")
    ax.invert_xaxis()
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_widths(result: Adaptation, path: str | Path) -> Path:
    """Channels of every group in the starting and in the final network."""
    plt = _pyplot()
    start, final = result.start or result.family[0].network, result.final.network
    ids = [g.id for g in start.groups]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * len(ids)), 3.6), dpi=120)
    positions = range(len(ids))
    ax.bar([p - 0.2 for p in positions], [start.widths[g] for g in ids], 0.4, label="start")
    ax.bar([p + 0.2 for p in positions], [final.widths[g] for g in ids], 0.4, label="adapted")
    ax.set_xticks(list(positions), ids, rotation=70, fontsize=7)
    ax.set(ylabel="channels", title="channels per group, before and after")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
