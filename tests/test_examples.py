"""Every example runs end to end (at a small size)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_shrink_and_export_example_runs(tmp_path: Path) -> None:
    script = ROOT / "examples" / "shrink_and_export.py"
    result = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path), "--resolution", "64"],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "ONNX Runtime output matches torch" in result.stdout
    assert {p.name for p in tmp_path.iterdir()} == {"network.json", "weights.pt", "model.onnx"}


def test_cli_describe_prints_groups_and_reports_bad_input() -> None:
    ok = subprocess.run([sys.executable, "-m", "netopt.cli", "describe", "resnet8", "--resolution", "32"],
                        capture_output=True, text=True, timeout=300, check=False)
    assert ok.returncode == 0, ok.stderr
    assert "prunable channel groups" in ok.stdout and "layers.0.0.conv1" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "netopt.cli", "describe", "resnet8", "--resolution", "0"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode == 2
    assert bad.stderr.startswith("netopt: error:") and "Traceback" not in bad.stderr


def test_cli_agent_serves_on_loopback_until_stopped() -> None:
    import json
    import urllib.request

    token = "a-long-enough-test-token"
    proc = subprocess.Popen([sys.executable, "-m", "netopt.cli", "agent", "--port", "0", "--token", token],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line
        url = line.split("listening on ")[1].strip()
        request = urllib.request.Request(f"{url}/v1/info", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            info = json.load(reply)
        assert info["platform"]["backend"] == "onnxruntime-cpu"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_adapt_mnist_example_runs_end_to_end_and_resumes(tmp_path: Path) -> None:
    script = ROOT / "examples" / "adapt_mnist.py"
    run = tmp_path / "run"
    args = [sys.executable, str(script), "--run", str(run), "--lut", str(tmp_path / "lut.sqlite"),
            "--pretrain", "30", "--short", "2", "--long", "2", "--latency", "85%", "--energy", "90%", "--calibration",
            "5"]
    env = {**os.environ, "NETOPT_CACHE": str(tmp_path / "cache")}
    first = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "final network: holdout" in first.stdout and (run / "final" / "model.onnx").exists()
    assert (run / "accuracy_vs_latency.png").exists() and (run / "widths.png").exists()
    again = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=600, check=False, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    line = "final network:"
    assert again.stdout.split(line)[1].split("\n")[0] == first.stdout.split(line)[1].split("\n")[0]


@pytest.mark.slow
def test_netopt_adapt_runs_the_main_job_at_tiny_size_and_resumes(tmp_path: Path) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(f"""
run_dir = "{tmp_path / 'run'}"
[model]
pretrain_steps = 30
[training]
short_term_steps = 2
long_term_steps = 2
[[constraints]]
resource = "latency"
budget = "85%"
[[constraints]]
resource = "memory"
budget = "90%"
[lut]
path = "{tmp_path / 'lut' / 'lut.sqlite'}"
calibration = 5
""")
    env = {**os.environ, "NETOPT_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "netopt.cli", "adapt", str(config)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "final network: holdout" in first.stdout and "latency measured" in first.stdout
    assert "checked as measured" in first.stdout  # the 85% budget: of the start's end-to-end measurement
    assert "netopt: iteration 1: " in first.stderr  # no TTY: a line an iteration instead of a bar
    assert (tmp_path / "run" / "final" / "model.onnx").exists() and (tmp_path / "run" / "widths.png").exists()
    again = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=600, check=False, env=env)
    assert again.returncode == 0
    assert _deterministic(again.stdout) == _deterministic(first.stdout)  # table and final, bar fresh measurements
    config.write_text(config.read_text().replace('budget = "85%"', 'budget = "60%"'))
    files = sorted(p.name for p in (tmp_path / "run").rglob("*"))
    other = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=600, check=False, env=env)
    assert other.returncode == 2 and other.stdout == ""
    assert "started with constraints.0.budget = '85%', not '60%'" in other.stderr and "Traceback" not in other.stderr
    assert sorted(p.name for p in (tmp_path / "run").rglob("*")) == files  # nothing written


def _deterministic(summary: str) -> list[list[str]]:
    """The summary table without its measured columns (measured anew on every call), and the
    final network's accuracies."""
    table = [line.split("|") for line in summary.splitlines() if line.startswith("|")]
    keep = [k for k, cell in enumerate(table[0]) if "(measured)" not in cell]
    final = [line.split(";")[0] for line in summary.splitlines() if line.startswith("final network:")]
    return [[row[k] for k in keep] for row in table] + [final]


