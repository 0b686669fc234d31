"""Layer-wise lookup tables: measured once per platform, calibrated, with a fidelity report."""

from netopt.lut.fidelity import Agreement, FidelityReport, fidelity
from netopt.lut.store import Calibration
from netopt.lut.table import LookupTable, random_variants, structure_key
from netopt.lut.units import Unit, units

__all__ = [
    "Agreement",
    "Calibration",
    "FidelityReport",
    "LookupTable",
    "Unit",
    "fidelity",
    "random_variants",
    "structure_key",
    "units",
]
