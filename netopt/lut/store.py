"""The lookup table's SQLite file: entries, claims and calibrations of one platform.

Several processes may fill one file at once. SQLite in WAL mode serializes the writes; a
`claims` table makes sure that a signature is measured by one process only: the first to
claim it measures, the others wait for its entry (and take over a claim whose owner died).
A file that is not a netopt lookup table, or is corrupted, is refused and never overwritten.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import lsq_linear
from scipy.stats import f as f_distribution

from netopt.errors import LookupTableError
from netopt.measure.base import Fingerprint, Measurement

__all__ = ["Store", "Calibration", "FORMAT", "VERSION", "stored_calibration"]

FORMAT = "netopt-lut"
VERSION = 3
"""3: units at the yardstick's first minimum (2: at its median, which a batch's load moved)."""
SQLITE_HEADER = b"SQLite format 3\x00"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    signature TEXT PRIMARY KEY, description TEXT NOT NULL, measurement TEXT NOT NULL,
    created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS claims (signature TEXT PRIMARY KEY, owner TEXT NOT NULL, since REAL NOT NULL);
CREATE TABLE IF NOT EXISTS calibrations (structure TEXT PRIMARY KEY, points TEXT NOT NULL, created REAL NOT NULL);
"""


@dataclass(frozen=True)
class Calibration:
    """The whole-network cost as a rising plane in the layer sum and the weights, fitted on
    whole networks.

    cost = intercept + slope * layer sum + per_weight * weights (millions of parameters), least
    squares in relative error (every network counts alike, small or big), slope and per_weight
    kept positive so that a smaller network is never estimated dearer; below the smallest
    calibration network, the intercept shrinks with the layer sum. The intercept takes what the
    whole network pays once or per layer beyond its units measured alone (a positive one: the
    ratio falls with size, fixed costs weighing most in small networks; a negative one: the
    ratio rises, big variants spilling out of cache).

    The weights, because a unit is timed warm, its weights in cache, and a network among other
    work is not: it fetches its weights anew each call. Two MobileNetV1 variants of one layer
    sum at 128 px, one with 0.25 M weights and one with 0.56 M (its classifier and last layers
    wider), ran alike alone (625 us each) and 0.99x and 1.24x their layer sums beside the full
    network; a line in the layer sum, fitted on networks shrunk evenly, put small variants
    shrunk unevenly 10-16% low. The weights are priced only where they vary apart from the
    layer sum (`_apart`) and fit the networks better than the line by more than chance
    (`_significant`); else the fit is the line alone.

    A plane, not a surface through every network: calibration networks measured side by side
    still scatter by a few percent around any smooth curve, and an interpolating fit (isotonic
    regression, as before) followed that scatter: on MobileNetV3 at 128 px it put 37-80% of new
    variants within ±10%, the line on the same points 90-97% (benchmarks/bench_lut.py).

    A calibration of an older netopt holds (layer sum, measured) points only: it is the line.
    """

    points: tuple[tuple[float, ...], ...]  # (layer sum, measured end to end, weights in M), by layer sum

    @classmethod
    def fit(cls, points: Sequence[Sequence[float]]) -> Calibration:
        ordered = tuple(sorted(tuple(float(v) for v in p) for p in points if p[0] > 0))
        if not ordered:
            raise LookupTableError("calibration needs at least one network with a positive layer sum")
        if len({len(p) for p in ordered}) > 1 or len(ordered[0]) not in (2, 3):
            raise LookupTableError(f"calibration points are (layer sum, measured, weights), got {ordered[0]!r} and "
                                   "others of another length; refit it with lut.calibrate(traced)")
        return cls(ordered)

    def with_points(self, points: Sequence[Sequence[float]]) -> Calibration:
        """This calibration and more networks; a new point at a layer sum already held replaces it.
        Added to a calibration of an older netopt (no weights), the new points lose theirs."""
        width = len(self.points[0])
        new = {float(p[0]): tuple(float(v) for v in p[:width]) for p in points}
        return Calibration.fit([*(p for p in self.points if p[0] not in new), *new.values()])

    @property
    def weighted(self) -> bool:
        """Whether the weights enter the fit (they vary apart from the layer sum)."""
        return self.plane[2] > 0.0

    @property
    def line(self) -> tuple[float, float]:
        """(intercept, slope) of the fitted cost (the weights' share aside)."""
        return self.plane[:2]

    @property
    def plane(self) -> tuple[float, float, float]:
        """(intercept, slope, per_weight) of the fitted cost."""
        cached = self.__dict__.get("_fit")
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        x = np.array([p[0] for p in self.points])
        y = np.array([p[1] for p in self.points])
        w = np.array([p[2] for p in self.points]) if len(self.points[0]) == 3 else np.zeros_like(x)
        if len(set(x.tolist())) < 2:  # one layer sum: its ratio
            fit = (0.0, float(np.mean(y / x)), 0.0)
        else:
            line = _fitted(x, y, None)
            fit = _fitted(x, y, w) if _apart(x, w) else line
            if fit[2] > 0.0 and not _significant(x, y, w, fit, line):
                fit = line  # the weights' share fitted the scatter, not the networks
        object.__setattr__(self, "_fit", fit)  # frozen value, derived once
        return fit

    @property
    def knots(self) -> tuple[np.ndarray, np.ndarray]:
        """The layer sums of the calibration networks and the fitted ratio cost / layer sum there."""
        x = np.array([p[0] for p in self.points])
        return x, np.array([self.apply(p[0], p[2] if len(p) == 3 else None) for p in self.points]) / x

    def apply(self, layer_sum: float, weights: float | None = None) -> float:
        """The estimated cost of a network of `layer_sum` with `weights` millions of parameters
        (needed where the weights enter the fit)."""
        intercept, slope, per_weight = self.plane
        if per_weight > 0.0 and weights is None:
            raise LookupTableError("this calibration prices the weights: pass the network's weights (millions of "
                                   "parameters) with its layer sum")
        fixed = intercept if layer_sum >= self.points[0][0] else intercept * layer_sum / self.points[0][0]
        return float(fixed + slope * layer_sum + per_weight * (weights or 0.0))

    def error(self, layer_sum: float, measured: float, weights: float | None = None) -> float:
        """(estimate - measured) / measured for a network of `layer_sum` and `weights` measured at `measured`."""
        return self.apply(layer_sum, weights) / measured - 1.0


