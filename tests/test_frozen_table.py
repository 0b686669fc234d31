"""A frozen lookup table: runs read it and write nothing back, so runs compared start alike.

The backend is `Device`, whose "latency" is a deterministic function of the module, and the
table's calibration is made wrong on purpose, so that a run recalibrates it as it goes (which
an unfrozen table would keep).
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
import torch
from torch import nn

import netopt
from netopt.constraints import LatencyConstraint, ReductionSchedule
from netopt.constraints.registry import CONSTRAINTS, EstimatorSources
from netopt.errors import LookupTableError
from netopt.lut import Calibration, LookupTable, structure_key
from netopt.measure.base import Backend, Fingerprint, Measurement, summarize
from netopt.strategies import ProgressiveBarrier, Result
from netopt.testing.contract import small_network
from netopt.testing.problems import problem


class Device(Backend):
    """0.05 ms a call, 2e-5 ms a parameter, 1e-3 ms a layer: additive, so layer sums are exact."""

    unit = "ms"

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint({"backend": "test-device"})

    def measure(self, module: nn.Module, example_input: torch.Tensor) -> Measurement:
        params = sum(p.numel() for p in module.parameters())
        layers = sum(1 for m in module.modules() if not list(m.children()))
        return summarize([0.05 + 2e-5 * params + 1e-3 * layers] * 5, "ms", self.fingerprint.key)


def made_table(path: Path) -> None:
    """A calibrated table whose calibration estimates every network at 70% of what it measures."""
    traced = problem(small_network(), []).traced
    lut = LookupTable.open(path, Device())
    right = lut.calibrate(traced, max_networks=4)
    wrong = Calibration.fit([(x, y * 0.7, *rest) for x, y, *rest in right.points])
    lut.store.put_calibration(structure_key(traced.network), wrong)
    lut.close()


def rows(path: Path) -> dict[str, list[tuple[object, ...]]]:
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall()) for t in ("meta", "entries", "calibrations")}
    finally:
        db.close()


def adapt(path: Path, run_dir: Path | None = None) -> tuple[Result, LookupTable]:
    lut = LookupTable.open(path, Device(), frozen=True)
    made = problem(small_network(), [LatencyConstraint("60%", lut, ReductionSchedule("8%"))])
    result = ProgressiveBarrier(short_term_steps=0, long_term_steps=0, progress=False).run(made, run_dir=run_dir)
    return result, lut


def test_two_runs_from_one_frozen_table_leave_its_file_as_it_was_and_give_the_same_result(tmp_path: Path) -> None:
    path = tmp_path / "lut.sqlite"
    made_table(path)
    before, kept = hashlib.sha256(path.read_bytes()).hexdigest(), rows(path)
    first, lut = adapt(path, tmp_path / "first")
    assert lut.frozen and len(lut.calibration(first.start).points) > 4  # type: ignore[arg-type,union-attr]
    lut.close()
    second, lut = adapt(path, tmp_path / "second")
    lut.close()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before and rows(path) == kept
    assert second.final.network == first.final.network
    assert [p.to_dict() for p in second.history] == [p.to_dict() for p in first.history]
    assert len(LookupTable.open(path, Device()).calibration(first.start).points) == 4  # type: ignore[arg-type,union-attr]


def test_an_unfrozen_run_keeps_its_recalibration_in_the_table(tmp_path: Path) -> None:
    path = tmp_path / "lut.sqlite"
    made_table(path)
    lut = LookupTable.open(path, Device())
    made = problem(small_network(), [LatencyConstraint("60%", lut, ReductionSchedule("8%"))])
    ProgressiveBarrier(short_term_steps=0, long_term_steps=0, progress=False).run(made)
    assert not lut.frozen and len(LookupTable.open(path, Device()).calibration(made.traced.network).points) > 4  # type: ignore[union-attr]


def test_a_frozen_table_must_exist(tmp_path: Path) -> None:
    with pytest.raises(LookupTableError, match=r"frozen=True needs an existing lookup table, and .*missing\.sqlite is "
                                               r"none; open it unfrozen once"):
        LookupTable.open(tmp_path / "missing.sqlite", Device(), frozen=True)
    assert not (tmp_path / "missing.sqlite").exists()


def test_estimator_sources_open_the_table_frozen(tmp_path: Path) -> None:
    path = tmp_path / "lut.sqlite"
    LookupTable.open(path, netopt.measure.TorchEager()).close()
    constraint = CONSTRAINTS["latency"].make("50%", ReductionSchedule(), EstimatorSources(
        lut_path=str(path), backend="torch-eager", frozen=True))
    assert isinstance(constraint.estimator, LookupTable) and constraint.estimator.frozen


def test_a_configs_lut_frozen_reaches_the_table(tmp_path: Path) -> None:
    from netopt.app.config import AdaptConfig, ConstraintConfig
    from netopt.app.factory import _constraint

    path = tmp_path / "lut.sqlite"
    LookupTable.open(path, netopt.measure.TorchEager()).close()
    config = AdaptConfig.model_validate({"lut": {"path": str(path), "backend": "torch-eager", "frozen": True}})
    constraint = _constraint(ConstraintConfig(resource="latency", budget="50%"), config)
    assert isinstance(constraint.estimator, LookupTable) and constraint.estimator.frozen
    assert not AdaptConfig().lut.frozen
