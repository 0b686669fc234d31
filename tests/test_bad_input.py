"""Bad input to the Python API: one NetoptError line naming the value, the rule and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from standins import fixed_net, problem_for

import netopt
from netopt.constraints import ReductionSchedule
from netopt.errors import ConfigError, NetoptError, TraceError, WidthError
from netopt.runs import RunError
from netopt.strategies import ProgressiveBarrier, RandomSearch
from netopt.zoo import MobileNetV1


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(exc.value)
    assert isinstance(exc.value, NetoptError) and "\n" not in message
    return message


def test_trace_refuses_what_is_not_a_module_and_opaque_names_that_are_not_there() -> None:
    with pytest.raises(TraceError) as info:
        netopt.trace(lambda x: x * 2, torch.randn(1, 3, 8, 8))  # type: ignore[arg-type]
    assert "must be a torch.nn.Module, got function" in one_line(info)
    model = MobileNetV1(0.25).eval()
    with pytest.raises(TraceError) as info:
        netopt.trace(model, torch.randn(1, 3, 32, 32), opaque=["features.99"])
    assert "opaque=['features.99'] names no submodule of MobileNetV1" in one_line(info)


def test_widths_must_be_a_mapping() -> None:
    with pytest.raises(WidthError) as info:
        fixed_net().with_widths([8])  # type: ignore[arg-type]
    assert "widths must be a mapping {group id: width}, got list" in one_line(info)


@pytest.mark.parametrize(("settings", "rule"), [
    ({"short_term_steps": "5"}, "setting short_term_steps='5' is invalid"),
    ({"short_term_steps": None}, "setting short_term_steps=None is invalid"),
    ({"short_term_steps": 2.5}, "setting short_term_steps=2.5 is invalid"),
    ({"seed": "x"}, "setting seed='x' is invalid"),
    ({"shortterm_steps": 5}, "setting shortterm_steps=5 is invalid: Extra inputs are not permitted; did you mean "
                             "'short_term_steps'? valid settings: ["),
    ({"sed": 5}, "setting sed=5 is invalid: Extra inputs are not permitted; did you mean 'seed'?"),
    ({"executor": "pool"}, "executor='pool' is not a concurrent.futures.Executor"),
])
def test_strategy_settings_are_checked_at_construction(settings: dict[str, object], rule: str) -> None:
    for strategy in (ProgressiveBarrier, RandomSearch):
        with pytest.raises(ConfigError) as info:
            strategy(**settings)
        assert rule in one_line(info) and strategy.name in one_line(info)


def test_a_schedule_that_would_cut_everything_at_once_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        ReductionSchedule("200%")
    assert "below 100%" in one_line(info)


def test_loading_a_network_that_a_run_does_not_have_names_what_it_has(tmp_path: Path) -> None:
    RandomSearch(trials=2, short_term_steps=1, long_term_steps=1, progress=False).run(
        problem_for(fixed_net(), "40%", "90%"), run_dir=tmp_path / "run")
    with pytest.raises(RunError) as info:
        netopt.load(tmp_path / "run", "abc")
    assert "'abc' is not a network of a run" in one_line(info)
    assert netopt.load(tmp_path / "run", "final")(torch.randn(1, 3, 16, 16)).shape == (1, 10)


def test_budgets_already_met_at_the_start_say_that_nothing_will_shrink() -> None:
    from netopt.strategies.engine import BudgetWarning

    with pytest.warns(BudgetWarning, match="already met by the starting network"):
        RandomSearch(trials=1, short_term_steps=0, long_term_steps=0, progress=False).run(
            problem_for(fixed_net(), "100%", "100%"))


def test_a_resume_clears_temporary_files_a_kill_left_behind(tmp_path: Path) -> None:
    problem = problem_for(fixed_net(), "40%", "90%")
    strategy = RandomSearch(trials=2, short_term_steps=1, long_term_steps=1, progress=False)
    strategy.run(problem, run_dir=tmp_path / "run")
    folder = next((tmp_path / "run" / "proposals").iterdir())
    stale = folder / ".abc.pt.x1y2.tmp"
    stale.write_bytes(b"half a tensor")
    strategy.run(problem, run_dir=tmp_path / "run", resume=True)
    assert not stale.exists()


def test_a_lookup_table_path_of_another_applications_database_is_refused_untouched(tmp_path: Path) -> None:
    import sqlite3

    from netopt.errors import LookupTableError

    path = tmp_path / "app.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE users (name TEXT)")
    db.execute("INSERT INTO users VALUES ('ada')")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(LookupTableError) as info:
        netopt.LookupTable.open(path, netopt.measure.OnnxRuntimeCPU())
    assert "SQLite database of another application (tables ['users'])" in one_line(info)
    assert path.read_bytes() == before
    table = netopt.LookupTable.open(tmp_path / "lut.sqlite", netopt.measure.OnnxRuntimeCPU())
    table.close()
    netopt.LookupTable.open(tmp_path / "lut.sqlite", netopt.measure.OnnxRuntimeCPU()).close()  # its own: opens


def test_data_with_nan_is_refused_naming_the_row() -> None:
    import numpy as np

    from netopt.data import DataError, Splits

    X, y = np.random.default_rng(0).random((200, 4)), np.arange(200) % 2
    X[17, 2] = np.nan
    with pytest.raises(DataError) as info:
        Splits.from_arrays(X, y, holdout_per_class=5, test_fraction=0.2)
    assert "X row 17 (and 0 more) holds NaN or infinite values" in one_line(info)


def test_a_problem_whose_data_do_not_fit_the_model_is_refused_at_once() -> None:
    import numpy as np

    from netopt.data import Splits
    from netopt.strategies import Problem

    X, y = np.random.default_rng(0).random((200, 1 * 8 * 8)).astype(np.float32), np.arange(200) % 2
    data = Splits.from_arrays(X, y, holdout_per_class=5, test_fraction=0.2, image_shape=(1, 8, 8))
    traced = netopt.trace(MobileNetV1(0.25).eval(), torch.randn(1, 3, 32, 32))
    with pytest.raises(ConfigError) as info:
        Problem(traced, [], netopt.Accuracy(data))
    assert "data are shaped (1, 8, 8) but the model was traced on (3, 32, 32)" in one_line(info)
    with pytest.warns(UserWarning, match="batch_size 4096 exceeds the 150 training examples"):
        netopt.Accuracy(data, netopt.Trainer(batch_size=4096))
