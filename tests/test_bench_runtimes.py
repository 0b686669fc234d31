"""benchmarks/bench_runtimes.py (issue 30): it starts, and its tables read the cells as they should."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

bench = pytest.importorskip("bench_runtimes")


def test_the_script_prints_its_help() -> None:
    out = subprocess.run([sys.executable, str(BENCH / "bench_runtimes.py"), "--help"], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    assert "--tables" in out and "--quick" in out


def test_shares_are_compared_with_ort_fp32s_within_each_runtime() -> None:
    found = {label: {"ms": [2.0, 1.0, 0.5, 1.5]} for label in bench.RUNTIMES}
    found["XNNPACK int8"] = {"ms": [1.0, 0.6, 0.3, 0.9], "portable": ""}  # shares 0.6, 0.3, 0.9 against 0.5, 0.25, 0.75
    rows = {r[2]: r for r in bench.transfer_rows("M", 128, found)}
    assert rows["ORT fp32"][4:] == ["1.00", "median +0% (+0% .. +0%)"]
    assert rows["XNNPACK int8"][3:] == ["1.000 ms", "1.00", "median +20% (+20% .. +20%)"]


def test_the_diagonal_is_judged_against_the_budget() -> None:
    finals = {"ORT fp32": {"accuracy": 0.9, "iterations": 3}, "XNNPACK int8": {"accuracy": 0.8, "iterations": 4}}
    shares = {label: [0.45, 0.6] for label in bench.RUNTIMES}
    rows, diagonal = bench.adapted_rows(finals, shares)
    assert diagonal == [True, False]
    assert rows[0][3] == "45.0% **(met)**" and rows[1][-1] == "60.0% **(missed)**" and rows[0][4] == "45%"


def test_quick_settings_fill_what_is_not_given(tmp_path: Path) -> None:
    args = bench.parse_args(["--quick", "--out", str(tmp_path), "--variants", "3"])
    assert (args.models, args.sizes, args.variants, args.fidelity_model) == (["MobileNetV2"], [128], 3, "digits")
    assert args.fidelity_size == 32 and args.settings.runs == 10
