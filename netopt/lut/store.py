"""The lookup table's SQLite file: one platform's entries, claims and calibrations.

Several processes may fill one file at once: SQLite in WAL mode serializes the writes, and the
claims of `netopt.lut.stores.SqlStore` make sure that a signature is measured by one process
only. A file that is not a netopt lookup table, or is corrupted, is refused and never
overwritten.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from netopt._process import owner_alive, process_owner
from netopt.errors import LookupTableError
from netopt.lut.calibration import Calibration, stored_calibration
from netopt.lut.stores import FORMAT, FORMAT_VERSION, SqlStore, claim_held
from netopt.measure.base import Fingerprint, Measurement

__all__ = ["SqliteStore", "Store", "FORMAT", "VERSION",
           # their old import path: code that imported them from here keeps working
           "Calibration", "claim_held", "owner_alive", "process_owner", "stored_calibration"]

VERSION = FORMAT_VERSION
"""The format's version under its name before `netopt.lut.stores.FORMAT_VERSION`."""
SQLITE_HEADER = b"SQLite format 3\x00"


class SqliteStore(SqlStore):
    """One platform's entries in one SQLite file (the `Store` protocol)."""

    def __init__(self, path: str | Path, fingerprint: Fingerprint, claim_timeout: float = 600.0) -> None:
        self.path = Path(path)
        self.claim_timeout = claim_timeout
        _refuse_foreign_file(self.path)
        try:
            self.db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            self.db.execute("PRAGMA busy_timeout = 60000")
            self.db.execute("PRAGMA journal_mode = WAL")
            self._check_integrity()
            with self._write() as db:
                self._open_meta(db, fingerprint)
        except sqlite3.DatabaseError as exc:
            raise LookupTableError(
                f"{self.path} is not a readable lookup table ({exc}); it was left untouched: "
                "move it away or open another path"
            ) from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _check_integrity(self) -> None:
        result = self.db.execute("PRAGMA quick_check").fetchone()[0]
        if result != "ok":
            raise LookupTableError(f"{self.path} is corrupted (SQLite quick_check: {result}); it was left untouched")

    def get_many(self, signatures: list[str]) -> dict[str, Measurement]:
        """The entries held for `signatures`, read 500 at a time (SQLite's limit on parameters)."""
        found: dict[str, Measurement] = {}
        for start in range(0, len(signatures), 500):
            chunk = signatures[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(f"SELECT signature, measurement FROM entries WHERE signature IN ({marks})", chunk)
            found.update({sig: Measurement.from_dict(json.loads(m)) for sig, m in rows})
        return found


Store = SqliteStore
"""The SQLite store's name before the `Store` protocol (`netopt.lut.stores.Store`), for old code."""


def _refuse_foreign_file(path: Path) -> None:
    """A non-empty file that is not SQLite is someone else's: refuse it before SQLite touches it."""
    if not path.exists():
        if not path.parent.exists():
            raise LookupTableError(f"folder {path.parent} does not exist; create it or choose another path")
        return
    if path.is_dir():
        raise LookupTableError(f"{path} is a folder; give the path of a lookup table file")
    with path.open("rb") as f:
        head = f.read(len(SQLITE_HEADER))
    if head and head != SQLITE_HEADER:
        raise LookupTableError(
            f"{path} is not a lookup table (not an SQLite file); it was left untouched: move it away or open "
            "another path"
        )
    if head == SQLITE_HEADER:
        _refuse_foreign_database(path)


def _refuse_foreign_database(path: Path) -> None:
    """An SQLite database with tables but no netopt lookup-table header is another application's."""
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            found = db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone() if "meta" in tables else None
        finally:
            db.close()
    except sqlite3.DatabaseError:
        return  # damaged: the integrity check that follows says so
    if tables and (found is None or found[0] != FORMAT):
        raise LookupTableError(
            f"{path} is an SQLite database of another application (tables {sorted(tables)[:5]}); it was left "
            "untouched: give the lookup table a file of its own"
        )
