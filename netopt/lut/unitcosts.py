"""Unit costs: each unit of a network measured once on the table's backend, and their layer sum.

A unit is measured beside a fixed yardstick unit, in batches, and expressed at the level the
yardstick was first measured at: units measured an hour apart, under other loads, add up. The
backend's fixed cost of one call (`overhead`) is measured on the cheapest model there is and
taken off each unit, since a whole network pays it once: layer_sum = overhead + sum(unit - overhead).

A unit headed by an opaque block is measured with a copy of the traced model's module for it
(`add_blocks`), and signed with what that module computes; such a block keeps its full width,
so it is measured once per table.
"""

from __future__ import annotations

import functools
import itertools
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tqdm import tqdm

from netopt.errors import LookupTableError
from netopt.ir import Network, Node
from netopt.lut.probe import describe_block, overhead_module, unit_module, yardstick_module
from netopt.lut.stores import Store
from netopt.lut.units import Unit, sign, units
from netopt.lut.variants import spread
from netopt.measure.base import Backend, Measurement, NoisyMeasurementWarning, steady

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["Meter", "UnitCosts", "OVERHEAD", "YARDSTICK", "UNIT_BATCH"]

OVERHEAD = "overhead"
YARDSTICK = "yardstick"
UNIT_BATCH = 24
"""Units measured side by side with the yardstick in one window."""
Builder = Callable[[], tuple["nn.Module", "torch.Tensor"]]
"""Builds a unit's module and its input, when the unit is measured."""
Measure = Callable[[list[tuple["nn.Module", "torch.Tensor"]]], list[Measurement]]
"""Measures a batch of modules with their inputs."""


@dataclass
class Meter:
    """What a lookup table has measured in this process: units (a warm table: 0) and wall time
    (the rest of an estimate, or of a search, is bookkeeping)."""

    measurements: int = 0
    seconds: float = 0.0


