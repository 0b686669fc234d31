"""torch <-> IR: trace a model into the IR, materialize a smaller IR network back into torch."""

from netopt.bridge.build import build
from netopt.bridge.materialize import expand, kept_channels, materialize
from netopt.bridge.select import BNGamma, FilterSelector, GroupWeights, L1Magnitude, L2Magnitude
from netopt.bridge.trace import Traced, trace

__all__ = [
    "BNGamma",
    "FilterSelector",
    "GroupWeights",
    "L1Magnitude",
    "L2Magnitude",
    "Traced",
    "build",
    "expand",
    "kept_channels",
    "materialize",
    "trace",
]
