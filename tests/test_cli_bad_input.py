"""Bad command lines: one line on stderr that names the value and the rule, exit code 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from netopt.cli import main


@pytest.mark.parametrize(("argv", "rule"), [
    (["describe", "mobilenet_v1", "--width", "nan"], "argument --width: nan must lie in [0.01, 4]"),
    (["describe", "mobilenet_v1", "--width", "1e9"], "argument --width: 1e9 must lie in [0.01, 4]"),
    (["describe", "mobilenet_v1", "--resolution", "-5"], "argument --resolution: -5 must lie in [8, 2048]"),
    (["describe", "mobilenet_v1", "--resolution", "100000"], "must lie in [8, 2048]"),
    (["describe", "mobilenet_v1", "--classes", "0"], "argument --classes: 0 must lie in [1, 100000]"),
    (["describe", "mobilenet_v1", "--width", "wide"], "argument --width: 'wide' is not a number"),
    (["lut", "build", "--points", "-3"], "argument --points: -3 must lie in [1, 1000]"),
    (["lut", "fidelity", "--variants", "0"], "argument --variants: 0 must lie in [2, 10000]"),
    (["lut", "fidelity", "--calibration", "1"], "argument --calibration: 1 must lie in [2, 1000]"),
    (["agent", "--port", "70000"], "argument --port: 70000 must lie in [0, 65535]"),
    (["agent", "--port", "-1"], "argument --port: -1 must lie in [0, 65535]"),
])
def test_out_of_range_arguments_are_refused_before_any_work(argv: list[str], rule: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # where a lookup table or a run would be written
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert rule in err and err.startswith("netopt: error:") and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_files_the_cli_cannot_use_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["agent", "--token-file", str(tmp_path / "missing")]) == 2
    assert "--token-file" in capsys.readouterr().err
    (tmp_path / "empty").write_text("\n")
    assert main(["agent", "--token-file", str(tmp_path / "empty")]) == 2
    assert "the token is empty" in capsys.readouterr().err
    assert main(["describe", "resnet8", "--resolution", "32", "--json", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--json {tmp_path}: cannot write there" in err and len(err.strip().splitlines()) == 1
    assert main(["adapt", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
