"""Shared state on a real PostgreSQL server the tests start: the lookup table many machines share."""

from __future__ import annotations

import json
import multiprocessing as mp
import sys

import pytest
from pgserver import Server
from test_lut import _fill, backend, tiny

from netopt.errors import LookupTableError
from netopt.lut import LookupTable, random_variants
from netopt.lut.units import units


@pytest.mark.slow
def test_four_processes_fill_one_postgres_table_each_signature_measured_once(pg: Server) -> None:
    url = pg.create_database("lut_four")
    with mp.get_context("spawn").Pool(4) as pool:
        counts = pool.starmap(_fill, [(url, seed) for seed in range(4)])
    traced = tiny()
    wanted = {u.signature for s in (0, 1) for net in random_variants(traced.network, 3, seed=s) for u in units(net)}
    lut = LookupTable.open(url, backend())
    assert set(lut.store.signatures()) == wanted | {"overhead", "yardstick"}
    assert sum(counts) == len(wanted) + 2  # each signature measured by exactly one process
    assert lut.measurements == 0 and lut.layer_sum(traced.network) > 0  # all of it read back, nothing measured


def test_calibrations_are_kept_and_other_platforms_refused(pg: Server) -> None:
    url = pg.create_database("lut_cal")
    traced = tiny()
    lut = LookupTable.open(url, backend())
    cal = lut.calibrate(traced, max_networks=4)
    again = LookupTable.open(url, backend())
    assert again.calibration(traced.network) == cal and again.estimate(traced.network) == lut.estimate(traced.network)
    assert again.estimate(traced.network) == pytest.approx(cal.apply(lut.layer_sum(traced.network),
                                                                     lut.weights(traced.network)))
    with pytest.raises(LookupTableError, match=r"measured on another platform .*threads") as info:
        LookupTable.open(url, backend(threads=2))
    assert "\n" not in str(info.value)
    assert LookupTable.open(url, backend()).store.count() == lut.store.count()  # left untouched


def test_a_database_of_another_format_is_refused_and_left_untouched(pg: Server) -> None:
    import psycopg

    url = pg.create_database("lut_other")
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("CREATE TABLE netopt_lut_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO netopt_lut_meta VALUES ('format', 'someone-else'), ('version', '7')")
    with pytest.raises(LookupTableError, match=r"holds format 'someone-else' version '7'"):
        LookupTable.open(url, backend())
    with psycopg.connect(url, autocommit=True) as db:
        assert db.execute("SELECT COUNT(*) FROM netopt_lut_meta").fetchone()[0] == 2
        assert db.execute("SELECT to_regclass('netopt_lut_entries')").fetchone()[0] is None


def test_wrong_credentials_and_a_missing_server_are_one_line_without_the_password(pg: Server) -> None:
    url = pg.create_database("lut_auth")
    wrong = url.replace("s3cret-pw", "not-it")
    with pytest.raises(LookupTableError, match=r"cannot connect \(.*password authentication failed.*check the user "
                                               r"and password") as info:
        LookupTable.open(wrong, backend())
    assert "not-it" not in str(info.value) and ":***@" in str(info.value) and "\n" not in str(info.value)
    closed = url.replace(f":{pg.port}/", ":1/")
    with pytest.raises(LookupTableError, match=r"cannot connect .*check that the server runs"):
        LookupTable.open(closed, backend())


def test_without_the_driver_the_message_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg now raises ImportError
    with pytest.raises(LookupTableError, match=r"pip install 'netopt\[postgres\]'"):
        LookupTable.open("postgresql://u:p@127.0.0.1:5432/db", backend())


def test_the_format_version_has_one_key_and_older_tables_gain_it_on_open(pg: Server) -> None:
    import psycopg

    def meta(url: str) -> dict[str, str]:
        with psycopg.connect(url, autocommit=True) as db:
            return dict(db.execute("SELECT key, value FROM netopt_lut_meta").fetchall())

    new = pg.create_database("lut_version_new")
    LookupTable.open(new, backend()).close()
    assert meta(new)["format_version"] == "3" and "version" not in meta(new)
    old = pg.create_database("lut_version_old")  # the meta rows of a table written before the one key
    fingerprint = json.dumps(dict(backend().fingerprint.fields), sort_keys=True, default=str)
    with psycopg.connect(old, autocommit=True) as db:
        db.execute("CREATE TABLE netopt_lut_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO netopt_lut_meta VALUES ('format', 'netopt-lut'), ('version', '3'), ('fingerprint', %s)",
                   (fingerprint,))
    LookupTable.open(old, backend()).close()
    assert meta(old)["format_version"] == meta(old)["version"] == "3"
