"""A frozen lookup table's store: it reads the table and writes nothing back.

Runs that are to be compared must start from the same table. A table recalibrates itself as a
strategy measures (and keeps every unit and network it measures), so a second run from one
file starts from what the first one left there. `FrozenStore` wraps a store so that everything
a run adds (entries, calibrations, claims) stays in this process: the run steers by its own
recalibrations as usual, and the file is the same, byte for byte, when it ends.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from netopt.lut.calibration import Calibration
from netopt.lut.stores import Store
from netopt.measure.base import Measurement

__all__ = ["FrozenStore"]


class FrozenStore(Store):
    """`store` read through; what is written is kept here, in memory, and read first.

    >>> import tempfile
    >>> from pathlib import Path
    >>> from netopt.lut.store import SqliteStore
    >>> from netopt.measure.base import Fingerprint, summarize
    >>> table = SqliteStore(Path(tempfile.mkdtemp()) / "lut.sqlite", Fingerprint({"backend": "doc"}))
    >>> store = FrozenStore(table)
    >>> store.put("unit:a", {}, summarize([1.0], "ms"))
    >>> store.count(), table.count()
    (1, 0)
    >>> store.close()
    """

    def __init__(self, store: Store) -> None:
        self.under = store
        self.entries: dict[str, Measurement] = {}
        self.calibrations: dict[str, Calibration] = {}

    def __getattr__(self, name: str) -> Any:
        """What the wrapped store says of itself (its `path`, its `kind`)."""
        if name == "under":
            raise AttributeError(name)
        return getattr(self.under, name)

    def close(self) -> None:
        self.under.close()

    def get_many(self, signatures: list[str]) -> dict[str, Measurement]:
        found = self.under.get_many([s for s in signatures if s not in self.entries])
        return {**found, **{s: self.entries[s] for s in signatures if s in self.entries}}

    def get(self, signature: str) -> Measurement | None:
        return self.get_many([signature]).get(signature)

    def put(self, signature: str, description: Mapping[str, Any], measurement: Measurement) -> None:
        """Kept in this process (the first one wins, as in the store)."""
        if self.get(signature) is None:
            self.entries[signature] = measurement

    def count(self) -> int:
        return len(self.signatures())

    def signatures(self) -> list[str]:
        return sorted({*self.under.signatures(), *self.entries})

    def claim(self, signature: str) -> bool:
        """This process measures what neither it nor the table holds (claims are not written)."""
        return self.get(signature) is None

    def release(self, signature: str) -> None:
        """Nothing was claimed in the table."""

    def calibration(self, structure: str) -> Calibration | None:
        kept = self.calibrations.get(structure)
        return kept if kept is not None else self.under.calibration(structure)

    def put_calibration(self, structure: str, calibration: Calibration) -> None:
        self.calibrations[structure] = calibration

