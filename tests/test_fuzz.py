"""Fuzzing the two doors bad input comes through: the config loader and a damaged run directory.

Every case must end in a result or in one `NetoptError` line (exit code 2 from the CLI), and a
refused input leaves every file as it was. Bounded: a fixed number of examples, each fast.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netopt.app.config import AdaptConfig, load_config
from netopt.cli import main
from netopt.errors import NetoptError
from netopt.strategies import ProgressiveBarrier
from netopt.testing.contract import small_network
from netopt.testing.problems import joint_problem

pytestmark = pytest.mark.filterwarnings("ignore::netopt.app.config.ConfigWarning")  # empty files: said, then run

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                       HealthCheck.too_slow])

KEYS = {"run_dir": None, "model": ("width", "size", "pretrain_steps", "factory", "checkpoint", "input_shape"),
        "data": ("holdout_per_class", "test_fraction", "seed"), "training": ("lr", "batch_size", "device"),
        "strategy": ("name", "seed", "samples", "trials", "block_size"),
        "lut": ("path", "threads", "backend", "precision", "calibration"),
        "objective": ("factory",)}
scalars = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False), st.text(max_size=12), st.booleans(),
                    st.lists(st.integers(-5, 300), max_size=5))


@st.composite
def documents(draw: st.DrawFn) -> dict[str, object]:
    """Config documents near the real ones: known tables and keys, random values (and a stray key)."""
    doc: dict[str, object] = {}
    for table in draw(st.lists(st.sampled_from(sorted(KEYS)), unique=True, max_size=4)):
        keys = KEYS[table]
        if keys is None:
            doc[table] = draw(scalars)
            continue
        doc[table] = {k: draw(scalars) for k in draw(st.lists(st.sampled_from(keys), unique=True, max_size=3))}
    if draw(st.booleans()):
        doc["constraints"] = [{"resource": draw(st.sampled_from(["latency", "energy", "macs", "speed"])),
                               "budget": draw(st.one_of(scalars, st.sampled_from(["50%", "150%", "-3", "x%"])))}
                              for _ in range(draw(st.integers(0, 3)))]
    if draw(st.booleans()):
        doc[draw(st.text(min_size=1, max_size=8))] = draw(scalars)
    return doc


def toml(doc: dict[str, object]) -> str:
    """A small TOML writer for these documents (scalars, lists, tables, arrays of tables)."""
    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            return repr(v) if v == v and v not in (float("inf"), float("-inf")) else ("inf" if v > 0 else "-inf")
        if isinstance(v, int):
            return str(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    def key(k: str) -> str:
        return '"' + k.replace("\\", "\\\\").replace('"', '\\"') + '"'

    top = [f"{key(k)} = {value(v)}" for k, v in doc.items() if not isinstance(v, dict) and k != "constraints"]
    tables = [f"[{key(k)}]\n" + "\n".join(f"{key(a)} = {value(b)}" for a, b in v.items())
              for k, v in doc.items() if isinstance(v, dict)]
    arrays = ["[[constraints]]\n" + "\n".join(f"{key(a)} = {value(b)}" for a, b in c.items())
              for c in doc.get("constraints", [])]  # type: ignore[attr-defined]
    return "\n".join(top + tables + arrays) + "\n"


def _one_line_or_config(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = path.read_bytes()
    try:
        config = load_config(path)
    except NetoptError as exc:
        assert "\n" not in str(exc).strip(), str(exc)
        assert main(["adapt", str(path)]) == 2  # the CLI ends the same way, in one line, exit 2
        err = capsys.readouterr().err
        assert err.startswith("netopt: error:") and len(err.strip().splitlines()) == 1, err
    else:
        assert isinstance(config, AdaptConfig)
    assert path.read_bytes() == before


@FAST
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".toml", ".yaml"]))
def test_random_bytes_to_the_config_loader(tmp_path: Path, data: bytes, suffix: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    _one_line_or_config(path, capsys)


@FAST
@given(doc=documents(), as_yaml=st.booleans())
def test_random_documents_to_the_config_loader(tmp_path: Path, doc: dict[str, object], as_yaml: bool,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / ("fuzz.yaml" if as_yaml else "fuzz.toml")
    path.write_text(yaml.safe_dump(doc) if as_yaml else toml(doc))
    _one_line_or_config(path, capsys)


# --- a damaged run directory ------------------------------------------------------------------

STEPS: dict[str, Any] = {"short_term_steps": 1, "long_term_steps": 1, "seed": 1, "progress": False}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    torch.manual_seed(0)
    ProgressiveBarrier(**STEPS).run(joint_problem(small_network(), "50%", "90%"), run_dir=run)
    return run


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@FAST
@given(data=st.data())
def test_random_damage_to_a_finished_run_directory(tmp_path: Path, finished: Path, data: st.DataObject) -> None:
    run = tmp_path / "run"
    if run.exists():
        shutil.rmtree(run)
    shutil.copytree(finished, run)
    files = sorted(p for p in run.rglob("*") if p.is_file())
    victim = data.draw(st.sampled_from(files), label="file")
    how = data.draw(st.sampled_from(["truncate", "garbage", "delete", "append", "flip"]), label="damage")
    content = victim.read_bytes()
    if how == "truncate":
        victim.write_bytes(content[:data.draw(st.integers(0, max(len(content) - 1, 0)))])
    elif how == "garbage":
        victim.write_bytes(data.draw(st.binary(min_size=1, max_size=200)))
    elif how == "delete":
        victim.unlink()
    elif how == "append":
        victim.write_bytes(content + data.draw(st.binary(min_size=1, max_size=50)))
    elif content:
        k = data.draw(st.integers(0, len(content) - 1))
        victim.write_bytes(content[:k] + bytes([content[k] ^ 0xFF]) + content[k + 1:])
    damaged = _hashes(run)
    try:
        ProgressiveBarrier(**STEPS).run(joint_problem(small_network(), "50%", "90%"), run_dir=run, resume=True)
    except NetoptError as exc:
        message = str(exc).strip()
        assert "\n" not in message, message
        assert _hashes(run) == damaged, f"refused ({message}) but changed files"
