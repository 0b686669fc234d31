"""`netopt adapt CONFIG`: typos and bad values are one line and exit code 2, before any work."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from netopt.app.config import AdaptConfig, load_config
from netopt.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_the_bundled_demo_config_is_the_default() -> None:
    assert load_config(ROOT / "examples" / "demo.toml") == AdaptConfig()


@pytest.mark.parametrize(("text", "message"), [
    ('[training]\nshort_steps = 5\n', "training.short_steps: Extra inputs are not permitted"),
    ('[trainig]\nlr = 0.1\n', "trainig: Extra inputs are not permitted (got {'lr': 0.1}); did you mean 'training'?"),
    ('[training]\nshort_term_step = 5\n', "(got 5); did you mean 'short_term_steps'?"),
    ('[[constraints]]\nresource = "latency"\nbudgte = "50%"\n', "constraints.0.budgte: Extra inputs are not "
     "permitted (got '50%'); did you mean 'budget'?"),
    ('[model]\nwidth = -1\n', "model.width: Input should be greater than 0"),
    ('[[constraints]]\nresource = "latncy"\nbudget = "50%"\n', "constraints.0.resource"),
    ('[[constraints]]\nresource = "latency"\nbudget = "nan"\n', "latency budget 'nan' must be a positive"),
    ('[[constraints]]\nresource = "latncy"\nbudget = "50%"\n', "resource 'latncy' is unknown; known: 'energy', "
     "'latency', 'macs', 'memory', 'params'"),
    ('[strategy]\nname = "Annealing"\n', "strategy.name: strategy 'Annealing' is unknown; known: 'GeometricProgram'"),
    ('[lut]\nbackend = "tensorrt"\n', "lut.backend: measurement backend 'tensorrt' is unknown; known: "),
    ('[lut]\nbackend = "torch-eager"\nprecision = "int8"\n', "lut: backend 'torch-eager' measures at fp32, not int8"),
    ('[lut]\nbackend = "memory"\n', "lut.backend: backend 'memory' prices memory without timing whole networks"),
    ('constraints = []\n', "constraints: List should have at least 1 item"),
    ('run_dir = \n', "is not valid TOML"),
])
def test_config_errors_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(path)


def test_the_cli_turns_a_typo_into_one_line_and_exit_code_2(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[training]\nshort_steps = 5\n')
    done = subprocess.run([sys.executable, "-m", "netopt.cli", "adapt", str(path)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "short_steps" in done.stderr and "Traceback" not in done.stderr
    missing = subprocess.run([sys.executable, "-m", "netopt.cli", "adapt", str(tmp_path / "nope.toml")],
                             capture_output=True, text=True, timeout=120, check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_the_strategy_table_is_one_strategy_by_name_with_its_own_settings(tmp_path: Path) -> None:
    from netopt.app.factory import make_strategy

    path = tmp_path / "c.toml"
    path.write_text('[strategy]\nname = "RandomSearch"\ntrials = 4\nseed = 7\n[training]\nshort_term_steps = 5\n')
    strategy = make_strategy(load_config(path))
    assert (strategy.name, strategy.trials, strategy.seed, strategy.short_term_steps) == ("RandomSearch", 4, 7, 5)
    path.write_text("[strategy]\nblock_size = 2\n")  # no name: ProgressiveBarrier, as before names existed
    assert make_strategy(load_config(path)).config()["block_size"] == 2
    for text, rule in [('[strategy]\nname = "RandomSearch"\nselection = "accuracy"\n', "selection: Extra inputs"),
                       ('[strategy]\nname = "OptunaSearch"\nsampler = "cmaes"\n', "sampler 'cmaes' is unknown"),
                       ("[strategy]\nshort_term_steps = 5\n", r"set the fine-tuning steps in \[training\]")]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=rule):
            load_config(path)


def test_netadaptv2_and_a_reward_from_the_strategy_table(tmp_path: Path) -> None:
    from netopt.app.factory import make_strategy

    path = tmp_path / "c.toml"
    path.write_text('[strategy]\nname = "NetAdaptV2"\nsupernet_steps = 50\nsamples = 4\nbypass = true\n'
                    '[strategy.reward]\nalpha = 0\nbeta = -1\n[training]\nshort_term_steps = 5\nlong_term_steps = 7\n')
    strategy = make_strategy(load_config(path))
    assert (strategy.name, strategy.supernet_steps, strategy.samples, strategy.long_term_steps) == (
        "NetAdaptV2", 50, 4, 7)
    assert strategy.short_term_steps == 0  # its samples are scored untrained: [training]'s steps are not its
    assert (strategy.reward.alpha, strategy.reward.beta) == (0, -1) and strategy.bypass is True
    path.write_text('[strategy]\nname = "RandomSearch"\n[strategy.reward]\nalpha = 0.2\n')
    with pytest.raises(ConfigError, match=r"strategy\.RandomSearch\.reward\.alpha: alpha=0\.2 is positive"):
        load_config(path)


def test_the_config_defaults_are_the_strategies_own() -> None:
    from netopt.strategies import ProgressiveBarrier

    config, strategy = AdaptConfig(), ProgressiveBarrier()
    assert (config.training.short_term_steps, config.training.long_term_steps) == (
        strategy.short_term_steps, strategy.long_term_steps)
    assert config.strategy.block_size == strategy.block_size and config.strategy.seed == strategy.seed  # type: ignore[attr-defined]


def test_a_config_path_that_is_no_text_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    garbage = tmp_path / "c.toml"
    garbage.write_bytes(bytes(range(128, 256)) * 4)
    with pytest.raises(ConfigError, match="is not text"):
        load_config(garbage)
    garbage.rename(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="is not text"):
        load_config(tmp_path / "c.yaml")


def test_an_empty_config_says_it_runs_the_defaults(tmp_path: Path) -> None:
    from netopt.app.config import ConfigWarning

    path = tmp_path / "c.toml"
    path.write_text("\n")
    with pytest.warns(ConfigWarning, match="is empty: running with the built-in defaults"):
        assert load_config(path) == AdaptConfig()


@pytest.mark.parametrize(("budget", "rule"), [("true", "budget true is a boolean"),
                                              ('"150%"', "above the starting network's cost")])
def test_budgets_that_cannot_mean_what_they_say_are_refused(tmp_path: Path, budget: str, rule: str) -> None:
    from netopt.constraints import MACsConstraint

    path = tmp_path / "c.toml"
    path.write_text(f'[[constraints]]\nresource = "macs"\nbudget = {budget}\n')
    if "boolean" in rule:
        with pytest.raises(ConfigError, match=rule):
            load_config(path)
    else:
        with pytest.raises(ConfigError, match=rule):
            MACsConstraint(load_config(path).constraints[0].budget)


def test_a_resume_with_another_config_is_refused_naming_the_field(tmp_path: Path) -> None:
    from netopt.app.jobs import same_config

    run_dir = str(tmp_path / "run")
    started = AdaptConfig(run_dir=run_dir)
    same_config(started, resume=False)  # recorded before the run starts
    (tmp_path / "run" / "config.json").write_text("{}")  # the run has started
    same_config(started, resume=True)  # the same config resumes
    other = AdaptConfig.model_validate({**started.model_dump(), "constraints": [
        {"resource": "latency", "budget": "60%"}, {"resource": "energy", "budget": "60%"}]})
    with pytest.raises(ConfigError, match=r"started with constraints\.0\.budget = '50%', not '60%'"):
        same_config(other, resume=True)
    lr = AdaptConfig.model_validate({**started.model_dump(), "training": {"lr": 0.1}})
    with pytest.raises(ConfigError, match=r"training\.lr = 0\.01, not 0\.1"):
        same_config(lr, resume=True)


def test_a_run_recorded_before_newer_fields_existed_resumes_at_their_defaults(tmp_path: Path) -> None:
    """app.json of a run from before objective.factory, model.factory or training.device existed."""
    import json

    from netopt.app.jobs import APP_CONFIG, same_config

    config = AdaptConfig(run_dir=str(tmp_path / "run"))
    same_config(config, resume=False)
    (tmp_path / "run" / "config.json").write_text("{}")
    recorded = json.loads((tmp_path / "run" / APP_CONFIG).read_text())
    del recorded["objective"], recorded["model"]["factory"], recorded["training"]["device"]
    (tmp_path / "run" / APP_CONFIG).write_text(json.dumps(recorded))
    same_config(config, resume=True)
    on_cpu = AdaptConfig.model_validate({**config.model_dump(), "training": {"device": "cpu"}})
    with pytest.raises(ConfigError, match=r"training\.device = 'auto', not 'cpu'"):
        same_config(on_cpu, resume=True)


def test_budget_errors_name_the_file_and_a_resource_is_constrained_once(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[constraints]]\nresource = "energy"\nbudget = "-3"\n')
    with pytest.raises(ConfigError, match=rf"{path}: constraints\.0: energy budget '-3' must be a positive"):
        load_config(path)
    path.write_text('[[constraints]]\nresource = "latency"\nbudget = "50%"\n'
                    '[[constraints]]\nresource = "latency"\nbudget = "40%"\n')
    with pytest.raises(ConfigError, match="latency is constrained twice"):
        load_config(path)


def test_a_measured_basis_is_refused_for_a_resource_that_is_only_estimated(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[constraints]]\nresource = "energy"\nbudget = "60%"\nbasis = "measured"\n')
    with pytest.raises(ConfigError, match=rf"{path}: constraints\.0: energy budget basis 'measured' needs a resource "
                                          r"measured end to end; only latency is"):
        load_config(path)
    path.write_text('[[constraints]]\nresource = "latency"\nbudget = "50%"\nbasis = "estimated"\n'
                    '[lut]\ncalibration = 6\n')
    config = load_config(path)
    assert config.constraints[0].basis == "estimated" and config.lut.calibration == 6