def _fitted(x: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> tuple[float, float, float]:
    """(intercept, slope, per_weight) least squares in relative error, slope and per_weight
    positive; without weights `w`, the line; through nothing it was fitted on, the ratio."""
    floor = 1e-3 * float(y.mean() / x.mean())
    columns = [1 / y, x / y] + ([w / y] if w is not None else [])
    found = lsq_linear(np.stack(columns, axis=1), np.ones_like(y),
                       bounds=([-np.inf, floor, 0.0][:len(columns)], [np.inf] * len(columns)))
    fit = (float(found.x[0]), float(found.x[1]), float(found.x[2]) if w is not None else 0.0)
    if np.any(fit[0] + fit[1] * x + fit[2] * (w if w is not None else 0.0) <= 0):
        fit = (0.0, float(np.exp(np.mean(np.log(y / x)))), 0.0)
    return fit


def _significant(x: np.ndarray, y: np.ndarray, w: np.ndarray, plane: tuple[float, float, float],
                 line: tuple[float, float, float]) -> bool:
    """Whether `plane` fits the networks better than the line by more than chance: the nested
    models' F-test on relative errors, at 1% (the real models at 128 px: p < 0.003). It keeps
    chance out, not networks unlike the calibration's: on `make demo`'s 32 px network the price
    was significant (p = 0.0005) and still estimated NetAdapt's networks, early layers at full
    width and the last ones shrunk, up to 13% low where the line fitted them within 4% (README)."""
    def squares(fit: tuple[float, float, float]) -> float:
        return float(np.sum(((fit[0] + fit[1] * x + fit[2] * w) / y - 1) ** 2))

    worse, found, free = squares(line), squares(plane), len(x) - 3
    if free < 1 or worse <= found:
        return False
    return found <= 0.0 or float(f_distribution.sf((worse - found) / (found / free), 1, free)) < 0.01


def _apart(x: np.ndarray, w: np.ndarray) -> bool:
    """Whether weights `w` vary apart from layer sums `x`: at least 4 networks, and a line in `x`
    leaves more than 2% of the weights' spread unexplained (else their share cannot be told)."""
    if len(x) < 4 or np.ptp(w) <= 0:
        return False
    design = np.stack([np.ones_like(x), x], axis=1)
    residual = w - design @ np.linalg.lstsq(design, w, rcond=None)[0]
    return float(np.sum(residual**2) / np.sum((w - w.mean()) ** 2)) > 0.02


def stored_calibration(points: Sequence[Sequence[float]]) -> Calibration | None:
    """A table's calibration, read back; None for one of an older netopt (no weights in its points),
    so that binding a constraint fits it again (its networks are kept in the table)."""
    if not points or any(len(p) != 3 for p in points):
        return None
    return Calibration.fit(points)


def process_owner() -> str:
    """This process as "host:pid": who holds a claim (or runs a trial)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: str) -> bool:
    """False only for a "host:pid" of this host whose process is gone (another host's: cannot tell)."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname():
        return True  # cannot tell; the claim timeout decides
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def claim_held(row: Sequence[Any] | None, timeout: float) -> bool:
    """A claim row (owner, since) still stands: its owner may be alive and it is younger than `timeout`."""
    return bool(row) and owner_alive(row[0]) and time.time() - row[1] < timeout  # type: ignore[index]


class Store:
    """One platform's entries in one SQLite file."""

    def __init__(self, path: str | Path, fingerprint: Fingerprint, claim_timeout: float = 600.0) -> None:
        self.path = Path(path)
        self.claim_timeout = claim_timeout
        _refuse_foreign_file(self.path)
        try:
            self.db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            self.db.execute("PRAGMA busy_timeout = 60000")
            self.db.execute("PRAGMA journal_mode = WAL")
            self._check_integrity()
            self._init(fingerprint)
        except sqlite3.DatabaseError as exc:
            raise LookupTableError(
                f"{self.path} is not a readable lookup table ({exc}); it was left untouched: "
                "move it away or open another path"
            ) from exc

    def close(self) -> None:
        self.db.close()

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

    def _init(self, fingerprint: Fingerprint) -> None:
        with self._write() as db:
            for statement in filter(str.strip, SCHEMA.split(";")):
                db.execute(statement)
            for key, value in (("format", FORMAT), ("version", str(VERSION)),
                               ("fingerprint", json.dumps(dict(fingerprint.fields), sort_keys=True, default=str))):
                db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, value))
        meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format") != FORMAT or meta.get("version") != str(VERSION):
            raise LookupTableError(
                f"{self.path} holds format {meta.get('format')!r} version {meta.get('version')!r}, not "
                f"{FORMAT!r} version {VERSION}; open another path (the file was left untouched)"
            )
        stored = Fingerprint(json.loads(meta["fingerprint"]))
        if stored.key != fingerprint.key:
            raise LookupTableError(
                f"{self.path} was measured on another platform or with other settings "
                f"({'; '.join(fingerprint.diff(stored))}); use one lookup table file per platform"
            )

    # --- entries ---------------------------------------------------------------------------

    def get_many(self, signatures: list[str]) -> dict[str, Measurement]:
        found: dict[str, Measurement] = {}
        for start in range(0, len(signatures), 500):
            chunk = signatures[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(f"SELECT signature, measurement FROM entries WHERE signature IN ({marks})", chunk)
            found.update({sig: Measurement.from_dict(json.loads(m)) for sig, m in rows})
        return found

    def get(self, signature: str) -> Measurement | None:
        return self.get_many([signature]).get(signature)

    def put(self, signature: str, description: Mapping[str, Any], measurement: Measurement) -> None:
        """Record an entry (the first one wins) and release its claim."""
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO entries VALUES (?, ?, ?, ?)",
                       (signature, json.dumps(description, sort_keys=True),
                        json.dumps(measurement.to_dict()), time.time()))
            db.execute("DELETE FROM claims WHERE signature = ?", (signature,))

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def signatures(self) -> list[str]:
        return [row[0] for row in self.db.execute("SELECT signature FROM entries ORDER BY signature")]

    # --- claims ----------------------------------------------------------------------------

    def claim(self, signature: str) -> bool:
        """True if this process should measure `signature` now (no entry, no live claim)."""
        with self._write() as db:
            if db.execute("SELECT 1 FROM entries WHERE signature = ?", (signature,)).fetchone():
                return False
            row = db.execute("SELECT owner, since FROM claims WHERE signature = ?", (signature,)).fetchone()
            if claim_held(row, self.claim_timeout):
                return False
            db.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?)", (signature, process_owner(), time.time()))
            return True

    def release(self, signature: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM claims WHERE signature = ? AND owner = ?", (signature, process_owner()))

    # --- calibrations ----------------------------------------------------------------------

    def calibration(self, structure: str) -> Calibration | None:
        row = self.db.execute("SELECT points FROM calibrations WHERE structure = ?", (structure,)).fetchone()
        if row is None:
            return None
        return stored_calibration(json.loads(row[0]))

    def put_calibration(self, structure: str, calibration: Calibration) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO calibrations VALUES (?, ?, ?)",
                       (structure, json.dumps(calibration.points), time.time()))


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
