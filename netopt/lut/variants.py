"""A network's structure at other widths: the variants a lookup table calibrates on, checks its
fidelity on, and prebuilds its units over."""

from __future__ import annotations

import random
from collections.abc import Sequence

from netopt.ir import Network

__all__ = ["TILT", "at_fraction", "random_variants", "spread"]

TILT = 0.25
"""How far calibration networks lean by depth (`at_fraction`): the deepest group this much
wider than the global fraction and the first this much narrower, or the other way round."""


def at_fraction(net: Network, fraction: float, seed: int, tilt: float = 0.0) -> Network:
    """The network at a global width fraction (0: every group at its minimum, 1: the full
    network), each group jittered by up to ±0.1 in between, and tilted by depth: `tilt` more
    for the deepest group, `tilt` less for the first (deep layers hold most of the weights and
    little of the compute, so a tilted network has other weights at a like layer sum)."""
    if fraction >= 1.0:
        return net.at_full_width()
    rng = random.Random(seed)
    widths = {}
    depth = max(len(net.groups) - 1, 1)
    for k, g in enumerate(net.groups):
        lean = tilt * (2 * k / depth - 1)
        share = 0.0 if fraction <= 0.0 else min(1.0, max(0.0, fraction + lean + rng.uniform(-0.1, 0.1)))
        valid = g.valid_widths()
        widths[g.id] = valid[0] if share == 0.0 else _nearest(valid, g.min_width + share * (g.full_width - g.min_width))
    return net.with_widths(widths)


def random_variants(net: Network, count: int, seed: int = 0) -> list[Network]:
    """Random shrunken networks spread over the range: a global fraction, jittered per group."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        fraction = rng.uniform(0.25, 1.0)
        widths = {}
        for g in net.groups:
            target = g.full_width * min(1.0, max(0.0, fraction + rng.uniform(-0.15, 0.15)))
            widths[g.id] = _nearest(g.valid_widths(), target)
        out.append(net.with_widths(widths))
    return out


def spread(values: tuple[int, ...], k: int) -> tuple[int, ...]:
    """`k` of `values` evenly spaced, the first and the last among them (all where there are fewer)."""
    if len(values) <= k:
        return values
    picks = {values[round(i * (len(values) - 1) / (k - 1))] for i in range(k)} if k > 1 else {values[-1]}
    return tuple(sorted(picks))


def _nearest(values: Sequence[int], target: float) -> int:
    return min(values, key=lambda w: abs(w - target))
