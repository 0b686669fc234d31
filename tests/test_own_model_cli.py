"""`netopt adapt` on a user's own model, checkpoint and objective (examples/own_model.py), and its bad input.

The example module is copied beside each test's config file, as a user's module sits beside
theirs: the factories import from there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from netopt.cli import main

ROOT = Path(__file__).resolve().parent.parent
WIDTH = 16


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("own")
    shutil.copy(ROOT / "examples" / "own_model.py", folder / "own_model.py")
    sys.path.insert(0, str(folder))
    try:
        import own_model

        path = folder / "digits_cnn.pt"
        own_model.train_checkpoint(path, steps=20, width=WIDTH)
    finally:
        sys.path.remove(str(folder))
    return path


def config(folder: Path, checkpoint: Path, changes: dict[str, str] | None = None) -> Path:
    """A complete config of one's own model, tiny; `changes` replace whole lines by key."""
    shutil.copy(ROOT / "examples" / "own_model.py", folder / "own_model.py")
    lines = {
        "run_dir": f'run_dir = "{folder / "run"}"',
        "model": "[model]",
        "factory": 'factory = "own_model:build"',
        "options": f"options = {{ width = {WIDTH} }}",
        "checkpoint": f'checkpoint = "{checkpoint}"',
        "input_shape": "input_shape = [1, 1, 28, 28]",
        "objective": "[objective]",
        "objective_factory": 'objective_factory = "own_model:objective"',
        "training": "[training]\nshort_term_steps = 2\nlong_term_steps = 3",
        "constraints": textwrap.dedent(f"""\
            [[constraints]]
            resource = "latency"
            budget = "75%"
            schedule = {{ initial = "20%" }}
            [[constraints]]
            resource = "energy"
            budget = "75%"
            schedule = {{ initial = "20%" }}
            [lut]
            path = "{folder.parent / 'lut.sqlite'}"
            calibration = 5
            """),
    }
    lines.update(changes or {})
    text = "\n".join(v for v in lines.values() if v).replace("objective_factory =", "factory =")
    path = folder / "own.toml"
    path.write_text(text + "\n")
    return path


def test_adapt_a_model_of_ones_own_and_take_it_away_in_three_forms(tmp_path: Path, checkpoint: Path) -> None:
    path = config(tmp_path, checkpoint)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-m", "netopt.cli", "adapt", str(path)], capture_output=True, text=True,
                          timeout=600, check=False, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    assert "final network: holdout" in done.stdout
    final = tmp_path / "run" / "final"
    assert {"model.onnx", "model.pt2", "weights.pt", "network.json"} <= {p.name for p in final.iterdir()}
    # netopt.load rebuilds it where the user's class cannot be imported; torch.export's program agrees
    probe = textwrap.dedent(f"""\
        import sys, torch, netopt
        assert "own_model" not in sys.modules
        x = torch.rand(2, 1, 28, 28)
        a = netopt.load({str(tmp_path / 'run')!r})(x)
        b = torch.export.load({str(final / 'model.pt2')!r}).module()(x)
        print(torch.allclose(a, b, atol=1e-5), tuple(a.shape))
        """)
    elsewhere = tmp_path / "elsewhere"  # a folder that holds neither the user's module nor a netopt checkout
    elsewhere.mkdir()
    rebuilt = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, check=False,
                             cwd=elsewhere, env=env)
    assert rebuilt.stdout.split() == ["True", "(2,", "10)"], rebuilt.stderr
    summary = json.loads((final / "summary.json").read_text())
    assert 0 <= summary["test_accuracy"] <= 1


BAD_MODULE = '''
import math, torch, netopt
from pathlib import Path

def not_a_module():
    return 42

def raising():
    raise ValueError("no such weights")

CALLS = [0]

def nan_objective():
    import own_model
    good = own_model.objective()
    def score(model):
        CALLS[0] += 1
        broken = CALLS[0] > 1 and Path(__file__).with_name("BROKEN").exists()
        return math.nan if broken else good.holdout(model)
    def fine_tune(model, steps, seed, phase):
        good._fit(model, steps, seed, phase)
    return netopt.FunctionObjective(fine_tune, score)
'''


@pytest.mark.parametrize(("changes", "words"), [
    ({"factory": 'factory = "no_such_package.models:build"'},
     "model.factory 'no_such_package.models:build': module 'no_such_package.models' does not import"),
    ({"factory": 'factory = "own_model:no_such_builder"'},
     "module 'own_model' has no attribute 'no_such_builder'"),
    ({"factory": 'factory = "bad:not_a_module"', "options": "", "checkpoint": ""},
     "model.factory 'bad:not_a_module' returned a int, not a torch.nn.Module"),
    ({"factory": 'factory = "bad:raising"', "options": "", "checkpoint": ""},
     "model.factory 'bad:raising' raised ValueError: no such weights"),
    ({"factory": "factory = \"own_model\""}, "is not \"package.module:callable\""),
    ({"options": "options = { width = 8 }"}, "features.0.0.weight has shape (16, 1, 3, 3) but own_model:build makes"),
    ({"checkpoint": 'checkpoint = "RENAMED"'}, "1 missing key(s), the first 'classifier.weight'; 1 unexpected key(s)"),
    ({"checkpoint": 'checkpoint = "NOWHERE.pt"'}, "model.checkpoint NOWHERE.pt does not exist"),
    ({"checkpoint": 'checkpoint = "GARBAGE"'}, "is not a state_dict torch can load with weights_only=True"),
    ({"objective": "", "objective_factory": ""}, "model.factory needs objective.factory"),
    ({"objective_factory": 'objective_factory = "bad:not_a_module"'},
     "objective.factory 'bad:not_a_module' returned a int, not a netopt Objective"),
])
def test_bad_own_model_input_is_one_line_and_writes_no_run(tmp_path: Path, checkpoint: Path, changes: dict[str, str],
                                                          words: str, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.py").write_text(BAD_MODULE)
    state = torch.load(checkpoint, weights_only=True)
    state["head.weight"] = state.pop("classifier.weight")
    torch.save(state, tmp_path / "renamed.pt")
    (tmp_path / "garbage.pt").write_bytes(os.urandom(300))
    for key, value in changes.items():
        changes[key] = value.replace("RENAMED", str(tmp_path / "renamed.pt")).replace("GARBAGE",
                                                                                       str(tmp_path / "garbage.pt"))
    sys.modules.pop("bad", None)
    assert main(["adapt", str(config(tmp_path, checkpoint, changes))]) == 2
    err = capsys.readouterr().err
    assert words in err and err.startswith("netopt: error:") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run" / "history.jsonl").exists()


def test_an_objective_returning_nan_stops_the_run_which_resumes_once_fixed(tmp_path: Path, checkpoint: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.py").write_text(BAD_MODULE)
    (tmp_path / "BROKEN").touch()
    sys.modules.pop("bad", None)
    path = config(tmp_path, checkpoint, {"objective_factory": 'objective_factory = "bad:nan_objective"'})
    assert main(["adapt", str(path)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("netopt: error: proposal 0 (")
    assert "score bad.nan_objective.<locals>.score returned nan" in last
    (tmp_path / "BROKEN").unlink()  # the user fixes the function
    assert main(["adapt", str(path), "--resume"]) == 0
    assert (tmp_path / "run" / "final" / "model.onnx").exists()