def test_the_custom_constraint_example_property_tests_pass() -> None:
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(ROOT / "examples" / "test_custom_constraint.py")], capture_output=True, text=True,
                          timeout=600, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "3 passed" in done.stdout


def test_denoising_example_adapts_a_users_encoder_decoder_on_psnr(tmp_path: Path) -> None:
    """A dense-prediction network of one's own (upsampling, a skip concatenation), the user's DataLoader
    loop and a non-accuracy metric, through FunctionObjective, under latency and energy budgets."""
    run = tmp_path / "run"
    args = [sys.executable, str(ROOT / "examples" / "denoise_digits.py"), "--run", str(run), "--size", "16",
            "--width", "16", "--pretrain", "20", "--short", "2", "--long", "3", "--latency", "90%",
            "--calibration", "4"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "PSNR on holdout: start" in done.stdout and "netopt.load(run) computes what the final network" in done.stdout
    line = done.stdout.split("latency: ")[1].splitlines()[0]  # call costs: its floor measured 81% here
    measured, budget = (float(line.split(word)[1].split()[0].rstrip(",")) for word in ("measured ", "budget "))
    assert measured <= budget and line.endswith("checked as measured")
    energy = float(done.stdout.split("energy: ")[1].split("%")[0])
    assert energy <= 70.0
    assert {"model.onnx", "model.pt2"} <= {p.name for p in (run / "final").iterdir()}


def _xnnpack_int8(tmp_path: Path) -> str:
    """examples/xnnpack_int8.toml shrunk to a tiny run in `tmp_path`."""
    example = (ROOT / "examples" / "xnnpack_int8.toml").read_text()
    tiny = (example.replace('run_dir = "runs/xnnpack-int8"', f'run_dir = "{tmp_path / "run"}"')
            .replace("short_term_steps = 60", "short_term_steps = 2")
            .replace("long_term_steps = 300", "long_term_steps = 2")
            .replace('budget = "50%"', 'budget = "85%"').replace("width = 0.5", "width = 0.25\npretrain_steps = 30")
            .replace("threads = 1", f'threads = 1\ncalibration = 4\npath = "{tmp_path / "lut.sqlite"}"'))
    assert tiny.count(str(tmp_path)) == 2 and "short_term_steps = 2" in tiny
    return tiny


def test_the_xnnpack_int8_example_measures_on_executorch_int8_quantized_on_the_objectives_inputs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from netopt.app.config import load_config
    from netopt.app.factory import build_problem

    config = tmp_path / "tiny.toml"
    config.write_text(_xnnpack_int8(tmp_path))
    monkeypatch.setenv("NETOPT_CACHE", str(tmp_path / "cache"))
    problem = build_problem(load_config(config))
    backend = problem.constraints[0].estimator.backend  # type: ignore[attr-defined]
    fields = backend.fingerprint.fields
    assert [fields[k] for k in ("backend", "precision", "delegate")] == ["executorch", "int8", "xnnpack"]
    inputs = backend.representative
    assert inputs and all(x.shape[1:] == problem.traced.example_input().shape[1:] for x in inputs)
    assert any(torch.equal(inputs[0][:1], x[None]) for x in problem.objective.data.train_x)  # type: ignore[attr-defined]


@pytest.mark.slow
def test_the_xnnpack_int8_example_adapts_on_executorch_at_tiny_size(tmp_path: Path) -> None:
    """examples/xnnpack_int8.toml as a user runs it, shrunk (UniformWidth: a few networks, each
    unit lowered and quantized for XNNPACK): the final network checked as measured there."""
    config = tmp_path / "tiny.toml"
    config.write_text(_xnnpack_int8(tmp_path) + '\n[strategy]\nname = "UniformWidth"\n')
    env = {**os.environ, "NETOPT_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "netopt.cli", "adapt", str(config)], capture_output=True, text=True,
                          timeout=1800, check=False, env=env)  # every new unit lowered for XNNPACK: slow
    assert done.returncode == 0, done.stderr[-2000:]
    assert "latency measured" in done.stdout and "checked as measured" in done.stdout
    with sqlite3.connect(tmp_path / "lut.sqlite") as db:  # the table's own record of what it measured on
        fingerprint = json.loads(db.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()[0])
    assert [fingerprint[k] for k in ("backend", "precision", "delegate")] == ["executorch", "int8", "xnnpack"]
