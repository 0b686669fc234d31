"""Layer-wise lookup tables: measured once per platform, calibrated, with a fidelity report.

`LookupTable` is the public face of three parts: unit costs (`unitcosts`), whole networks
measured end to end (`networks`) and the calibration (`calibrator`, its fit in `calibration`),
kept in a `stores.Store` (SQLite: `store`; PostgreSQL: `pgstore`).
"""

from netopt.lut.calibration import Calibration
from netopt.lut.fidelity import Agreement, FidelityReport, fidelity
from netopt.lut.networks import structure_key
from netopt.lut.table import LookupTable
from netopt.lut.units import Unit, units
from netopt.lut.variants import random_variants

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
