"""What processes that share work need: who a process is, whether it still lives, and the
PostgreSQL connection that a shared lookup table or study opens.

Lookup tables (claims) and shared studies (workers) both use these, so they live below both
packages: neither imports the other for them. The driver (psycopg 3, the `postgres` extra) is
imported only when a connection is opened.
"""

from __future__ import annotations

import os
import re
import socket
from typing import Any

from netopt.errors import LookupTableError, first_line

__all__ = ["connect", "driver", "is_postgres_url", "owner_alive", "process_owner", "redacted"]


def process_owner() -> str:
    """This process as "host:pid": who holds a claim (or runs a trial).

    >>> process_owner().rpartition(":")[2] == str(os.getpid())
    True
    """
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


def is_postgres_url(path: object) -> bool:
    """Whether `path` names a PostgreSQL database rather than a file."""
    return isinstance(path, str) and path.startswith(("postgresql://", "postgres://", "postgresql+psycopg://"))


def redacted(url: str) -> str:
    """The URL without its password: what error messages may show.

    >>> redacted("postgresql://me:s3cret@db:5432/lut")
    'postgresql://me:***@db:5432/lut'
    """
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def driver() -> Any:
    """The psycopg module, or a LookupTableError naming the extra to install."""
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
