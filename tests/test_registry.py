"""One registration per extension kind: strategies, constraints and measurement backends are
looked up by name in their registry, and everything that lists them reads it."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import FrozenInstanceError, dataclass
from pathlib import Path

import pytest
from pydantic import BaseModel

from netopt.app.config import SETTINGS, STRATEGIES, AdaptConfig, CompareConfig, load_config
from netopt.constraints import Constraint, ReductionSchedule
from netopt.constraints.registry import CONSTRAINTS, EstimatorSources
from netopt.errors import ConfigError
from netopt.measure.base import Backend
from netopt.measure.registry import BACKENDS, BackendEntry
from netopt.registry import Ref, Registry
from netopt.strategies.registry import STRATEGIES as REGISTERED
from netopt.strategies.registry import variants


@dataclass(frozen=True)
class Thing:
    name: str


def test_an_unknown_name_is_one_line_naming_it_the_known_names_and_the_fix() -> None:
    things = Registry("thing", [Thing("b"), Thing("a")], "register it in things.py")
    assert things.names == ("a", "b") and "a" in things and len(things) == 2
    with pytest.raises(ConfigError, match=r"^thing 'c' is unknown; known: 'a', 'b'; give one of them, or register it "
                                          r"in things\.py$"):
        things["c"]


def test_a_name_registered_twice_is_refused_and_entries_are_frozen() -> None:
    with pytest.raises(ConfigError, match="thing 'a' is registered twice"):
        Registry("thing", [Thing("a"), Thing("a")], "")
    with pytest.raises(FrozenInstanceError):
        REGISTERED["RandomSearch"].name = "Other"  # type: ignore[misc]


def test_a_reference_names_module_and_attribute() -> None:
    assert Ref("netopt.errors:ConfigError").load() is ConfigError
    with pytest.raises(ConfigError, match=r"is not \"package\.module:Name\""):
        Ref("netopt.errors.ConfigError")


def test_registering_strategies_and_backends_imports_neither_optuna_cvxpy_nor_a_runtime() -> None:
    code = ("import sys, netopt.strategies.registry, netopt.measure.registry, netopt.constraints.registry\n"
            "import netopt.app.config\n"
            "print(sorted(m for m in ('optuna', 'cvxpy', 'onnxruntime', 'netopt.strategies.optuna_search', "
            "'netopt.strategies.geometric', 'netopt.measure.eager', 'netopt.measure.onnxrt') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_the_config_the_factory_and_the_exports_read_the_strategy_registry() -> None:
    import netopt.strategies as exported
    from netopt.app.factory import strategy_class

    assert {e.name: e.settings for e in REGISTERED} == SETTINGS
    for entry in REGISTERED:
        assert strategy_class(entry.name) is entry.load() is getattr(exported, entry.name)
        assert entry.name in exported.__all__
        assert AdaptConfig(strategy={"name": entry.name}).strategy.name == entry.name  # type: ignore[arg-type]
    assert AdaptConfig().strategy.name == "ProgressiveBarrier"


def test_every_compare_variant_is_one_registered_strategy_once() -> None:
    names = [v.name for e in REGISTERED for v in e.variants]
    assert len(names) == len(set(names)) and set(names) == set(STRATEGIES)
    assert STRATEGIES == ("ProgressiveBarrier", "UniformWidth", "RandomSearch", "OptunaTPE", "OptunaNSGA2",
                          "GeometricProgram", "NetAdaptV2", "MnasNetTPE")  # the order compare runs them in
    assert all(REGISTERED[entry.name] is entry for entry, _ in variants().values())


def test_compare_builds_every_variant_from_the_registry() -> None:
    from netopt.app.factory import strategy_makers

    config = CompareConfig(compare={"strategies": ["RandomSearch", "OptunaTPE", "ProgressiveBarrier",  # type: ignore[arg-type]
                                                    "NetAdaptV2", "MnasNetTPE"]},
                           training={"short_term_steps": 10, "long_term_steps": 5})  # type: ignore[arg-type]
    makers = strategy_makers(config)
    search = makers["RandomSearch"](35)
    assert (search.name, search.trials, search.short_term_steps, search.long_term_steps) == ("RandomSearch", 4, 10, 5)
    assert makers["OptunaTPE"](None).trials == 20  # nothing to match
    assert makers["MnasNetTPE"](10).reward is not None and makers["MnasNetTPE"](10).sampler == "tpe"
    assert makers["NetAdaptV2"](None).long_term_steps == 5


def test_a_config_can_constrain_every_registered_resource(tmp_path: Path) -> None:
    sources = EstimatorSources(lut_path=str(tmp_path / "lut.sqlite"))
    for entry in CONSTRAINTS:
        constraint = entry.make("50%", ReductionSchedule(), sources)
        assert isinstance(constraint, entry.constraint) and isinstance(constraint, Constraint)
        assert constraint.resource == entry.name
    path = tmp_path / "c.toml"
    path.write_text("".join(f'[[constraints]]\nresource = "{r}"\nbudget = "50%"\n' for r in CONSTRAINTS.names))
    assert [c.resource for c in load_config(path).constraints] == list(CONSTRAINTS.names)


def test_the_lookup_table_measures_on_the_backend_the_config_names(tmp_path: Path) -> None:
    from netopt.app.factory import _constraint

    path = tmp_path / "c.toml"
    path.write_text(f'[lut]\npath = "{tmp_path / "lut.sqlite"}"\nbackend = "torch-eager"\n'
                    '[[constraints]]\nresource = "latency"\nbudget = "50%"\n')
    config = load_config(path)
    table = _constraint(config.constraints[0], config).estimator
    assert type(table.backend).__name__ == "TorchEager"  # type: ignore[attr-defined]
    assert AdaptConfig().lut.backend == "onnxruntime"


def test_a_missing_runtime_is_refused_in_one_line_naming_the_extra() -> None:
    entry = BackendEntry("openvino", Ref("netopt_no_such_module:Backend"), Ref("netopt_no_such_module:Settings"),
                         "latency", True, ("netopt_no_such_runtime",), "openvino", {})
    with pytest.raises(ConfigError, match=r"^backend 'openvino' needs netopt_no_such_runtime, which is not installed "
                                          r"here; pip install 'netopt\[openvino\]', or choose another backend$"):
        entry.make()
    assert BACKENDS["onnxruntime"].missing() is None


@pytest.mark.parametrize("name", BACKENDS.names)
def test_every_registered_backend_loads_its_class_and_settings_model(name: str) -> None:
    entry = BACKENDS[name]
    if entry.missing() is not None:
        pytest.skip(str(entry.missing()))
    cls, settings = entry.load(), entry.settings_model()
    assert issubclass(settings, BaseModel)
    assert issubclass(cls, Backend) == entry.measures
    assert entry.measures or callable(getattr(cls, "estimate", None))
