"""The lookup table on PostgreSQL: one table per device shared by many search machines.

The same guarantees as the SQLite store (`netopt.lut.stores.SqlStore` holds what they share):
every signature is measured exactly once however many processes fill the table (a claim row,
taken in a transaction under an advisory lock), a table of another platform or another format
is refused and left untouched, calibrations are kept. Its tables are prefixed `netopt_lut_`, so
a database may hold other things beside it; one database is one device's table. The driver is
the `postgres` extra (psycopg 3), imported only when a table is opened.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from netopt._process import connect, driver, is_postgres_url, redacted
from netopt.errors import LookupTableError, first_line
from netopt.lut.stores import SqlStore
from netopt.measure.base import Fingerprint, Measurement

__all__ = ["PostgresStore", "is_postgres_url", "redacted",
           "connect", "driver"]  # their old import path: code that imported them from here keeps working


class PostgresStore(SqlStore):
    """One platform's entries in one PostgreSQL database (the `Store` protocol)."""

    mark = "%s"
    prefix = "netopt_lut_"
    real = "DOUBLE PRECISION"
    kind = "database"

    def __init__(self, url: str, fingerprint: Fingerprint, claim_timeout: float = 600.0) -> None:
        self.url, self.path = url, redacted(url)
        self.claim_timeout = claim_timeout
        self.db = connect(url, "lookup table")
        try:
            self._init(fingerprint)
        except BaseException:
            self.db.close()
            raise

    @contextmanager
    def _write(self) -> Iterator[Any]:
        with self.db.transaction():
            yield self.db

    def _lock(self, db: Any, key: str) -> None:
        db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key,))

    def _init(self, fingerprint: Fingerprint) -> None:
        psycopg = driver()
        try:
            with self._write() as db:
                self._open_meta(db, fingerprint)
        except psycopg.Error as exc:
            raise LookupTableError(f"{self.path} is not a usable lookup table ({first_line(exc, 160)}); it was left "
                                   "untouched: give the table a database of its own") from None

    def get_many(self, signatures: list[str]) -> dict[str, Measurement]:
        if not signatures:
            return {}
        rows = self.db.execute("SELECT signature, measurement FROM netopt_lut_entries WHERE signature = ANY(%s)",
                               (list(signatures),)).fetchall()
        return {sig: Measurement.from_dict(json.loads(m)) for sig, m in rows}
