"""The `Store` protocol every lookup-table store implements, and the SQL they share.

A store keeps one platform's entries (a measurement by signature), claims (which process is
measuring a signature now) and calibrations (by structure). Every signature is measured exactly
once however many processes fill the table: the first to claim it measures, the others wait
for its entry, and a claim whose owner died on this host, or older than the claim timeout, is
taken over. A store of another platform or another format is refused and left untouched.

`SqlStore` holds what the SQLite and PostgreSQL stores share: the statements (written once,
with the placeholder and table prefix of each), the claims and the format check of the meta
table. The format's version is the meta row `format_version`; a table of netopt before that
key names it `version`, which is read in its place (and `format_version` added on open).
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from netopt._process import owner_alive, process_owner
from netopt.errors import LookupTableError
from netopt.lut.calibration import Calibration, stored_calibration
from netopt.measure.base import Fingerprint, Measurement

__all__ = ["FORMAT", "FORMAT_VERSION", "VERSION_KEY", "SqlStore", "Store", "claim_held"]

FORMAT = "netopt-lut"
FORMAT_VERSION = 3
"""3: units at the yardstick's first minimum (2: at its median, which a batch's load moved)."""
VERSION_KEY = "format_version"
"""The meta row naming the format's version (`version` before netopt had one key for it)."""

TABLES = ("meta", "entries", "claims", "calibrations")
SCHEMA = """
CREATE TABLE IF NOT EXISTS {meta} (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS {entries} (
    signature TEXT PRIMARY KEY, description TEXT NOT NULL, measurement TEXT NOT NULL,
    created {real} NOT NULL);
CREATE TABLE IF NOT EXISTS {claims} (signature TEXT PRIMARY KEY, owner TEXT NOT NULL, since {real} NOT NULL);
CREATE TABLE IF NOT EXISTS {calibrations} (structure TEXT PRIMARY KEY, points TEXT NOT NULL, created {real} NOT NULL);
"""


class Store(Protocol):
    """One platform's lookup-table entries, claims and calibrations, shared by processes."""

    def close(self) -> None: ...

    def get_many(self, signatures: list[str]) -> dict[str, Measurement]:
        """The entries held for `signatures` (those not held are left out)."""
        ...

    def get(self, signature: str) -> Measurement | None: ...

    def put(self, signature: str, description: Mapping[str, Any], measurement: Measurement) -> None:
        """Record an entry (the first one wins) and release its claim."""
        ...

    def count(self) -> int: ...

    def signatures(self) -> list[str]: ...

    def claim(self, signature: str) -> bool:
        """True if this process should measure `signature` now (no entry, no live claim)."""
        ...

    def release(self, signature: str) -> None:
        """Give up this process's claim of `signature` (its measurement failed)."""
        ...

    def calibration(self, structure: str) -> Calibration | None: ...

    def put_calibration(self, structure: str, calibration: Calibration) -> None: ...


def claim_held(row: Sequence[Any] | None, timeout: float) -> bool:
    """A claim row (owner, since) still stands: its owner may be alive and it is younger than `timeout`."""
    return bool(row) and owner_alive(row[0]) and time.time() - row[1] < timeout  # type: ignore[index]


