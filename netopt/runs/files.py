"""Files that are written whole or not at all, and an append-only log that survives a kill."""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from netopt.ir.versions import stamped

__all__ = ["write_atomic", "write_json", "save_tensors", "append_line", "read_lines"]


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the new one, never a part:
    a temporary file in the same folder, flushed to disk, then renamed over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, value: Any, version: int | None = None) -> None:
    """`value` as JSON, atomically; with `version`, stamped as its `format_version` (the one
    version key of netopt's files; leave it out for a document that carries its own)."""
    doc = value if version is None else stamped(value, version)
    write_atomic(path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())


def save_tensors(path: Path, state: dict[str, torch.Tensor]) -> None:
    """A state_dict, atomically (loadable with torch.load(weights_only=True))."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, buffer.getvalue())


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk before returning. A line a kill cut short is
    cut off first, so that the log stays one complete record per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size and (f.seek(size - 1), f.read(1))[1] != b"\n":  # rare: only after a kill mid-write
            f.seek(0)
            f.truncate(f.read().rfind(b"\n") + 1)
        f.write((json.dumps(record, sort_keys=True) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


def read_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The complete JSON lines of a log; a last line cut short by a kill is skipped."""
    if not path.exists():
        return
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                return  # the writer died mid-line: that record never happened
            yield json.loads(line)
