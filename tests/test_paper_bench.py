"""The paper benchmarks' readings (benchmarks/paper): which networks they compare, and how."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks" / "paper"))

from paperbench import fastest_as_accurate, member_at, spread, standard_error


def family(*latencies: float) -> list[SimpleNamespace]:
    return [SimpleNamespace(iteration=k, resources={"latency": v}) for k, v in enumerate(latencies)]


def test_member_at_is_the_first_member_within_the_budget() -> None:
    members = family(10.0, 9.0, 7.5, 7.0, 5.0)
    assert member_at(members, "latency", 7.5).iteration == 2
    assert member_at(members, "latency", 8.9).iteration == 2
    assert member_at(members, "latency", 4.9) is None


def test_spread_spaces_members_evenly_and_leaves_the_start_out() -> None:
    members = family(10.0, 9.5, 9.0, 8.0, 7.0, 6.0, 5.5, 5.0)
    picked = spread(members, "latency", 5)  # targets 9, 8, 7, 6, 5
    assert [m.iteration for m in picked] == [2, 3, 4, 5, 7]
    assert spread(members, "latency", 100)[-1] is members[-1]  # more points than members: each once
    assert len({id(m) for m in spread(members, "latency", 100)}) == len(spread(members, "latency", 100))


def test_fastest_as_accurate_reads_both_ways() -> None:
    netadapt = {"a": (1.0, 0.95), "b": (2.0, 0.97)}
    multipliers = {"x0.5": (1.5, 0.95), "x0.75": (2.5, 0.96), "x1": (4.0, 0.98)}
    assert fastest_as_accurate(netadapt, multipliers) == {"a": "x0.5", "b": "x1"}
    assert fastest_as_accurate(multipliers, netadapt) == {"x0.5": "a", "x0.75": "b", "x1": None}


def test_standard_error_of_a_test_accuracy() -> None:
    assert standard_error(0.5, 100) == pytest.approx(0.05)
    assert standard_error(1.0, 100) == 0.0
