"""Run directories: atomic files, a log that survives a kill, networks that load back."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import netopt
from netopt.runs import RunDir, RunError, append_line, load, read_lines, write_atomic
from netopt.zoo import resnet_small


def test_atomic_write_leaves_old_or_new_never_a_part(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    write_atomic(target, b"old")
    code = ("import os, sys; from pathlib import Path; from netopt.runs import write_atomic; "
            "write_atomic(Path(sys.argv[1]), b'x' * 50_000_000)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)])
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob(".f.json.*.tmp")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    proc.kill()  # while the temporary file is being written, if we caught it
    proc.wait()
    assert target.read_bytes() in (b"old", b"x" * 50_000_000)


def test_a_line_cut_by_a_kill_is_not_a_record(tmp_path: Path) -> None:
    log = tmp_path / "history.jsonl"
    append_line(log, {"a": 1})
    append_line(log, {"a": 2})
    with log.open("a") as f:
        f.write('{"a": 3, "cut')
    assert list(read_lines(log)) == [{"a": 1}, {"a": 2}]


def test_family_members_and_final_load_back_as_ready_modules(tmp_path: Path) -> None:
    model = resnet_small(8).eval()
    x = torch.randn(2, 3, 16, 16)
    traced = netopt.trace(model, x)
    net = traced.network.with_widths({traced.network.groups[0].id: 8})
    module = traced.materialize(net).eval()
    run = RunDir.create(tmp_path / "run", {"seed": 0}, traced.network)
    run.save_member(1, net, module, {"accuracy": 0.5})
    run.save_final(net, module, {"accuracy": 0.6}, onnx=b"not checked here")
    assert run.members() == [1] and run.summary("last") == {"accuracy": 0.5}
    for which in (1, "last", "final"):
        assert torch.equal(load(tmp_path / "run", which)(x), module(x))
    assert RunDir.open(tmp_path / "run").original() == traced.network


def test_run_dir_errors_say_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="already holds files"):
        RunDir.create(tmp_path / "busy", {}, netopt.trace(resnet_small(8).eval(), torch.randn(1, 3, 8, 8)).network)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    with pytest.raises(RunError, match="not a netopt run"):
        RunDir.open(tmp_path / "busy")
    run = RunDir.create(tmp_path / "empty", {}, netopt.trace(resnet_small(8).eval(), torch.randn(1, 3, 8, 8)).network)
    with pytest.raises(RunError, match="no completed iteration"):
        run.module("last")
    with pytest.raises(RunError, match="not a completed network"):
        load(tmp_path / "empty", 3)
    assert os.listdir(tmp_path / "empty")


def test_a_line_cut_by_a_kill_is_dropped_before_the_next_record(tmp_path: Path) -> None:
    from netopt.runs.files import append_line, read_lines

    log = tmp_path / "log.jsonl"
    append_line(log, {"n": 1})
    with log.open("a") as f:
        f.write('{"n": 2, "cut')  # the writer died here
    append_line(log, {"n": 3})
    assert list(read_lines(log)) == [{"n": 1}, {"n": 3}]
    log.write_text('{"n": 0, "cut')  # a first line cut short
    append_line(log, {"n": 4})
    assert list(read_lines(log)) == [{"n": 4}]
