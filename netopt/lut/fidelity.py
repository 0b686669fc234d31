"""How far to trust a lookup table: estimates against end-to-end measurements (paper, Fig. 4)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy.stats import spearmanr

from netopt.lut.table import LookupTable
from netopt.lut.variants import random_variants
from netopt.report.tables import markdown_table

if TYPE_CHECKING:
    from netopt.bridge import Traced

__all__ = ["Agreement", "FidelityReport", "fidelity"]


@dataclass(frozen=True)
class Agreement:
    """Summary of (estimate, measured) pairs."""

    within5: float
    within10: float
    rmspe: float
    spearman: float

    @classmethod
    def of(cls, estimates: np.ndarray, measured: np.ndarray) -> Agreement:
        err = (estimates - measured) / measured
        rho = float(spearmanr(estimates, measured).statistic) if len(measured) > 2 else float("nan")
        return cls(float(np.mean(np.abs(err) <= 0.05)), float(np.mean(np.abs(err) <= 0.10)),
                   float(np.sqrt(np.mean(err**2))), rho)


@dataclass(frozen=True)
class FidelityReport:
    """Calibrated and naive estimates of N variants against their measured end-to-end medians."""

    measured: tuple[float, ...]
    calibrated: tuple[float, ...]
    naive: tuple[float, ...]
    unit: str

    def agreement(self, which: str = "calibrated") -> Agreement:
        return Agreement.of(np.array(getattr(self, which)), np.array(self.measured))

    def table(self) -> str:
        rows = [[which, f"{a.within5:.0%}", f"{a.within10:.0%}", f"{a.rmspe:.1%}", f"{a.spearman:.3f}"]
                for which in ("naive", "calibrated") if (a := self.agreement(which))]
        return markdown_table([f"estimate ({len(self.measured)} variants)", "within ±5%", "within ±10%", "RMSPE",
                               "Spearman"], rows)

    def plot(self, path: str | Path, title: str = "lookup table fidelity") -> Path:
        """Scatter of estimated against measured cost, with the y = x and ±10% lines."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
        ax.scatter(self.measured, self.naive, s=12, marker="x", color="tab:gray", label="naive layer sum")
        ax.scatter(self.measured, self.calibrated, s=14, color="tab:blue", label="calibrated estimate")
        top = max(max(self.measured), max(self.naive), max(self.calibrated)) * 1.05
        line = np.array([0.0, top])
        ax.plot(line, line, color="black", lw=1, label="y = x")
        ax.fill_between(line, line * 0.9, line * 1.1, color="tab:blue", alpha=0.1, label="±10%")
        ax.set(xlim=(0, top), ylim=(0, top), xlabel=f"measured ({self.unit})",
               ylabel=f"estimated ({self.unit})", title=title)
        ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out)
        plt.close(fig)
        return out


def fidelity(lut: LookupTable, traced: Traced, variants: int = 30, seed: int = 1) -> FidelityReport:
    """Estimate and measure `variants` random shrunken networks of `traced` (not those used to calibrate)."""
    nets = random_variants(traced.network, variants, seed=seed + 1000)
    lut.ensure(nets, progress="measuring layers")
    measured = tuple(m.median for m in lut.measure_networks(traced, nets))
    return FidelityReport(measured, tuple(lut.estimate(n) for n in nets), tuple(lut.naive_sum(n) for n in nets),
                          lut.unit)
