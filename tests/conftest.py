from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings
from pgserver import Server, postgres

torch.set_num_threads(1)

settings.register_profile(
    "netopt", deadline=None, max_examples=30,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("ci", parent=settings.get_profile("netopt"), derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "netopt")


@pytest.fixture(scope="session")
def pg() -> Iterator[Server]:
    """A PostgreSQL server started for this test session (see pgserver.py), stopped at its end.
    Its folder is outside pytest's (root-only) temporary tree: the server's user must reach it."""
    folder = Path(tempfile.mkdtemp(prefix="netopt-pg-"))
    folder.chmod(0o711)  # traversable: the cluster folder inside is the server user's own
    try:
        with postgres(folder / "cluster") as server:
            yield server
    finally:
        shutil.rmtree(folder, ignore_errors=True)
