"""The one version key of every JSON document netopt writes, and how a reader checks it.

Every document carries its format's version as an int under `format_version`. A reader takes
a document of its own version or an older one (migrating the older), and refuses a newer one
in one line. Lives in the IR (which imports no torch) so that every layer can share it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from netopt.errors import FormatError, NetoptError

__all__ = ["VERSION_KEY", "stamped", "version_of"]

VERSION_KEY = "format_version"


def stamped(doc: Mapping[str, Any], version: int) -> dict[str, Any]:
    """`doc` with its format version under the one key.

    >>> stamped({"a": 1}, 2)
    {'a': 1, 'format_version': 2}
    """
    return {**doc, VERSION_KEY: version}


def version_of(doc: Mapping[str, Any], reads: int, what: str, fix: str, *, missing: int | None = 1,
               error: type[NetoptError] = FormatError) -> int:
    """The format version of `doc` (`missing` where it has none: files from before the key
    existed); a newer version than `reads`, or one that is not a whole number, raises `error`.

    >>> version_of({"format_version": 3}, 2, "row.json", "upgrade netopt")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    netopt.errors.FormatError: row.json: format version 3 is not supported ... reads up to 2; upgrade netopt
    """
    version = doc.get(VERSION_KEY, missing)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= reads:
        raise error(f"{what}: format version {version!r} is not supported by this netopt, which reads up to "
                    f"{reads}; {fix}")
    return version