class SqlStore(Store, ABC):
    """The `Store` in SQL, for a database that takes `mark` as its placeholder and keeps its
    tables under `prefix`; a subclass connects (`db`), opens transactions and reads many."""

    mark = "?"
    prefix = ""
    real = "REAL"
    kind = "file"
    """What one table is, in messages: "one lookup table file per platform"."""

    db: Any
    path: str | Path
    claim_timeout: float

    def close(self) -> None:
        self.db.close()

    @abstractmethod
    def _write(self) -> AbstractContextManager[Any]:
        """A write transaction: committed at its end, rolled back on an exception."""

    def _lock(self, db: Any, key: str) -> None:
        """Serialize writers of `key` within the transaction (where the database needs it)."""

    def _sql(self, text: str) -> str:
        """`text` with this database's table names and placeholder (`{q}`)."""
        return text.format(q=self.mark, real=self.real, **{t: self.prefix + t for t in TABLES})

    def _statements(self) -> Iterator[str]:
        return filter(str.strip, self._sql(SCHEMA).split(";"))

    # --- the meta table --------------------------------------------------------------------

    def _open_meta(self, db: Any, fingerprint: Fingerprint) -> None:
        """Create the tables where missing, write the meta rows a new (or older) table lacks,
        and check them: raised within the transaction, a refusal leaves the table untouched."""
        self._lock(db, "netopt_lut_schema")  # one creator at a time
        for statement in self._statements():
            db.execute(statement)
        meta = dict(db.execute(self._sql("SELECT key, value FROM {meta}")).fetchall())
        rows = {"format": FORMAT, VERSION_KEY: meta.get("version", str(FORMAT_VERSION)),
                "fingerprint": json.dumps(dict(fingerprint.fields), sort_keys=True, default=str)}
        for key, value in rows.items():
            if key not in meta:
                db.execute(self._sql("INSERT INTO {meta} VALUES ({q}, {q}) ON CONFLICT DO NOTHING"), (key, value))
        self._check_meta({**rows, **meta}, fingerprint)

    def _check_meta(self, meta: Mapping[str, str], fingerprint: Fingerprint) -> None:
        version = meta.get(VERSION_KEY, meta.get("version"))
        if meta.get("format") != FORMAT or version != str(FORMAT_VERSION):
            raise LookupTableError(
                f"{self.path} holds format {meta.get('format')!r} version {version!r}, not {FORMAT!r} version "
                f"{FORMAT_VERSION}; open another {self.kind} (this one was left untouched)")
        try:
            stored = Fingerprint(json.loads(meta["fingerprint"]))
        except (KeyError, ValueError):
            raise LookupTableError(f"{self.path} has a damaged header (its fingerprint); it was left untouched: open "
                                   f"another {self.kind}") from None
        if stored.key != fingerprint.key:
            raise LookupTableError(
                f"{self.path} was measured on another platform or with other settings "
                f"({'; '.join(fingerprint.diff(stored))}); use one lookup table {self.kind} per platform")

    # --- entries ---------------------------------------------------------------------------

    @abstractmethod
    def get_many(self, signatures: list[str]) -> dict[str, Measurement]:
        """The entries held for `signatures` (those not held are left out)."""

    def get(self, signature: str) -> Measurement | None:
        return self.get_many([signature]).get(signature)

    def put(self, signature: str, description: Mapping[str, Any], measurement: Measurement) -> None:
        """Record an entry (the first one wins) and release its claim."""
        with self._write() as db:
            self._lock(db, signature)  # not between a claim's reads
            db.execute(self._sql("INSERT INTO {entries} VALUES ({q}, {q}, {q}, {q}) ON CONFLICT DO NOTHING"),
                       (signature, json.dumps(description, sort_keys=True), json.dumps(measurement.to_dict()),
                        time.time()))
            db.execute(self._sql("DELETE FROM {claims} WHERE signature = {q}"), (signature,))

    def count(self) -> int:
        return int(self.db.execute(self._sql("SELECT COUNT(*) FROM {entries}")).fetchone()[0])

    def signatures(self) -> list[str]:
        return [row[0] for row in self.db.execute(self._sql("SELECT signature FROM {entries} ORDER BY signature"))]

    # --- claims ----------------------------------------------------------------------------

    def claim(self, signature: str) -> bool:
        """True if this process should measure `signature` now (no entry, no live claim)."""
        with self._write() as db:
            self._lock(db, signature)  # claims of one signature in turn
            if db.execute(self._sql("SELECT 1 FROM {entries} WHERE signature = {q}"), (signature,)).fetchone():
                return False
            row = db.execute(self._sql("SELECT owner, since FROM {claims} WHERE signature = {q}"),
                             (signature,)).fetchone()
            if claim_held(row, self.claim_timeout):
                return False
            db.execute(self._sql("INSERT INTO {claims} VALUES ({q}, {q}, {q}) ON CONFLICT (signature) DO UPDATE SET "
                                 "owner = excluded.owner, since = excluded.since"),
                       (signature, process_owner(), time.time()))
            return True

    def release(self, signature: str) -> None:
        """Give up this process's claim of `signature` (its measurement failed)."""
        with self._write() as db:
            db.execute(self._sql("DELETE FROM {claims} WHERE signature = {q} AND owner = {q}"),
                       (signature, process_owner()))

    # --- calibrations ----------------------------------------------------------------------

    def calibration(self, structure: str) -> Calibration | None:
        row = self.db.execute(self._sql("SELECT points FROM {calibrations} WHERE structure = {q}"),
                              (structure,)).fetchone()
        return None if row is None else stored_calibration(json.loads(row[0]))

    def put_calibration(self, structure: str, calibration: Calibration) -> None:
        with self._write() as db:
            db.execute(self._sql("INSERT INTO {calibrations} VALUES ({q}, {q}, {q}) ON CONFLICT (structure) DO UPDATE "
                                 "SET points = excluded.points, created = excluded.created"),
                       (structure, json.dumps(calibration.points), time.time()))
