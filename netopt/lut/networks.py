"""Whole networks measured end to end, side by side, and kept in the table beside the units.

A budget, a calibration and a check of a final network read the same figure in every process
and after a resume: a network is measured once (`measured`) and read back from then on.
Networks are measured side by side (call by call in turn, where the backend can:
`Backend.measure_together`), so that their ratios hold while the machine's speed moves.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tqdm import tqdm

from netopt.ir import Network
from netopt.lut.stores import Store
from netopt.lut.unitcosts import Meter
from netopt.measure.base import MEASURED_PASSES, Backend, Measurement, NoisyMeasurementWarning, summarize

if TYPE_CHECKING:
    import torch
    from torch import nn

    from netopt.bridge import Traced

__all__ = ["NetworkMeasurements", "network_signature", "structure_key"]


def structure_key(net: Network) -> str:
    """Identifies a network's structure (not its widths): calibrations are kept per structure.
    Taken over the IR's canonical text, so that it outlives changes of the IR's file format."""
    return hashlib.sha256(net.at_full_width().canonical_json().encode()).hexdigest()[:24]


def network_signature(net: Network) -> str:
    """A whole network at its widths: the key of its end-to-end measurement in the table."""
    return "network:" + hashlib.sha256(net.canonical_json().encode()).hexdigest()[:24]


class NetworkMeasurements:
    """End-to-end measurements of whole networks on `backend`, kept in `store`."""

    def __init__(self, store: Store, backend: Backend, meter: Meter) -> None:
        self.store, self.backend, self.meter = store, backend, meter
        self._structures: dict[tuple[object, ...], str] = {}

    def structure(self, net: Network) -> str:
        """`structure_key(net)`, remembered: estimates ask for it thousands of times."""
        key = (net.nodes, net.input_shape, net.outputs, net.step)
        if key not in self._structures:
            self._structures[key] = structure_key(net)
        return self._structures[key]

    def measure_module(self, module: nn.Module, example_input: torch.Tensor) -> Measurement:
        """One end-to-end measurement of `module` on the backend."""
        return self.backend.measure(module, example_input)

    def measure_networks(self, traced: Traced, nets: Sequence[Network], passes: int = 2) -> list[Measurement]:
        """End-to-end measurements of `nets`, materialized from `traced`, taken now: side by side,
        in `passes` windows, each network's samples pooled over them (a window's load slows
        all of them alike)."""
        x = traced.example_input()
        items = [(traced.materialize(net), x) for net in nets]
        pooled: list[list[float]] = [[] for _ in nets]
        always_noisy = [True] * len(nets)
        fingerprint = ""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NoisyMeasurementWarning)
            for p in tqdm(range(passes), desc="measuring networks", disable=None if len(nets) > 2 else True,
                          leave=False):
                for i, m in enumerate(self.backend.measure_together(items, seed=p)):
                    pooled[i].extend(m.samples)
                    always_noisy[i] = always_noisy[i] and m.noisy
                    fingerprint = m.fingerprint
            kept = [summarize(samples, self.backend.unit, fingerprint) for samples in pooled]
        if any(always_noisy):  # one line for the lot, not one per window
            worst = max(m.iqr_ratio for m in kept)
            warnings.warn(f"{sum(always_noisy)} of {len(kept)} whole-network measurements stayed noisy in all "
                          f"{passes} windows (IQR/median up to {worst:.0%}): the machine is busy; their medians are "
                          "kept", NoisyMeasurementWarning, stacklevel=3)
        return kept

    def measured(self, traced: Traced, nets: Sequence[Network]) -> list[Measurement]:
        """End-to-end measurements of `nets` as the table keeps them: each network measured once
        and read back from then on. Those not held yet are measured side by side with the full
        network (in `MEASURED_PASSES` windows) and expressed at the level the full network was
        kept at when it was first measured, so that figures taken an hour apart compare."""
        sigs = [network_signature(n) for n in nets]
        found = self.store.get_many(sorted(set(sigs)))
        todo = {s: n for s, n in zip(sigs, nets, strict=True) if s not in found}
        if todo:
            started = time.perf_counter()
            if self.backend.interleaves:
                batch, taken = self._beside_full(traced, todo)
            else:  # measured one at a time: nothing to anchor to
                batch = list(todo.values())
                taken = self.measure_networks(traced, batch, passes=MEASURED_PASSES)
            for net, m in zip(batch, taken, strict=True):
                self.store.put(network_signature(net), {"network": self.structure(net), "widths": net.widths}, m)
            self.meter.seconds += time.perf_counter() - started
            found = self.store.get_many(sorted(set(sigs)))  # another process's figure, where it came first
        return [found[s] for s in sigs]

    def _beside_full(self, traced: Traced, todo: dict[str, Network]) -> tuple[list[Network], list[Measurement]]:
        """The networks of `todo` measured one at a time beside the full network (a small
        network's figure depends on its company), at the full network's kept level; the full
        network too where the table holds none: its figure is the level of all that follow."""
        full = traced.network.at_full_width()
        anchor = network_signature(full)
        kept = self.store.get(anchor)
        others = [n for s, n in todo.items() if s != anchor]
        batch: list[Network] = []
        taken: list[Measurement] = []
        if kept is None:
            first = self.measure_networks(traced, [full, *others[:1]], passes=MEASURED_PASSES)
            kept, batch, taken, others = first[0], [full, *others[:1]], first, others[1:]
        for net in others:
            now = self.measure_networks(traced, [full, net], passes=MEASURED_PASSES)
            batch.append(net)
            taken.append(now[1].scaled(kept.median / now[0].median))
        return batch, taken
