"""A PostgreSQL server of the tests' own: `initdb` in a temporary folder, its own port, loopback only.

Debian's `postgresql` binaries (`make test` installs them where it may); where they are missing,
the tests that need a server are skipped with the reason. As root, the server runs as the
`postgres` user the package creates (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

USER, PASSWORD = "netopt", "s3cret-pw"


@dataclass(frozen=True)
class Server:
    port: int

    def url(self, database: str = "postgres", user: str = USER, password: str = PASSWORD) -> str:
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}"')
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def _bindir() -> Path | None:
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres(folder: Path) -> Iterator[Server]:
    pytest.importorskip("psycopg", reason="the postgres extra is not installed (pip install 'netopt[postgres]')")
    bindir = _bindir()
    if bindir is None:
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are not installed: apt-get install postgresql")
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None or subprocess.run(["id", "postgres"], capture_output=True).returncode:
            pytest.skip("running as root, and there is no 'postgres' user to run the server as")
        prefix = ["runuser", "-u", "postgres", "--"]
    folder.mkdir(parents=True, exist_ok=True)
    data, sockets, pwfile = folder / "data", folder / "sockets", folder / "pw"
    sockets.mkdir()
    pwfile.write_text(PASSWORD)
    if prefix:
        shutil.chown(folder, "postgres")
        for p in (sockets, pwfile):
            shutil.chown(p, "postgres")
        folder.chmod(0o700)
    made = subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", USER, "--auth=scram-sha-256",
                           f"--pwfile={pwfile}", "-E", "UTF8", "--no-instructions"], capture_output=True, text=True,
                          timeout=120)
    if made.returncode:
        raise RuntimeError(f"initdb failed: {made.stderr.strip()}")
    port = _free_port()
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {sockets} -c fsync=off -c max_connections=60"
    started = subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-o",
                              options, "-w", "-t", "60", "start"], capture_output=True, text=True, timeout=90)
    if started.returncode:
        raise RuntimeError(f"PostgreSQL did not start: {started.stdout} {started.stderr}")
    try:
        time.sleep(0.1)
        yield Server(port)
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=60)
