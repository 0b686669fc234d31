"""The lookup table on PostgreSQL: one table per device shared by many search machines.

The same guarantees as the SQLite store (`netopt.lut.store`): every signature is measured
exactly once however many processes fill the table (a claim row, taken in a transaction; a
claim whose owner died on this host, or that is older than the claim timeout, is taken over),
a table of another platform or another format is refused and left untouched, calibrations are
kept. Its tables are prefixed `netopt_lut_`, so a database may hold other things beside it;
one database is one device's table. The driver is the `postgres` extra (psycopg 3), imported
only here.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from netopt.errors import LookupTableError, first_line
from netopt.lut.store import FORMAT, VERSION, Calibration, claim_held, process_owner, stored_calibration
from netopt.measure.base import Fingerprint, Measurement

__all__ = ["PostgresStore", "is_postgres_url", "redacted"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS netopt_lut_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS netopt_lut_entries (
    signature TEXT PRIMARY KEY, description TEXT NOT NULL, measurement TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS netopt_lut_claims (
    signature TEXT PRIMARY KEY, owner TEXT NOT NULL, since DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS netopt_lut_calibrations (
    structure TEXT PRIMARY KEY, points TEXT NOT NULL, created DOUBLE PRECISION NOT NULL);
"""


def is_postgres_url(path: object) -> bool:
    return isinstance(path, str) and path.startswith(("postgresql://", "postgres://", "postgresql+psycopg://"))


def redacted(url: str) -> str:
    """The URL without its password: what error messages may show."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def driver() -> Any:
    try:
        import psycopg
    except ImportError:
        raise LookupTableError("a PostgreSQL lookup table needs the postgres extra: pip install 'netopt[postgres]' "
                               "(psycopg 3); or give the table a file path (SQLite)") from None
    return psycopg


def connect(url: str, what: str) -> Any:
    """A psycopg connection (autocommit) to `url`, or one line saying why not (no password in it)."""
    psycopg = driver()
    try:
        return psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://", 1), autocommit=True,
                               connect_timeout=10)
    except psycopg.Error as exc:
        reason = first_line(exc, 200)
        hint = ("check the user and password in the URL" if "password" in reason or "authentication" in reason
                else "check that the server runs and the host, port and database name")
        raise LookupTableError(f"{what} {redacted(url)}: cannot connect ({reason}); {hint}") from None


class PostgresStore:
    """One platform's entries in one PostgreSQL database (the interface of `Store`)."""

    def __init__(self, url: str, fingerprint: Fingerprint, claim_timeout: float = 600.0) -> None:
        self.url, self.path = url, redacted(url)
        self.claim_timeout = claim_timeout
        self.db = connect(url, "lookup table")
        try:
            self._init(fingerprint)
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _write(self) -> Iterator[Any]:
        with self.db.transaction():
            yield self.db

    def _init(self, fingerprint: Fingerprint) -> None:
        psycopg = driver()
        try:
            with self._write() as db:
                db.execute("SELECT pg_advisory_xact_lock(hashtext('netopt_lut_schema'))")  # one creator at a time
                for statement in filter(str.strip, SCHEMA.split(";")):
                    db.execute(statement)
                for key, value in (("format", FORMAT), ("version", str(VERSION)),
                                   ("fingerprint", json.dumps(dict(fingerprint.fields), sort_keys=True, default=str))):
                    db.execute("INSERT INTO netopt_lut_meta VALUES (%s, %s) ON CONFLICT DO NOTHING", (key, value))
                meta = dict(db.execute("SELECT key, value FROM netopt_lut_meta").fetchall())
                if meta.get("format") != FORMAT or meta.get("version") != str(VERSION):  # rolled back: untouched
                    raise LookupTableError(
                        f"{self.path} holds format {meta.get('format')!r} version {meta.get('version')!r}, not "
                        f"{FORMAT!r} version {VERSION}; give another database (this one was left untouched)")
        except psycopg.Error as exc:
            raise LookupTableError(f"{self.path} is not a usable lookup table ({first_line(exc, 160)}); it was left "
                                   "untouched: give the table a database of its own") from None
        try:
            stored = Fingerprint(json.loads(meta["fingerprint"]))
        except (KeyError, ValueError):
            raise LookupTableError(f"{self.path} has a damaged header (its fingerprint); it was left untouched: give "
                                   "another database") from None
        if stored.key != fingerprint.key:
            raise LookupTableError(
                f"{self.path} was measured on another platform or with other settings "
                f"({'; '.join(fingerprint.diff(stored))}); use one lookup table database per platform")

    # --- entries ---------------------------------------------------------------------------

    def get_many(self, signatures: list[str]) -> dict[str, Measurement]:
        if not signatures:
            return {}
        rows = self.db.execute("SELECT signature, measurement FROM netopt_lut_entries WHERE signature = ANY(%s)",
                               (list(signatures),)).fetchall()
        return {sig: Measurement.from_dict(json.loads(m)) for sig, m in rows}

    def get(self, signature: str) -> Measurement | None:
        return self.get_many([signature]).get(signature)

    def put(self, signature: str, description: Mapping[str, Any], measurement: Measurement) -> None:
        """Record an entry (the first one wins) and release its claim."""
        with self._write() as db:
            db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (signature,))  # not between a claim's reads
            db.execute("INSERT INTO netopt_lut_entries VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                       (signature, json.dumps(description, sort_keys=True), json.dumps(measurement.to_dict()),
                        time.time()))
            db.execute("DELETE FROM netopt_lut_claims WHERE signature = %s", (signature,))

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM netopt_lut_entries").fetchone()[0])

    def signatures(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT signature FROM netopt_lut_entries ORDER BY signature")]

    # --- claims ----------------------------------------------------------------------------

    def claim(self, signature: str) -> bool:
        """True if this process should measure `signature` now (no entry, no live claim)."""
        with self._write() as db:
            db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (signature,))  # claims of one signature in turn
            if db.execute("SELECT 1 FROM netopt_lut_entries WHERE signature = %s", (signature,)).fetchone():
                return False
            row = db.execute("SELECT owner, since FROM netopt_lut_claims WHERE signature = %s", (signature,)).fetchone()
            if claim_held(row, self.claim_timeout):
                return False
            db.execute("INSERT INTO netopt_lut_claims VALUES (%s, %s, %s) ON CONFLICT (signature) DO UPDATE SET "
                       "owner = EXCLUDED.owner, since = EXCLUDED.since", (signature, process_owner(), time.time()))
            return True

    def release(self, signature: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM netopt_lut_claims WHERE signature = %s AND owner = %s",
                       (signature, process_owner()))

    # --- calibrations ----------------------------------------------------------------------

    def calibration(self, structure: str) -> Calibration | None:
        row = self.db.execute("SELECT points FROM netopt_lut_calibrations WHERE structure = %s",
                              (structure,)).fetchone()
        if row is None:
            return None
        return stored_calibration(json.loads(row[0]))

    def put_calibration(self, structure: str, calibration: Calibration) -> None:
        with self._write() as db:
            db.execute("INSERT INTO netopt_lut_calibrations VALUES (%s, %s, %s) ON CONFLICT (structure) DO UPDATE SET "
                       "points = EXCLUDED.points, created = EXCLUDED.created",
                       (structure, json.dumps(calibration.points), time.time()))