class UnitCosts:
    """The cost of each unit on `backend`, read from `store` or measured there (claims share
    the work among processes; a unit another process claimed is waited for, `wait_timeout` s)."""

    def __init__(self, store: Store, backend: Backend, meter: Meter, wait_timeout: float = 600.0) -> None:
        self.store, self.backend, self.meter, self.wait_timeout = store, backend, meter, wait_timeout
        # Entries never change once written, so what was read once is kept: searches estimate
        # thousands of networks that share almost all of their units.
        self._mins: dict[str, float] = {}
        self._signatures: dict[Unit, str] = {}
        self._level: float | None = None  # the yardstick's first minimum, once read
        self.blocks: dict[str, nn.Module] = {}  # opaque blocks' modules, by node name (`add_blocks`)
        self._blocks: dict[str, dict[str, object]] = {}  # what each computes, described when added

    def add_blocks(self, opaque: Mapping[str, nn.Module]) -> None:
        """Keep the modules of a traced model's opaque blocks (`Traced.opaque`, node name ->
        module): units they head are measured with them and signed with what they compute."""
        for name, module in opaque.items():
            if self.blocks.get(name) is module:
                continue  # described when first given: a block that ran since keeps its signature
            described = describe_block(module)
            if self._blocks.get(name, described) != described:
                raise LookupTableError(
                    f"opaque block {name!r} was given as two different modules ({self._blocks[name]['class']} and "
                    f"{described['class']}); one LookupTable prices the opaque blocks of one model: open the table "
                    "once per model")
            self.blocks[name], self._blocks[name] = module, described

    def overhead(self) -> float:
        """The backend's fixed cost of one call, in its unit."""
        if OVERHEAD not in self._mins:
            self._measure_units({OVERHEAD: ({"overhead": True}, overhead_module)})
        return self._mins[OVERHEAD]

    def yardstick(self) -> float | None:
        """The minimum of the yardstick unit the first time this table measured it alone: the
        level every unit is expressed at (None where the backend cannot measure side by side)."""
        if not self.backend.interleaves:
            return None
        if self._level is None:
            self._measure_units({YARDSTICK: ({"yardstick": True}, yardstick_module)}, measure=self._measure_alone)
            found = self.store.get(YARDSTICK)
            assert found is not None, "the yardstick was just measured, or waited for"
            self._level = found.min
        return self._level

    def signature(self, unit: Unit) -> str:
        """`unit.signature` (an opaque unit's with its block's description), remembered."""
        if unit not in self._signatures:
            self._signatures[unit] = sign(self.describe(unit))
        return self._signatures[unit]

    def describe(self, unit: Unit) -> dict[str, object]:
        """`unit.describe()`, with what its block computes where it is opaque."""
        return unit.describe(self._block(unit.head) if unit.opaque else None)

    def _block(self, node: Node) -> dict[str, object]:
        """The description of the module given for opaque `node`; refused where none was given,
        or where it is not the module that node was traced from."""
        module = self.blocks.get(node.name)
        if module is None:
            raise LookupTableError(
                f"the lookup table cannot price opaque block {node.name!r} ({node.attrs.module_type}): it has no "
                "module for it; pass the traced model's, LookupTable.open(path, backend, opaque=traced.opaque) (or "
                "EstimatorSources(opaque=traced.opaque)), or call lut.calibrate(traced) first")
        params = sum(p.numel() for p in module.parameters())
        if (type(module).__qualname__, params) != (node.attrs.module_type, node.attrs.params):
            raise LookupTableError(
                f"opaque block {node.name!r} was traced from a {node.attrs.module_type} of {node.attrs.params} "
                f"parameters, but the table was given a {type(module).__qualname__} of {params}: pass the opaque "
                "modules of the model this network was traced from (traced.opaque)")
        return self._blocks[node.name]

    def ensure(self, nets: Iterable[Network], progress: str | None = None) -> None:
        """Measure every unit of `nets` that the table does not hold yet."""
        todo: dict[str, tuple[Network, Unit]] = {}
        for net in nets:
            for u in units(net):
                todo.setdefault(self.signature(u), (net, u))
        self._measure_units({sig: (self.describe(u), functools.partial(unit_module, net, u, self.blocks))
                             for sig, (net, u) in sorted(todo.items())}, progress)

    def prebuild(self, net: Network, points_per_group: int = 4) -> int:
        """Measure every unit of `net` over a grid of widths (each group at `points_per_group`
        evenly spaced valid widths, all combinations per unit). Returns how many were new."""
        before = self.meter.measurements
        self.overhead()
        grid = {g.id: spread(g.valid_widths(), points_per_group) for g in net.groups}
        variants: dict[str, Network] = {}
        for u in units(net.at_full_width()):
            involved = sorted({s.group for name in (*u.head.inputs, u.nodes[-1].name)
                               for s in net.layout(name) if s.group in grid})
            for combo in itertools.product(*(grid[g] for g in involved)):
                variant = net.with_widths(dict(zip(involved, combo, strict=True)))
                variants.setdefault(variant.to_json(), variant)
        self.ensure(variants.values(), progress="prebuilding lookup table")
        return self.meter.measurements - before

    # --- summing ---------------------------------------------------------------------------

    def unit_mins(self, net: Network) -> list[tuple[Unit, float]]:
        """Each unit of `net` with its stand-alone cost (measuring what is missing)."""
        found = [(u, self.signature(u)) for u in units(net)]
        self._known(sig for _, sig in found)
        if any(sig not in self._mins for _, sig in found):
            self.ensure([net])
        return [(u, self._mins[sig]) for u, sig in found]

    def unit_costs(self, net: Network) -> list[tuple[Unit, float]]:
        """Each unit of `net` with its cost net of the per-call overhead (measuring what is missing)."""
        overhead = self.overhead()
        return [(u, max(cost - overhead, 0.0)) for u, cost in self.unit_mins(net)]

    def layer_sum(self, net: Network) -> float:
        """Uncorrected estimate: overhead + the sum of the unit costs."""
        return self.overhead() + sum(cost for _, cost in self.unit_costs(net))

    def naive_sum(self, net: Network) -> float:
        """The plain sum of stand-alone unit measurements, for comparison (no calibration)."""
        return sum(cost for _, cost in self.unit_mins(net))

    # --- measuring -------------------------------------------------------------------------

    def _known(self, signatures: Iterable[str]) -> None:
        """Read the entries of `signatures` not in memory yet (only their minimum is used)."""
        unread = [s for s in set(signatures) if s not in self._mins]
        if unread:
            self._mins.update({s: m.min for s, m in self.store.get_many(unread).items()})

    def _measure_units(self, todo: dict[str, tuple[dict[str, object], Builder]], progress: str | None = None,
                       measure: Measure | None = None) -> None:
        """Measure the units of `todo` (signature: description, builder) that no process has
        measured, `UNIT_BATCH` at a time beside the yardstick (`_measure_beside_yardstick`),
        unless told how (`measure`). Several processes share the work through claims; a unit
        another process claimed is waited for."""
        self._known(todo)
        pending = [s for s in todo if s not in self._mins]
        if not pending:
            return
        measure = measure or functools.partial(self._measure_beside_yardstick, level=self.yardstick())
        bar = tqdm(total=len(pending), desc=progress or "measuring layers", unit="layer", disable=None, leave=False)
        deadline = time.monotonic() + self.wait_timeout
        with warnings.catch_warnings():  # units run for microseconds: their spread is expected; the min is kept
            warnings.simplefilter("ignore", NoisyMeasurementWarning)
            while pending:
                claimed = self._claim(pending)
                if claimed:
                    self._take(claimed, todo, measure)
                    deadline = time.monotonic() + self.wait_timeout
                elif time.monotonic() > deadline:
                    raise LookupTableError(
                        f"waited {self.wait_timeout:.0f} s for another process to measure layer {pending[0]}; "
                        "it may be stuck: stop it or raise wait_timeout")
                else:
                    time.sleep(0.02)
                self._known(pending)  # what this process and the others measured meanwhile
                left = [sig for sig in pending if sig not in self._mins]
                bar.update(len(pending) - len(left))
                pending = left
        bar.close()

    def _claim(self, pending: Sequence[str]) -> list[str]:
        """Up to `UNIT_BATCH` of `pending` that this process claimed, to measure now."""
        claimed: list[str] = []
        for sig in pending:
            if len(claimed) < UNIT_BATCH and self.store.claim(sig):
                claimed.append(sig)
        return claimed

    def _take(self, claimed: Sequence[str], todo: dict[str, tuple[dict[str, object], Builder]],
              measure: Measure) -> None:
        """Measure the `claimed` units and record them (their claims given back if it fails)."""
        started = time.perf_counter()
        try:
            taken = measure([todo[sig][1]() for sig in claimed])
        except BaseException:
            for sig in claimed:
                self.store.release(sig)
            raise
        finally:
            self.meter.seconds += time.perf_counter() - started
        for sig, m in zip(claimed, taken, strict=True):
            self.store.put(sig, todo[sig][0], m)
            self._mins[sig] = m.min
        self.meter.measurements += len(claimed)

    def _measure_beside_yardstick(self, items: Sequence[tuple[nn.Module, torch.Tensor]],
                                  level: float | None) -> list[Measurement]:
        """`items` side by side with the yardstick, each visit warm (`time_interleaved`: the
        yardstick timed after a large unit would run from cold caches), each expressed at the
        yardstick's first `level`, minimum to minimum (the table keeps a unit's minimum, and a
        burst of load moves a batch's medians); one at a time where the backend cannot."""
        if level is None:  # the backend measures one model at a time
            return [self.backend.measure(m, x) for m, x in items]
        now, *taken = self.backend.measure_together([yardstick_module(), *items], warm=True)
        return [m.scaled(level / now.min) for m in taken]

    def _measure_alone(self, items: Sequence[tuple[nn.Module, torch.Tensor]]) -> list[Measurement]:
        return [steady(functools.partial(self.backend.measure, m, x)) for m, x in items]
